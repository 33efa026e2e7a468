"""The launcher's own configuration: its root, what may be staged, and the maxima it grants.

Nothing here comes from a request. The root holds the launcher's socket, the job
directories it makes and the data it stages; the engine mounts paths on the host, so
under compose the root is mounted at the same path in the launcher, the orchestrator
and the host.
"""

from __future__ import annotations

import os
import re

import msgspec

from orchestrator.exceptions import UsageError
from orchestrator.sandbox.config import DEFAULT_IMAGE, DEVICES, RUNTIMES

DEFAULT_ROOT = "/tmp/researcher-launcher"
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([bkmg]?)$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def size_bytes(text: str) -> int:
    """``2g`` -> 2147483648 (Docker's units); ValueError for anything else (spaces and newlines too)."""
    match = _SIZE.fullmatch(text)  # not match(): its $ lets "2g\n" through, which the engine then refuses
    if match is None:
        raise ValueError(f"{text!r} is not a size like 2g or 512m")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class LauncherConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the launcher grants; every request is checked against it."""

    root: str = DEFAULT_ROOT  # its socket, job dirs and staged data (mode 0710, group = client gid)
    data_sources: tuple[str, ...] = ()  # directories whose prepared data may be staged (the runs dir)
    image: str = DEFAULT_IMAGE  # the only sandbox image it starts
    max_memory: str = "16g"  # largest memory cap a request may ask for
    max_cpus: float = float(os.cpu_count() or 1)
    max_pids: int = 4096
    max_time_s: float = 24 * 3600.0  # largest job time limit; the launcher itself kills past it
    max_sandboxes: int = 64  # sandboxes alive at once, all sessions together
    max_data_bytes: int = 64 * 1024**3  # one staged data directory
    runtimes: tuple[str, ...] = ("runc",)  # the runtimes a request may name
    gpus: str = "none"  # none: no cuda; all: any GPU; 0,1 or UUIDs: only those
    client_uid: int | None = None  # the orchestrator's uid (job dirs are its to write); None: ours
    client_gid: int | None = None  # its gid: the group of the root and the job dirs; None: ours
    lease_s: float = 15.0  # a session not heard from for this long loses its sandboxes

    @property
    def socket_path(self) -> str:
        """``<root>/launcher.sock``."""
        from orchestrator.launcher.protocol import LAUNCHER_SOCKET

        return os.path.join(self.root, LAUNCHER_SOCKET)

    @property
    def address(self) -> str:
        """``ipc://<root>/launcher.sock``: what ``--launcher`` takes."""
        return f"ipc://{self.socket_path}"

    @property
    def gpu_ids(self) -> tuple[str, ...] | None:
        """The GPUs a request may name: () for none, None for any."""
        word = self.gpus.strip().lower()
        if word in ("", "none"):
            return ()
        if word == "all":
            return None
        return tuple(part.strip() for part in self.gpus.split(",") if part.strip())

    @property
    def devices(self) -> tuple[str, ...]:
        """cpu, and cuda when some GPU is granted."""
        return DEVICES if self.gpu_ids != () else ("cpu",)


def validate(config: LauncherConfig) -> LauncherConfig:
    """Check every field at once; one UsageError listing all problems."""
    problems = []
    if not os.path.isabs(config.root):
        problems.append(f"--root {config.root!r} must be an absolute path (the engine mounts host paths)")
    if len(os.fsencode(config.root)) > 60:
        problems.append(f"--root {config.root!r} is too long: job socket paths below it must fit 107 bytes (use at most 60)")
    for source in config.data_sources:
        if not os.path.isabs(source):
            problems.append(f"--data-source {source!r} must be an absolute path")
    try:
        size_bytes(config.max_memory)
    except ValueError as exc:
        problems.append(f"--max-memory: {exc}")
    if config.max_cpus <= 0 or config.max_pids < 16 or config.max_time_s <= 0 or config.max_sandboxes < 1:
        problems.append("--max-cpus and --max-time must be > 0, --max-pids >= 16, --max-sandboxes >= 1")
    unknown = set(config.runtimes) - set(RUNTIMES)
    if unknown or not config.runtimes:
        problems.append(f"--runtimes {','.join(config.runtimes)!r}: name some of {', '.join(RUNTIMES)}")
    if config.lease_s < 2:
        problems.append(f"--lease {config.lease_s} must be >= 2 seconds")
    if problems:
        raise UsageError("; ".join(problems))
    return config
