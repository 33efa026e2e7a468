"""The orchestrator's side of the launcher: a sandbox backend that asks instead of holding Docker.

``LauncherBackend`` offers what ``DockerBackend`` offers (``create``, ``close``) plus
``make_job_dir``, which ``Slot`` uses so that the launcher, not this process, makes
each job directory. A thread polls the launcher twice a second: that renews this
session's lease and learns how sandboxes ended, so ``exit_status`` never blocks.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import msgspec
import zmq

from orchestrator.exceptions import SandboxUnavailable
from orchestrator.launcher.protocol import (
    LAUNCHER_PROTOCOL,
    MAX_REPLY_BYTES,
    Create,
    Hello,
    JobDir,
    Kill,
    Logs,
    LogText,
    MakeJobDir,
    Poll,
    Prioritise,
    Refused,
    Release,
    Remove,
    Reply,
    Staged,
    StageData,
    States,
    Welcome,
    encoder,
    reply_decoder,
)
from orchestrator.sandbox.base import ExitStatus, Mounts
from orchestrator.sandbox.config import SOCKET_NAME, SandboxConfig

_POLL_S = 0.5
_TIMEOUT_S = 30.0  # an engine create can take seconds under load; a dead launcher is noticed here


class LauncherRefused(SandboxUnavailable):
    """The launcher answered, and said no."""


class LauncherClient:
    """Typed requests over one DEALER socket per thread; a Refused reply raises ``LauncherRefused``."""

    def __init__(self, address: str, *, timeout_s: float = _TIMEOUT_S) -> None:
        if not address.startswith("ipc://"):
            raise SandboxUnavailable(f"--launcher {address!r} is not ipc://PATH (the launcher's socket, e.g. "
                                     "ipc:///tmp/researcher-launcher/launcher.sock)")
        self.address, self.timeout_s = address, timeout_s
        self.session = secrets.token_hex(12)
        self._ctx = zmq.Context()
        self._local = threading.local()
        self._sockets: list[zmq.Socket] = []
        self._lock = threading.Lock()
        self._rid = 0

    def request(self, message, timeout_s: float | None = None) -> Reply:
        """Send one request and wait for its reply."""
        sock = self._socket()
        with self._lock:
            self._rid += 1
            rid = self._rid
        sock.send_multipart([b"", encoder.encode(msgspec.structs.replace(message, session=self.session, rid=rid))])
        until = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while (left := until - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000) + 1):
                break
            frames = sock.recv_multipart()
            try:
                reply = reply_decoder.decode(frames[-1])
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise SandboxUnavailable(f"the launcher at {self.address} sent a reply this client cannot read ({exc}): "
                                         "run the same version of pytorch-researcher on both sides") from exc
            if reply.rid != rid:
                continue  # the late answer to a request that timed out
            if isinstance(reply, Refused):
                raise LauncherRefused(f"the launcher refused {type(message).__name__}: {reply.reason}")
            return reply
        self._drop_socket()  # a reply may still come: never read it as the next one's
        raise SandboxUnavailable(
            f"the launcher at {self.address} did not answer {type(message).__name__} within "
            f"{self.timeout_s if timeout_s is None else timeout_s:g} s: is `researcher launcher` running, "
            "and is its socket reachable from here (compose: the launcher service and its root volume)?"
        )

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
            sock.connect(self.address)
            self._local.sock = sock
            with self._lock:
                self._sockets.append(sock)
        return sock

    def _drop_socket(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            self._local.sock = None
            with self._lock:
                self._sockets.remove(sock)
            sock.close(linger=0)

    def close(self) -> None:
        """Close every socket and the context."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close(linger=0)
        self._ctx.term()


def hello(address: str, timeout_s: float = 10.0) -> Welcome:
    """What the launcher at ``address`` offers (``researcher doctor``); SandboxUnavailable if none answers."""
    client = LauncherClient(address, timeout_s=timeout_s)
    try:
        welcome = client.request(Hello(session=client.session, protocol=LAUNCHER_PROTOCOL))
        client.request(Release(session=client.session))
        return welcome
    finally:
        client.close()


class LauncherBackend:
    """Sandboxes through a running ``researcher launcher``; the same lifecycle as DockerBackend."""

    name = "launcher"
    unsafe = False

    def __init__(self, address: str, *, image: str | None = None) -> None:
        self.client = LauncherClient(address)
        self.welcome = self.client.request(Hello(session=self.client.session))
        _check_welcome(self.welcome, image, address)
        self._states: dict[str, ExitStatus | None] = {}
        self._peaks: dict[str, int | None] = {}
        self._changed = threading.Condition()
        self._staged: dict[str, str] = {}
        self._stop = threading.Event()
        self._lost = ""
        self._poller = threading.Thread(target=self._poll_forever, name="launcher-lease", daemon=True)
        self._poller.start()

    def make_job_dir(self, job_id: str) -> Path:
        """A job directory the launcher made for ``job_id``."""
        reply = self.client.request(MakeJobDir(session="", job_id=job_id))
        assert isinstance(reply, JobDir)
        return Path(reply.path)

    def create(self, job_id: str, job_dir: Path, data_dir: Path | None, config: SandboxConfig) -> LauncherSandbox:
        """A sandbox (not yet started) for ``job_id``; its data is staged once per directory."""
        handle = None if data_dir is None else self._stage(data_dir)
        request = Create(session="", job_id=job_id, data=handle, memory=config.memory,
                         cpus=config.cpus, pids=config.pids, tmpfs_size=config.tmpfs_size, nofile=config.nofile,
                         runtime=config.container_runtime, device=config.device, gpu=config.gpu, timeout_s=config.timeout_s,
                         warm_up=config.warm_up)
        return LauncherSandbox(self, request)

    def _stage(self, data_dir: Path) -> str:
        key = str(Path(data_dir).absolute())
        with self._changed:
            handle = self._staged.get(key)
        if handle is None:
            try:
                reply = self.client.request(StageData(session="", source=key), timeout_s=600.0)
            except LauncherRefused as exc:
                raise LauncherRefused(f"{exc}. The launcher copies data only from its --data-sources (the runs "
                                      "dir); for `check --train` pass --jobs-dir DIR below one of them") from exc
            assert isinstance(reply, Staged)
            handle = reply.handle
            with self._changed:
                self._staged[key] = handle
        return handle

    def track(self, job_id: str) -> None:
        """Watch ``job_id`` from now on (it was just started)."""
        with self._changed:
            self._states.setdefault(job_id, None)

    def forget(self, job_id: str) -> None:
        """Stop watching ``job_id`` (removed)."""
        with self._changed:
            self._states.pop(job_id, None)
            self._peaks.pop(job_id, None)

    def status(self, job_id: str) -> ExitStatus | None:
        """How ``job_id`` ended, as last polled; None while it runs."""
        with self._changed:
            return self._states.get(job_id)

    def peak(self, job_id: str) -> int | None:
        """Peak memory of ``job_id``'s sandbox, as last polled."""
        with self._changed:
            return self._peaks.get(job_id)

    def wait(self, job_id: str, timeout: float) -> ExitStatus | None:
        """Wait up to ``timeout`` s for ``job_id`` to end."""
        until = time.monotonic() + timeout
        with self._changed:
            while self._states.get(job_id) is None and (left := until - time.monotonic()) > 0:
                self._changed.wait(min(left, _POLL_S))
            return self._states.get(job_id)

    def _poll_forever(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(_POLL_S):
            try:
                reply = self.client.request(Poll(session=""), timeout_s=max(2.0, self.welcome.lease_s / 3))
            except SandboxUnavailable as exc:
                if time.monotonic() - last_ok > self.welcome.lease_s:
                    self._lose(f"lost the launcher: {exc}")
                continue
            last_ok = time.monotonic()
            assert isinstance(reply, States)
            self._update(reply)

    def _update(self, reply: States) -> None:
        seen = {s.job_id: s for s in reply.sandboxes}
        with self._changed:
            for job_id, status in self._states.items():
                state = seen.get(job_id)
                if status is not None:
                    continue
                if state is None:  # the launcher no longer has it (restarted, or its limit passed)
                    self._states[job_id] = ExitStatus(exit_code=-1, error="the launcher removed the sandbox")
                elif state.exit_code is not None:
                    self._states[job_id] = ExitStatus(state.exit_code, state.oom_killed, state.error)
                if state is not None:
                    self._peaks[job_id] = state.peak_memory
            self._changed.notify_all()

    def _lose(self, why: str) -> None:
        with self._changed:
            for job_id, status in self._states.items():
                if status is None:
                    self._states[job_id] = ExitStatus(exit_code=-1, error=why)
            self._changed.notify_all()

    def close(self) -> None:
        """End the session: the launcher removes whatever of it is left."""
        self._stop.set()
        self._poller.join(timeout=5)
        try:
            self.client.request(Release(session=""), timeout_s=30.0)
        except SandboxUnavailable:
            pass  # the lease lapses instead
        self.client.close()


class LauncherSandbox:
    """One job's sandbox, made and watched by the launcher."""

    def __init__(self, backend: LauncherBackend, request: Create) -> None:
        self._backend, self._request = backend, request
        self.job_id = request.job_id
        self._started = False
        self.mounts = Mounts(socket_path=f"/job/{SOCKET_NAME}", data_root="/data" if request.data else None)

    def __enter__(self) -> LauncherSandbox:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        """Ask the launcher to create and start it."""
        self._backend.client.request(self._request, timeout_s=120.0)
        self._started = True
        self._backend.track(self.job_id)

    def exit_status(self) -> ExitStatus | None:
        """How it ended, as last polled (never blocks)."""
        return self._backend.status(self.job_id) if self._started else None

    def wait_exit(self, timeout: float) -> ExitStatus | None:
        """Wait up to ``timeout`` s for it to end."""
        return self._backend.wait(self.job_id, timeout) if self._started else None

    def kill(self) -> None:
        """SIGKILL it (idempotent)."""
        if self._started:
            self._quietly(Kill(session="", job_id=self.job_id))

    def prioritise(self) -> None:
        """The normal CPU weight from now on."""
        if self._started:
            self._quietly(Prioritise(session="", job_id=self.job_id))

    def logs(self, tail: int = 50) -> str:
        """Its last output lines."""
        if not self._started:
            return ""
        try:
            reply = self._backend.client.request(Logs(session="", job_id=self.job_id, tail=tail))
        except SandboxUnavailable:
            return ""
        return reply.text if isinstance(reply, LogText) else ""

    def peak_memory(self) -> int | None:
        """Peak memory in bytes, as the launcher last read it."""
        return self._backend.peak(self.job_id)

    def close(self) -> None:
        """Remove it and its job directory (idempotent)."""
        self._quietly(Remove(session="", job_id=self.job_id))
        self._backend.forget(self.job_id)
        self._started = False

    def _quietly(self, request) -> None:
        try:
            self._backend.client.request(request)
        except SandboxUnavailable:
            pass  # gone with the launcher; its lease sweep removes what is left


def _check_welcome(welcome: Welcome, image: str | None, address: str) -> None:
    from sandbox_image.protocol import PROTOCOL_VERSION

    if image and image != welcome.image:
        raise SandboxUnavailable(f"the launcher at {address} runs the sandbox image {welcome.image!r}, not {image!r}: "
                                 "drop --image, or start the launcher with --image")
    if not welcome.image_present:
        raise SandboxUnavailable(f"the launcher's sandbox image {welcome.image!r} is not built: run `researcher image build` "
                                 "on the Docker host")
    if welcome.image_protocol != str(PROTOCOL_VERSION):
        raise SandboxUnavailable(f"the launcher's sandbox image {welcome.image!r} speaks protocol "
                                 f"{welcome.image_protocol or 'none'}, this orchestrator {PROTOCOL_VERSION}: "
                                 "rebuild it with `researcher image build`")
