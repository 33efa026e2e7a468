"""The orchestrator's end of a slot on another node: the same Slot interface, over Ray.

``RemoteSlot`` looks to ``orchestrator.sandbox.runner.execute`` exactly like a local
``Slot``: its ``channel`` receives and decodes the worker's messages, its ``sandbox``
reports the exit status, kills and fetches logs. Only the transport differs: each
call goes to the node's ``SandboxHost`` actor, which forwards undecoded frames. So
the orchestrator decodes every frame with its own typed decoder, enforces the size
cap and the job's byte budget, bounds and validates every message, and scores the
logits itself, whichever node ran the job. A node that dies or stops answering
surfaces as ``NodeLost``; nothing else about a job depends on where it ran.
"""

from __future__ import annotations

import time
from collections import deque

import msgspec

from orchestrator.exceptions import NodeLost, ProtocolViolation
from orchestrator.sandbox import bounds
from orchestrator.sandbox.base import ExitStatus, Mounts
from orchestrator.sandbox.channel import decode_frame
from orchestrator.sandbox.config import SandboxConfig
from sandbox_image.protocol import Job, Ready, WorkerMessage, encoder, worker_decoder

#: Seconds a call may take beyond its own wait before the node counts as lost.
CALL_MARGIN_S = 30.0
#: An exit status read by ``recv`` this recently answers ``exit_status`` without a call.
_FRESH_S = 0.2
#: The least a ``recv`` call waits on the node for a frame (the session polls every 50 ms).
REMOTE_WAIT_S = 0.5
#: After a Progress, a ``recv`` call waits this long for more (a job's per-epoch Progress comes
#: in a few calls, each about 25 ms of CPU through Ray Client); any other message ends it.
LINGER_S = 1.0


def ray_errors() -> tuple[type[BaseException], ...]:
    """Ray's exceptions that mean "the node, its actor or the link is gone" (not the model's doing)."""
    import ray.exceptions as rex

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError",
             "GetTimeoutError", "ObjectLostError", "OwnerDiedError", "RaySystemError", "LocalRayletDiedError",
             "ObjectFetchTimedOutError")
    return tuple(getattr(rex, n) for n in names if isinstance(getattr(rex, n, None), type))


class HostLink:
    """Calls to one node's host actor; any Ray failure becomes ``NodeLost`` naming the node."""

    def __init__(self, actor, node: str) -> None:
        self.actor, self.node = actor, node
        self._errors = ray_errors()

    def call(self, method: str, *args, timeout_s: float = CALL_MARGIN_S):
        """``actor.method(*args)``, waited for at most ``timeout_s``."""
        import ray

        try:
            return ray.get(getattr(self.actor, method).remote(*args), timeout=timeout_s)
        except self._errors as exc:
            raise NodeLost(self.node, f"{type(exc).__name__} in {method}: {str(exc).splitlines()[0][:300]}") from exc


def _exit(raw) -> ExitStatus | None:
    return None if raw is None else ExitStatus(exit_code=int(raw[0]), oom_killed=bool(raw[1]), error=str(raw[2])[:500])


class RemoteSandbox:
    """The ``Sandbox`` interface of a slot on a node (``start`` happened there already)."""

    def __init__(self, link: HostLink, slot_id: str, mounts: Mounts) -> None:
        self.link, self.slot_id, self.mounts = link, slot_id, mounts
        self.status: ExitStatus | None = None
        self.status_at = 0.0  # when a recv last read the status (None or not)

    def start(self) -> None:
        """Started by the node's pool before it was handed out."""

    def exit_status(self) -> ExitStatus | None:
        """The exit status once the worker has ended (a call unless a recv just read it)."""
        if self.status is None and time.monotonic() - self.status_at > _FRESH_S:
            self.note(_exit(self.link.call("exit_status", self.slot_id)))
        return self.status

    def note(self, status: ExitStatus | None) -> None:
        """Record a status read by a call."""
        self.status_at = time.monotonic()
        if status is not None:
            self.status = status

    def wait_exit(self, timeout: float) -> ExitStatus | None:
        """Wait up to ``timeout`` seconds (on the node) for the worker to end."""
        if self.status is None:
            self.note(_exit(self.link.call("wait_exit", self.slot_id, timeout, timeout_s=timeout + CALL_MARGIN_S)))
        return self.status

    def kill(self) -> None:
        """Kill the worker (a lost node's workers are past killing from here: its host reaps them)."""
        try:
            self.link.call("kill", self.slot_id)
        except NodeLost:
            pass

    def prioritise(self) -> None:
        """The node raises the slot's CPU weight when it forwards the job."""

    def logs(self, tail: int = 50) -> str:
        """The worker's last output lines, or '' when the node cannot say."""
        try:
            return str(self.link.call("logs", self.slot_id, tail))
        except NodeLost:
            return ""

    def peak_memory(self) -> int | None:
        """Peak memory of the sandbox, as its node's cgroup says."""
        try:
            peak = self.link.call("peak_memory", self.slot_id)
        except NodeLost:
            return None
        return peak if isinstance(peak, int) else None

    def close(self) -> None:
        """Remove the sandbox on its node (idempotent; a lost node's are reaped by the next host there)."""
        try:
            self.link.call("release", self.slot_id)
        except NodeLost:
            pass


class RemoteChannel:
    """The ``Channel`` interface over a node: frames come undecoded and are decoded here."""

    def __init__(self, sandbox: RemoteSandbox, *, max_message_bytes: int, received_bytes: int) -> None:
        self.sandbox, self.max_message_bytes = sandbox, max_message_bytes
        self.received_bytes = received_bytes
        self._frames: deque[bytes] = deque()
        self._decoder = worker_decoder()
        self._encoder = encoder()

    def seal(self) -> None:
        """Sealed on the node when its worker said Ready."""

    def send(self, job: Job) -> None:
        """Encode the job here; the node forwards the bytes as they are."""
        self.sandbox.link.call("send", self.sandbox.slot_id, self._encoder.encode(job))

    def bye(self) -> None:
        """Tell the worker its last message was read (best effort)."""
        try:
            self.sandbox.link.call("bye", self.sandbox.slot_id)
        except NodeLost:
            pass

    def recv(self, timeout_s: float) -> WorkerMessage | None:
        """The next message, decoded and size-checked here; None when nothing came in ``timeout_s``."""
        if not self._frames:
            # One call waits on the node a while: the session's 50 ms polls would each be a round
            # trip through Ray (measured: 35% overhead on 10 s candidates). A frame ends the wait at
            # once, so this only delays noticing an exit or a deadline by up to REMOTE_WAIT_S.
            wait = max(timeout_s, REMOTE_WAIT_S)
            frames, status, _ = self.sandbox.link.call("recv", self.sandbox.slot_id, wait, LINGER_S,
                                                       timeout_s=wait + LINGER_S + CALL_MARGIN_S)
            self.sandbox.note(_exit(status))
            self._frames.extend(frames)
        if not self._frames:
            return None
        frame = self._frames.popleft()
        if not isinstance(frame, bytes) or len(frame) > self.max_message_bytes:
            # the node's socket drops such frames already; a node is trusted, but this is cheap
            raise ProtocolViolation(f"a frame of {len(frame):,} bytes from the worker, over the "
                                    f"{self.max_message_bytes} byte limit")
        self.received_bytes += len(frame)
        return decode_frame(self._decoder, frame)

    def close(self) -> None:
        """Nothing is held here: the node closes the socket with the slot."""
        self._frames.clear()


class RemoteSlot:
    """A Ready slot on a node, taken for exactly one job (``Slot``'s interface for ``execute``)."""

    def __init__(self, link: HostLink, reply: dict, config: SandboxConfig, *, on_close=None) -> None:
        self.id = str(reply["slot"])
        self.node = link.node
        self.config = config
        self.violation = ""
        ready_frame = reply["ready"]
        try:  # decoded and bounded here too: the node's word is not the orchestrator's check
            self.ready: Ready = msgspec.msgpack.decode(ready_frame, type=Ready)
        except msgspec.DecodeError as exc:
            self.ready, self.violation = Ready(protocol=0), f"the node sent an undecodable Ready: {exc}"
        else:
            try:
                bounds.check_ready(self.ready, device=config.device)
            except ProtocolViolation as exc:  # the job that takes this slot fails with it, unsent
                self.violation = str(exc)
        now = time.monotonic()
        startup = max(0.0, float(reply.get("startup_s", 0.0)))
        self.started_at, self.ready_at = now - startup, now
        self.prioritised = True
        self.sandbox = RemoteSandbox(link, self.id, Mounts(socket_path=str(reply["socket_path"]),
                                                           data_root=reply.get("data_root")))
        self.channel = RemoteChannel(self.sandbox, max_message_bytes=config.max_message_bytes,
                                     received_bytes=len(ready_frame))
        self._on_close = on_close
        self._closed = False

    def __enter__(self) -> RemoteSlot:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def prioritise(self) -> None:
        """The node does it when it forwards the job."""

    def alive(self) -> bool:
        """True while the sandbox runs."""
        return self.sandbox.exit_status() is None

    def close(self) -> None:
        """Remove the sandbox on its node and give the slot back to the pool (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.sandbox.close()
        finally:
            self.channel.close()
            if self._on_close is not None:
                self._on_close(self)


__all__ = ["HostLink", "RemoteChannel", "RemoteSandbox", "RemoteSlot", "ray_errors"]
