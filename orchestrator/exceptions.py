"""Exceptions of the orchestrator, translated once at each edge.

    ResearcherError
    ├── UsageError(ValueError)            bad flags, unreadable files: exit 2
    ├── DataError(ValueError)             a dataset is missing or malformed
    └── SandboxError
        ├── SandboxUnavailable(RuntimeError)   no engine, no image, stale image: exit 3
        ├── SandboxTimeout(TimeoutError)
        ├── ProtocolViolation(ValueError)      a worker sent something undecodable
        └── NodeLost(RuntimeError)             a cluster node died under a job (retried elsewhere)

Docker, ZeroMQ and httpx errors are caught where they happen and re-raised as
one of these with ``raise ... from exc``. ``ResearcherError``, ``UsageError`` and
``DataError`` are defined in ``evaluator.errors`` (the evaluator is self-contained) and
re-exported here as the same classes. A candidate's own failure is *not* an
exception: it is a ``Failure`` record (see ``sandbox_image.protocol``).
"""

from __future__ import annotations

# The root, usage and data errors are the evaluator's own classes (it must not import the
# orchestrator), re-exported: one class each, so every ``except`` here catches both sides' raises.
from evaluator.errors import DataError, ResearcherError, UsageError

__all__ = ["DataError", "NodeLost", "ProtocolViolation", "ResearcherError", "SandboxError", "SandboxTimeout",
           "SandboxUnavailable", "UsageError"]


class SandboxError(ResearcherError):
    """Root of sandbox lifecycle and transport errors."""


class SandboxUnavailable(SandboxError, RuntimeError):
    """No sandbox can be started (no engine, no image, stale image, no GPU runtime)."""


class SandboxTimeout(SandboxError, TimeoutError):
    """A sandbox did not answer in time."""


class ProtocolViolation(SandboxError, ValueError):
    """A worker sent a message that is too large, undecodable or out of order."""


class NodeLost(SandboxError, RuntimeError):
    """A cluster node (its sandbox host) died or stopped answering while it held a job.

    Not the model's doing: the loop retries the candidate once on another node, then
    records it as ``crashed`` with the node named.
    """

    def __init__(self, node: str, detail: str) -> None:
        super().__init__(f"node {node} was lost: {detail}")
        self.node, self.detail = node, detail
