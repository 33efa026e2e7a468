"""Settings of one sandbox: image, resource caps, runtime, device, time limits."""

from __future__ import annotations

import os
import re

import msgspec

from orchestrator.exceptions import UsageError
from orchestrator.sandbox.jobsroot import default_jobs_root
from sandbox_image.protocol import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_IMAGE = "pytorch-researcher-sandbox:latest"
RUNTIMES = ("runc", "runsc")
#: Warm-pool slots kept starting or ready beyond the ``--parallel`` that run at once.
DEFAULT_SPARE = 1
DEVICES = ("cpu", "cuda")
_SIZE = re.compile(r"^\d+(\.\d+)?[bkmg]?$", re.IGNORECASE)
#: Longest unix socket path (sockaddr_un.sun_path is 108 bytes with the NUL); ZeroMQ refuses longer.
MAX_SOCKET_PATH = 107
#: The worker's socket in its job directory (``/job/`` inside a container).
SOCKET_NAME = "worker.sock"
#: What a job adds below the jobs directory: runner.make_job_dir's mkdtemp name and the socket.
JOB_SOCKET_TAIL = f"/researcher-job-XXXXXXXX/{SOCKET_NAME}"


#: CPU weight (docker ``cpu_shares``; the default is 1024) of a warm-pool slot until it has a job.
#: Its start-up (torch's imports) then runs on CPU the training candidates leave idle: a
#: standby slot that took a core from a candidate's OpenMP threads stalled all of them at
#: every barrier (3-4x slower training, measured). ``Slot.prioritise`` restores the default.
#: runc only: gVisor's runsc has no ``update``, so its slots keep Docker's default weight.
STANDBY_CPU_SHARES = 2
JOB_CPU_SHARES = 1024


def run_cpus(cores: int, parallel: int) -> float:
    """Default CPU cap (and torch threads) of each of ``parallel`` sandboxes of a run.

    On hosts of 4+ cores a quarter of them is kept for the orchestrator and the warm
    pool's start-ups. A job's OpenMP threads stall at every barrier when another
    process takes one of their cores, even a niced one. Measured on 16 cores with 12
    tiny digits candidates: training took 3.5x longer than unsandboxed with 16 or 15
    threads, 1.7x with 14, 1.13x with 12 and 1.08x with 8, and 16 threads trained no
    faster than 8 unsandboxed. On 2-3 cores every core is used: the standby slots'
    low CPU weight suffices there (measured: 13.1 s with 2 threads, 14.4 s with 1).
    """
    usable = cores - (cores // 4 if cores >= 4 else 0)
    return float(max(1, usable // max(1, parallel)))


class SandboxConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Hardening and limits for one sandbox container; every default is the safe one."""

    image: str = DEFAULT_IMAGE  # sandbox image (build it with `researcher image build`)
    memory: str = "2g"  # memory cap; swap is capped to the same value (no swap)
    cpus: float = 1.0  # CPU cap; torch/OMP threads follow it
    pids: int = 256  # process/thread cap (fork bombs)
    tmpfs_size: str = "256m"  # size of the writable /tmp (counts against memory)
    nofile: int = 1024  # open-file limit
    container_runtime: str = "runc"  # Docker's OCI runtime: runc (default) or runsc (gVisor); not the backend
    device: str = "cpu"  # cpu or cuda (one GPU per container)
    gpu: str | None = None  # GPU index or UUID for cuda; None = any one
    gpus: tuple[str, ...] = ()  # GPUs the warm pool spreads cuda sandboxes over, round-robin (sets gpu)
    timeout_s: float = 300.0  # wall-clock limit of a whole job, enforced by the host (kill)
    startup_timeout_s: float = 90.0  # limit for the worker to come up and say Ready
    log_max_size: str = "1m"  # container log cap (stdout/stderr floods)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # cap of one message from the worker
    warm_up: bool = False  # a warm-pool slot: warms up before Ready, low CPU weight until its job
    jobs_dir: str | None = None  # private (0700) host dir of the per-job socket dirs; None = <tmp>/researcher-jobs-<uid>

    @property
    def jobs_root(self) -> str:
        """The private directory job directories are made in (absolute; see ``jobsroot``)."""
        return os.path.abspath(self.jobs_dir or default_jobs_root())

    @property
    def threads(self) -> int:
        """Torch/OMP threads inside: the CPU cap, rounded down, at least one."""
        return max(1, int(self.cpus))


def validate(config: SandboxConfig) -> SandboxConfig:
    """Check every field at once and raise one UsageError listing all problems."""
    problems = []
    if not _SIZE.match(config.memory):
        problems.append(f"--memory {config.memory!r} is not a size like 2g or 512m")
    if not _SIZE.match(config.tmpfs_size):
        problems.append(f"tmpfs size {config.tmpfs_size!r} is not a size like 256m")
    if not 0 < config.cpus <= 256:
        problems.append(f"--cpus {config.cpus} must be > 0")
    if config.pids < 16:
        problems.append(f"pids limit {config.pids} is too low for Python (use >= 16)")
    if config.container_runtime not in RUNTIMES:
        problems.append(f"--runtime {config.container_runtime!r} must be one of {', '.join(RUNTIMES)}")
    if config.device not in DEVICES:
        problems.append(f"--device {config.device!r} must be one of {', '.join(DEVICES)}")
    if config.timeout_s <= 0:
        problems.append(f"--timeout {config.timeout_s} must be > 0 seconds")
    socket_path = len(os.fsencode(config.jobs_root + JOB_SOCKET_TAIL))
    if socket_path > MAX_SOCKET_PATH:
        problems.append(
            f"--jobs-dir {config.jobs_root!r} is too long for a unix socket: a job's socket path would be "
            f"{socket_path} bytes, the limit is {MAX_SOCKET_PATH}; use a directory of at most "
            f"{MAX_SOCKET_PATH - len(JOB_SOCKET_TAIL)} characters (e.g. /tmp/researcher-jobs)"
        )
    if problems:
        raise UsageError("; ".join(problems))
    return config
