"""The host end of one job's ZeroMQ socket: size-capped, typed, no pickle.

The host binds ``ipc://<job_dir>/worker.sock`` (as root, so the socket is made
world-writable for the uid-65534 worker) and the worker connects through the
read-only bind mount. Every receive is capped by ``zmq.MAXMSGSIZE`` (an
oversized frame drops the peer instead of filling memory) and decoded by one
typed msgspec decoder; anything else is a ``ProtocolViolation``.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import zmq

from orchestrator.exceptions import ProtocolViolation
from sandbox_image.protocol import Job, WorkerMessage, encoder, worker_decoder

SOCKET_NAME = "worker.sock"


class Channel:
    """One PAIR socket bound in a job directory; a context manager."""

    def __init__(self, job_dir: Path, *, max_message_bytes: int) -> None:
        self.path = job_dir / SOCKET_NAME
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PAIR)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.HANDSHAKE_IVL, 2000)  # peers that never finish the ZMTP greeting go
        self._sock.bind(f"ipc://{self.path}")
        os.chmod(self.path, 0o666)  # the worker runs as uid 65534
        self._decoder = worker_decoder()
        self._encoder = encoder()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def seal(self) -> None:
        """Remove the socket's file once the worker is connected: nothing else can connect.

        The model runs only after this, so it cannot open a thousand connections
        to the host's socket (each a file descriptor of the orchestrator's).
        """
        self.path.unlink(missing_ok=True)

    def send(self, job: Job) -> None:
        """Send the job (the worker is connected once it said Ready)."""
        try:
            self._sock.send(self._encoder.encode(job), flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            raise ProtocolViolation(f"cannot send the job to the worker: {exc}") from exc

    def recv(self, timeout_s: float) -> WorkerMessage | None:
        """The next decoded message, or None when nothing came within ``timeout_s``."""
        if not self._sock.poll(max(0, int(timeout_s * 1000)), zmq.POLLIN):
            return None
        frame = self._sock.recv(copy=False)
        try:
            return self._decoder.decode(frame.buffer)
        except msgspec.DecodeError as exc:
            raise ProtocolViolation(f"undecodable message from the worker ({len(frame.buffer)} bytes): {exc}") from exc

    def close(self) -> None:
        """Close the socket and remove its file."""
        self._sock.close(linger=0)
        self.path.unlink(missing_ok=True)
