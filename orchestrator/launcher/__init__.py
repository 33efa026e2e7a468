"""The launcher: the only process that holds the Docker socket (compose's privilege separation).

The orchestrator parses LLM replies, decodes worker messages, scores logits and draws
plots: a parser bug reached by a hostile LLM or model must not become root on the host.
So under compose it runs non-root, read-only and without the Docker socket, and asks this
small process for sandboxes over one typed protocol (``protocol``): make a job directory,
stage a run's data, create-and-start a sandbox with caps inside the launcher's own maxima,
kill, remove, poll exits. The launcher builds every container itself with the same pure
``container_kwargs`` as the direct path and refuses anything else (``server``). The
client side (``client.LauncherBackend``) is a sandbox backend like ``DockerBackend``, so
the warm pool, the runner and clean-up work unchanged through it.
"""
