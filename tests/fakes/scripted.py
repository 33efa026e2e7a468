"""A backend whose "worker" is a thread speaking the protocol from a script: a forger.

The real worker can be replaced by the candidate's own code, so the host must
survive any sequence of messages the protocol's types admit. This backend sends
exactly what a test scripts (encoded Structs, built without validation, or raw
frames) over the real job socket and channel, so the real runner, loop,
registry and reports handle it - in milliseconds, without Docker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec
import zmq

from orchestrator.sandbox.base import ExitStatus, Mounts
from orchestrator.sandbox.config import SandboxConfig
from sandbox_image.protocol import PROTOCOL_VERSION, Done, Failure, Job, Ready, encoder, job_decoder

#: What a script yields: a message (encoded as is, never validated) or a raw frame.
Frame = msgspec.Struct | bytes
Script = Callable[[Job], Iterable[Frame]]


class ScriptedSandbox:
    """A thread that connects, says ``ready``, takes the Job, sends the script, and exits 0."""

    def __init__(self, job_dir: Path, data_dir: Path | None, script: Script, ready: Ready) -> None:
        self.mounts = Mounts(socket_path=str(job_dir / "worker.sock"), data_root=str(data_dir) if data_dir else None)
        self._script, self._ready = script, ready
        self._killed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scripted-worker")
        self.error = ""

    def start(self) -> None:
        """Start the forger."""
        self._thread.start()

    def _run(self) -> None:
        # Its own context, terminated before the thread ends: like the real worker, the forger
        # "exits" only once its frames are flushed (or the linger ran out).
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 10_000)
        try:
            sock.connect(f"ipc://{self.mounts.socket_path}")
            sock.send(encoder().encode(self._ready))
            while not self._killed.is_set():
                if sock.poll(50, zmq.POLLIN):
                    job = job_decoder().decode(sock.recv())
                    break
            else:
                return
            frame = None
            for frame in self._script(job):
                if self._killed.is_set():
                    return
                sock.send(frame if isinstance(frame, bytes) else encoder().encode(frame))
            # As the real worker after its Done or Failure: exit once the host has read
            # everything (its Bye). A script that ends otherwise exits at once, as a crash.
            while isinstance(frame, (Done, Failure)) and not self._killed.is_set() and not sock.poll(50, zmq.POLLIN):
                pass
        except Exception as exc:  # noqa: BLE001 - a script that cannot even be sent ends like a crash
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            sock.close(linger=0 if self._killed.is_set() else None)
            ctx.term()

    def exit_status(self) -> ExitStatus | None:
        """137 once killed, else 0 once the script is sent (1 if it could not be)."""
        if self._killed.is_set():
            return ExitStatus(exit_code=137)
        if self._thread.is_alive() or self._thread.ident is None:
            return None
        return ExitStatus(exit_code=1 if self.error else 0, error=self.error)

    def wait_exit(self, timeout: float) -> ExitStatus | None:
        """Wait for the script to be sent."""
        if self._thread.ident is not None and not self._killed.is_set():
            self._thread.join(timeout)
        return self.exit_status()

    def kill(self) -> None:
        """Stop sending."""
        self._killed.set()

    def prioritise(self) -> None:
        """Nothing to do."""

    def logs(self, tail: int = 50) -> str:
        """What went wrong in the forger itself."""
        return self.error

    def close(self) -> None:
        """Stop and join the thread."""
        self.kill()
        if self._thread.ident is not None:
            self._thread.join(5)


class ScriptedBackend:
    """Every sandbox it makes plays ``script`` (a function of the Job it receives)."""

    name = "scripted forger (tests only)"
    unsafe = True

    def __init__(self, script: Script, ready: Ready | None = None) -> None:
        self.script = script
        self.ready = ready or Ready(protocol=PROTOCOL_VERSION, python="3.11", torch="2", device="cpu")
        self.created: list[ScriptedSandbox] = []

    def create(self, job_id: str, job_dir: Path, data_dir: Path | None, config: SandboxConfig) -> ScriptedSandbox:
        """A forger for one job."""
        sandbox = ScriptedSandbox(job_dir, data_dir, self.script, self.ready)
        self.created.append(sandbox)
        return sandbox

    def close(self) -> None:
        """Stop every forger."""
        for sandbox in self.created:
            sandbox.close()
