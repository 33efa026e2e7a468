"""What every sandbox backend offers: create, watch, kill and remove one worker.

A backend knows nothing about the protocol, planners or metrics (SWE-ReX's
split between deployment and runtime): ``orchestrator.sandbox.runner`` speaks
the protocol over the channel; a backend only runs the worker somewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from orchestrator.sandbox.config import SandboxConfig


@dataclass(frozen=True)
class ExitStatus:
    """How a worker ended, as the backend (not the worker) saw it."""

    exit_code: int
    oom_killed: bool = False
    error: str = ""


@dataclass(frozen=True)
class Mounts:
    """Paths as seen by the worker: its socket and the read-only data directory."""

    socket_path: str
    data_root: str | None


class Sandbox(Protocol):
    """One worker for one job."""

    mounts: Mounts

    def start(self) -> None:
        """Start the worker; it connects to the job socket by itself."""

    def exit_status(self) -> ExitStatus | None:
        """The exit status once the worker has ended, else None (never blocks)."""

    def wait_exit(self, timeout: float) -> ExitStatus | None:
        """Wait up to ``timeout`` seconds for the worker to end; its status or None."""

    def kill(self) -> None:
        """Kill the worker now (idempotent)."""

    def prioritise(self) -> None:
        """Give a standby (``warm_up``) sandbox the normal CPU weight: it has a job, or waited too long."""

    def logs(self, tail: int = 50) -> str:
        """The last lines of the worker's output, for error messages."""

    def close(self) -> None:
        """Kill if needed and remove every trace of the worker (idempotent)."""


class Backend(Protocol):
    """Makes sandboxes; one per job."""

    name: str
    unsafe: bool

    def create(self, job_id: str, job_dir: Path, data_dir: Path | None, config: SandboxConfig) -> Sandbox:
        """A sandbox for one job whose socket lives in ``job_dir``."""

    def close(self) -> None:
        """Release the backend (and remove anything it still owns)."""
