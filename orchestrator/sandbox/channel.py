"""The host end of one job's ZeroMQ socket: size-capped, typed, no pickle.

The host binds ``ipc://<job_dir>/worker.sock`` in a job directory it has just
made inside its private jobs root (``jobsroot``), makes the socket
world-writable for the uid-65534 worker (never through a symlink), and the
worker connects through the read-only bind mount of that directory. No other
local user can reach the socket: the jobs root above it is 0700. Every
receive is capped by ``zmq.MAXMSGSIZE`` (an oversized frame drops the peer
instead of filling memory) and decoded by one typed msgspec decoder; anything
else is a ``ProtocolViolation``.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import zmq

from orchestrator.exceptions import ProtocolViolation, SandboxUnavailable
from orchestrator.sandbox.config import SOCKET_NAME
from orchestrator.sandbox.jobsroot import chmod_socket
from sandbox_image.protocol import Bye, Job, WorkerMessage, encoder, worker_decoder

#: Frames ZeroMQ may queue for the host before the worker's sends block.
RECEIVE_HWM = 16


class Channel:
    """One PAIR socket bound in a job directory; a context manager."""

    def __init__(self, job_dir: Path, *, max_message_bytes: int) -> None:
        self.path = job_dir / SOCKET_NAME
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PAIR)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        # A small receive queue: a worker that floods blocks on its own send instead of
        # filling the host's memory with queued frames.
        self._sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.HANDSHAKE_IVL, 2000)  # peers that never finish the ZMTP greeting go
        try:
            self._sock.bind(f"ipc://{self.path}")
            chmod_socket(self.path, 0o666)  # the worker runs as uid 65534; the 0700 jobs root keeps others out
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise SandboxUnavailable(f"cannot bind the job's socket {self.path}: {exc}") from exc
        except BaseException:
            self._sock.close(linger=0)
            raise
        self.received_bytes = 0  # of every frame so far: the job's byte budget is checked against it
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
        self.send_raw(self._encoder.encode(job))

    def send_raw(self, frame: bytes) -> None:
        """Send an encoded Job (a cluster node forwards the orchestrator's own encoding)."""
        try:
            self._sock.send(frame, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            raise ProtocolViolation(f"cannot send the job to the worker: {exc}") from exc

    def bye(self) -> None:
        """Tell the worker its last message was read, so it may exit (best effort: it may be gone)."""
        try:
            self._sock.send(self._encoder.encode(Bye()), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def recv(self, timeout_s: float) -> WorkerMessage | None:
        """The next decoded message, or None when nothing came within ``timeout_s``."""
        frame = self.recv_raw(timeout_s)
        return None if frame is None else self.decode(frame)

    def recv_raw(self, timeout_s: float) -> memoryview | None:
        """The next frame as it came (at most ``max_message_bytes``), undecoded; None on timeout.

        A cluster node forwards these to the orchestrator, which decodes them itself.
        """
        if not self._sock.poll(max(0, int(timeout_s * 1000)), zmq.POLLIN):
            return None
        frame = self._sock.recv(copy=False)
        self.received_bytes += len(frame.buffer)
        return frame.buffer

    def decode(self, frame) -> WorkerMessage:
        """One frame through the typed decoder; ProtocolViolation for anything else."""
        return decode_frame(self._decoder, frame)

    def close(self) -> None:
        """Close the socket and remove its file."""
        self._sock.close(linger=0)
        self.path.unlink(missing_ok=True)


def decode_frame(decoder: msgspec.msgpack.Decoder, frame) -> WorkerMessage:
    """A worker's frame through ``decoder`` (``worker_decoder()``); ProtocolViolation for anything else.

    The one decoding step for every frame, from a local socket or forwarded by a cluster node.
    """
    try:
        return decoder.decode(frame)
    except msgspec.DecodeError as exc:
        raise ProtocolViolation(f"undecodable message from the worker ({len(frame)} bytes): {exc}") from exc
