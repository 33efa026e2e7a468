"""Candidates across a Ray cluster: one sandbox host per node (``host``), slots handed out
by ``pool.ClusterPool``, driven from the orchestrator through ``remote.RemoteSlot``.

Untrusted code still runs only in a hardened local container on whichever node runs
it; the orchestrator decodes, validates and scores every message itself. Needs the
``[ray]`` extra; the single-machine path never imports this package.
"""
