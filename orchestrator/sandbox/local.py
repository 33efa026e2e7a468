"""UNSAFE test backend: runs the real worker in a local subprocess.

Same worker, same protocol, same channel as the Docker backend, but no
isolation at all: the model runs as the current user with the network and the
host's files. It exists so the loop and the protocol can be tested in
milliseconds without Docker. It is never the default and says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from orchestrator.sandbox.base import ExitStatus, Mounts
from orchestrator.sandbox.config import SOCKET_NAME, SandboxConfig

_REPO_ROOT = Path(__file__).resolve().parents[2]


class SubprocessSandbox:
    """The worker as a child process in its own session (so kill takes its children)."""

    def __init__(self, job_dir: Path, data_dir: Path | None, config: SandboxConfig) -> None:
        self.mounts = Mounts(socket_path=str(job_dir / SOCKET_NAME), data_root=str(data_dir) if data_dir else None)
        self._config = config
        self._proc: subprocess.Popen | None = None
        self._log = job_dir / "worker.log"

    def __enter__(self) -> SubprocessSandbox:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        """Start ``python -m sandbox_image.worker`` with a minimal environment."""
        threads = str(self._config.threads)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # the project first; then whatever path the caller's own imports need (a --target install)
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PYTHONHASHSEED": "0",
            "HOME": str(self._log.parent),
        }
        if self._config.device == "cuda":  # the driver's libraries, and the one GPU a container would get
            env.update({k: os.environ[k] for k in ("LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES") if k in os.environ})
            # one GPU, as a container gets (the host checks Ready.cuda_devices == 1)
            visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "0").split(",") if d.strip()] or ["0"]
            env["CUDA_VISIBLE_DEVICES"] = self._config.gpu if self._config.gpu is not None else visible[0]
        else:  # a cpu container sees no GPU either
            env["CUDA_VISIBLE_DEVICES"] = ""
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "sandbox_image.worker", *(["--warm-up"] if self._config.warm_up else []),
                 self.mounts.socket_path],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        if self._config.warm_up:  # standby, as a pool container's low CPU weight: nice 19 until its job
            _renice(self._proc.pid, _STANDBY_NICE)

    def exit_status(self) -> ExitStatus | None:
        """The exit status once the process has ended."""
        if self._proc is None or self._proc.poll() is None:
            return None
        return ExitStatus(exit_code=self._proc.returncode)

    def wait_exit(self, timeout: float) -> ExitStatus | None:
        """Wait up to ``timeout`` seconds for the process to end."""
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.exit_status()

    def kill(self) -> None:
        """SIGKILL the worker's whole process group."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def prioritise(self) -> None:
        """Back to nice 0, every thread (nice is per thread; lowering it needs root, else it stays)."""
        if self._proc is not None and self._config.warm_up:
            _renice(self._proc.pid, 0)

    def logs(self, tail: int = 50) -> str:
        """The last lines the worker printed."""
        try:
            lines = self._log.read_text("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def close(self) -> None:
        """Kill and reap the process."""
        if self._proc is not None:
            self.kill()
            self._proc.wait()


_STANDBY_NICE = 19


def _renice(pid: int, nice: int) -> None:
    """Set the nice value of every thread of ``pid``, and of its session's autogroup.

    The worker runs in a session of its own, and with autogroup scheduling (most
    desktop and server kernels) a nice value only counts inside its session: the
    autogroup's own nice weighs it against everything else.
    """
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:  # gone, or not root
            pass
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:  # no autogroup here, gone, or not root
        pass


class SubprocessBackend:
    """UNSAFE: no isolation. For tests of the loop and the protocol only."""

    name = "subprocess (UNSAFE: no isolation)"
    unsafe = True

    def create(self, job_id: str, job_dir: Path, data_dir: Path | None, config: SandboxConfig) -> SubprocessSandbox:
        """A local worker process for one job."""
        return SubprocessSandbox(job_dir, data_dir, config)

    def close(self) -> None:
        """Nothing to release."""
