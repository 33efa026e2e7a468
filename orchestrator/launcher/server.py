"""The launcher process: one ROUTER socket, typed requests, containers it builds itself.

It never reads model source, logits, curves or LLM output: a request names a job id, a
staged data handle, caps and a device, nothing else (``protocol``). It checks each
against its own configuration (``config``), makes the job directory and the data copy
itself (``paths``), and builds the container with the same pure ``container_kwargs``
as the direct path, so every hardening setting holds. Sessions are leases: a client
not heard from for ``lease_s`` (an orchestrator killed outright) loses its sandboxes,
and any sandbox alive past its own time limit plus the warm pool's idle allowance is
killed even if its client never asks.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import msgspec
import zmq

from orchestrator.exceptions import ResearcherError
from orchestrator.launcher import paths
from orchestrator.launcher.config import LauncherConfig, size_bytes, validate
from orchestrator.launcher.paths import Refusal
from orchestrator.launcher.protocol import (
    LAUNCHER_PROTOCOL,
    MAX_FRAME_BYTES,
    MAX_REQUEST_BYTES,
    Create,
    Hello,
    JobDir,
    Kill,
    Logs,
    LogText,
    MakeJobDir,
    Ok,
    Poll,
    Prioritise,
    Refused,
    Release,
    Remove,
    Reply,
    SandboxState,
    Staged,
    StageData,
    States,
    Welcome,
    encoder,
    request_decoder,
)
from orchestrator.safetext import inert
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.config import validate as validate_sandbox
from orchestrator.sandbox.docker import (
    LABEL_ROLE,
    ROLE_SANDBOX,
    DockerSandbox,
    connect,
    container_kwargs,
)

log = logging.getLogger("researcher.launcher")

LABEL_LAUNCHER = "org.pytorch-researcher.launcher"  # the launcher root that made the container
#: A warm slot waits up to 900 s for its job after a start-up of up to 90 s: the launcher's
#: own kill comes this long after a sandbox's time limit.
IDLE_ALLOWANCE_S = 1200.0
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SESSION = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_MAX_NOFILE = 65536
_MAX_TAIL = 1000
_MAX_PENDING = 256
_MAX_STAGED = 8  # data copies per session (a run stages one)
_SWEEP_S = 1.0


@dataclass
class _Job:
    dir: Path
    sandbox: DockerSandbox | None = None
    started: float = 0.0
    limit_s: float = 0.0


@dataclass
class _Session:
    seen: float
    jobs: dict[str, _Job] = field(default_factory=dict)
    data: dict[str, Path] = field(default_factory=dict)


class Launcher:
    """Answers launcher requests; ``handle`` is the whole policy, ``serve`` the socket."""

    def __init__(self, config: LauncherConfig, client: docker.DockerClient | None = None) -> None:
        self.config = validate(config)
        try:
            self.root = paths.prepare_root(config.root, config.client_gid)
        except (Refusal, OSError) as exc:
            raise ResearcherError(f"cannot use the launcher root {config.root}: {exc}") from exc
        self._client = client or connect()
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._idle_since: float | None = None  # no session since then, after at least one; None: busy or never used
        self._max_memory = size_bytes(config.max_memory)
        self._remove_leftovers()

    # ---------------------------------------------------------------- policy

    def handle(self, payload: bytes) -> Reply:
        """The reply to one request frame; never raises."""
        if len(payload) > MAX_REQUEST_BYTES:
            return Refused(reason=f"a request of {len(payload)} bytes is over the launcher's {MAX_REQUEST_BYTES}-byte limit")
        try:
            request = request_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:  # deep nesting: RecursionError
            return self._refuse(0, f"not a launcher request: {exc}")
        if not _SESSION.fullmatch(request.session):  # fullmatch: $ would let a final newline through
            return self._refuse(request.rid, "session must be 8-64 letters, digits, _ or -")
        try:
            reply = self._dispatch(request)
        except Refusal as exc:
            return self._refuse(request.rid, str(exc))
        except Exception as exc:  # an engine error or a bug: the client learns it, the launcher goes on
            log.exception("request %s failed", type(request).__name__)
            return self._refuse(request.rid, f"the launcher failed: {type(exc).__name__}: {str(exc)[:300]}")
        return msgspec.structs.replace(reply, rid=request.rid)

    def _refuse(self, rid: int, reason: str) -> Refused:
        log.warning("refused: %s", inert(reason))
        return Refused(rid=rid, reason=reason)

    def _dispatch(self, request) -> Reply:
        session = self._session(request.session)
        match request:
            case Hello():
                return self._welcome(request)
            case Poll():
                return States(sandboxes=self._states(session))
            case MakeJobDir():
                return self._make_job_dir(session, request.job_id)
            case StageData():
                return self._stage(session, request.source)
            case Create():
                return self._create(session, request)
            case Kill() | Prioritise() | Logs():
                return self._operate(session, request)
            case Remove():
                self._remove(session, request.job_id)
                return Ok()
            case Release():
                self._release(request.session)
                return Ok()
        raise Refusal(f"unknown request {type(request).__name__}")

    def _session(self, name: str) -> _Session:
        with self._lock:
            session = self._sessions.get(name)
            if session is None:
                session = self._sessions[name] = _Session(seen=time.monotonic())
                self._idle_since = None
            session.seen = time.monotonic()
            return session

    def _welcome(self, request: Hello) -> Welcome:
        from orchestrator.sandbox.image import inspect_image
        from orchestrator.sandbox.gpus import host_gpus

        if request.protocol != LAUNCHER_PROTOCOL:
            raise Refusal(f"this launcher speaks protocol {LAUNCHER_PROTOCOL}, the client {request.protocol}: "
                          "run the same version of pytorch-researcher on both sides")
        info = inspect_image(self._client, self.config.image)
        engine_runtimes = self._client.info().get("Runtimes", {}) or {}
        allowed = self.config.gpu_ids
        gpus = () if allowed == () else tuple((i, n) for i, n in host_gpus() if allowed is None or i in allowed)
        c = self.config
        return Welcome(
            protocol=LAUNCHER_PROTOCOL, image=c.image, image_present=info is not None,
            image_protocol="" if info is None or info.protocol is None else str(info.protocol),
            engine=str(self._client.version().get("Version", "?")),
            runtimes=tuple(r for r in c.runtimes if r in engine_runtimes), devices=c.devices, gpus=gpus,
            max_memory=c.max_memory, max_cpus=c.max_cpus, max_pids=c.max_pids, max_time_s=c.max_time_s,
            max_sandboxes=c.max_sandboxes, lease_s=c.lease_s,
        )

    def _make_job_dir(self, session: _Session, job_id: str) -> JobDir:
        _check_id(job_id)
        with self._lock:
            if any(job_id in s.jobs for s in self._sessions.values()):
                raise Refusal(f"job {job_id!r} exists already")
            if len(session.jobs) >= 2 * self.config.max_sandboxes:
                raise Refusal(f"this session holds {len(session.jobs)} job dirs: remove some first")
            path = paths.make_job_dir(self.root, self.config.client_gid)
            session.jobs[job_id] = _Job(dir=path)
        return JobDir(path=str(path))

    def _stage(self, session: _Session, source: str) -> Staged:
        if len(session.data) >= _MAX_STAGED:
            raise Refusal(f"this session staged {len(session.data)} data dirs, the most it may hold")
        dest, files, total = paths.stage(source, self.config.data_sources, self.root, self.config.max_data_bytes)
        with self._lock:
            session.data[dest.name] = dest
        log.info("staged %d files (%d bytes) from %s", files, total, inert(source))
        return Staged(handle=dest.name, files=files, bytes=total)

    def _create(self, session: _Session, request: Create) -> Ok:
        sandbox_config = self._granted(request)
        with self._lock:
            job = session.jobs.get(request.job_id)
            if job is None:
                raise Refusal(f"job {request.job_id!r} has no job directory of this session: send MakeJobDir first")
            if job.sandbox is not None:
                raise Refusal(f"job {request.job_id!r} has its sandbox already")
            live = sum(1 for s in self._sessions.values() for j in s.jobs.values() if j.sandbox is not None)
            if live >= self.config.max_sandboxes:
                raise Refusal(f"the launcher runs {live} sandboxes, its maximum (--max-sandboxes)")
            data = None
            if request.data is not None:
                data = session.data.get(request.data)
                if data is None:
                    raise Refusal(f"data handle {request.data!r} was not staged by this session")
            kwargs = container_kwargs(request.job_id, job.dir, data, sandbox_config,
                                      labels={LABEL_LAUNCHER: str(self.root)})
            job.sandbox = DockerSandbox(self._client, kwargs, data)
            job.started, job.limit_s = time.monotonic(), request.timeout_s + IDLE_ALLOWANCE_S
        try:
            job.sandbox.start()
        except ResearcherError as exc:
            job.sandbox = None
            raise Refusal(str(exc)) from exc
        with self._lock:
            released = (self._sessions.get(request.session) is not session  # its lease lapsed meanwhile
                        or session.jobs.get(request.job_id) is not job)  # or it was removed
        if released:
            _discard(job)
            raise Refusal(f"job {request.job_id!r} was removed while its sandbox started")
        log.info("started sandbox %s (%s, %s cpus, %s, %s)", request.job_id, request.memory, request.cpus,
                 request.device, request.runtime)
        return Ok()

    def _granted(self, request: Create) -> SandboxConfig:
        """The request's settings as a SandboxConfig, or a Refusal naming every excess."""
        c, problems = self.config, []
        if request.image not in ("", c.image):
            problems.append(f"image {request.image!r} is not the launcher's ({c.image!r})")
        try:
            memory = size_bytes(request.memory)
            if memory > self._max_memory:
                problems.append(f"memory {request.memory} is over the launcher's maximum {c.max_memory}")
            if size_bytes(request.tmpfs_size) > memory:
                problems.append(f"tmpfs {request.tmpfs_size} is over the memory cap {request.memory}")
        except ValueError as exc:
            problems.append(str(exc))
        if not 0 < request.cpus <= c.max_cpus:
            problems.append(f"cpus {request.cpus} is outside (0, {c.max_cpus:g}]")
        if not 16 <= request.pids <= c.max_pids:
            problems.append(f"pids {request.pids} is outside [16, {c.max_pids}]")
        if not 0 < request.timeout_s <= c.max_time_s:
            problems.append(f"time limit {request.timeout_s:g} s is outside (0, {c.max_time_s:g}]")
        if not 16 <= request.nofile <= _MAX_NOFILE:
            problems.append(f"nofile {request.nofile} is outside [16, {_MAX_NOFILE}]")
        if request.runtime not in c.runtimes:
            problems.append(f"runtime {request.runtime!r} is not allowed ({', '.join(c.runtimes)})")
        problems += _device_problems(request, c)
        if problems:
            raise Refusal("; ".join(problems))
        config = SandboxConfig(image=c.image, memory=request.memory, cpus=request.cpus, pids=request.pids,
                               tmpfs_size=request.tmpfs_size, nofile=request.nofile, container_runtime=request.runtime,
                               device=request.device, gpu=request.gpu, timeout_s=request.timeout_s,
                               warm_up=request.warm_up, jobs_dir=str(self.root))
        try:
            return validate_sandbox(config)
        except ResearcherError as exc:
            raise Refusal(str(exc)) from exc

    def _operate(self, session: _Session, request) -> Reply:
        with self._lock:
            job = session.jobs.get(request.job_id)
        if job is None or job.sandbox is None:
            raise Refusal(f"job {request.job_id!r} has no sandbox in this session")
        match request:
            case Kill():
                job.sandbox.kill()
            case Prioritise():
                job.sandbox.prioritise()
            case Logs():
                return LogText(text=job.sandbox.logs(max(1, min(request.tail, _MAX_TAIL)))[-64_000:])
        return Ok()

    def _states(self, session: _Session) -> tuple[SandboxState, ...]:
        with self._lock:
            jobs = [(job_id, job.sandbox) for job_id, job in session.jobs.items() if job.sandbox is not None]
        states = []
        for job_id, sandbox in jobs:
            status = sandbox.exit_status()
            states.append(SandboxState(
                job_id=job_id, exit_code=None if status is None else status.exit_code,
                oom_killed=bool(status and status.oom_killed), error=status.error[:500] if status else "",
                peak_memory=sandbox.peak_memory(),
            ))
        return tuple(states)

    def _remove(self, session: _Session, job_id: str) -> None:
        with self._lock:
            job = session.jobs.pop(job_id, None)
        if job is not None:
            _discard(job)

    def _release(self, name: str) -> None:
        with self._lock:
            session = self._sessions.pop(name, None)
            if session is not None and not self._sessions:
                self._idle_since = time.monotonic()
        if session is None:
            return
        for job in session.jobs.values():
            _discard(job)
        for path in session.data.values():
            paths.remove(path)
        if session.jobs:
            log.info("released session %s: %d sandbox(es) removed", name, len(session.jobs))

    # ---------------------------------------------------------------- upkeep

    def sweep(self, now: float | None = None) -> None:
        """End sessions whose lease lapsed; kill sandboxes past their own limit."""
        now = time.monotonic() if now is None else now
        with self._lock:
            lapsed = [name for name, s in self._sessions.items() if now - s.seen > self.config.lease_s]
            overdue = [(j, s.seen) for s in self._sessions.values() for j in s.jobs.values()
                       if j.sandbox is not None and now - j.started > j.limit_s]
        for name in lapsed:
            log.warning("session %s stopped renewing its lease: removing its sandboxes", name)
            self._release(name)
        for job, _ in overdue:
            job.sandbox.kill()

    def _remove_leftovers(self) -> None:
        """Sandboxes and directories a previous launcher on this root left behind."""
        filters = {"label": [f"{LABEL_ROLE}={ROLE_SANDBOX}", f"{LABEL_LAUNCHER}={self.root}"]}
        try:
            for container in self._client.containers.list(all=True, ignore_removed=True, filters=filters):
                container.remove(force=True, v=True)
        except docker.errors.DockerException as exc:
            log.warning("could not remove a previous launcher's sandboxes: %s", exc)
        for entry in self.root.iterdir():
            if entry.name.startswith(("job-", "data-")) and entry.is_dir() and not entry.is_symlink():
                paths.remove(entry)

    def close(self) -> None:
        """Remove every sandbox, job directory and staged copy; close the engine client."""
        with self._lock:
            names = list(self._sessions)
        for name in names:
            self._release(name)
        self._client.close()

    # ---------------------------------------------------------------- socket

    def idle_for(self) -> float:
        """Seconds since the last session ended, once one has come and gone; 0 otherwise."""
        with self._lock:
            return 0.0 if self._idle_since is None else time.monotonic() - self._idle_since

    def serve(self, stop: threading.Event, *, on_ready=None, until_idle_s: float | None = None) -> None:
        """Answer requests on ``<root>/launcher.sock`` until ``stop`` is set, or (``until_idle_s``)
        until its clients have all gone for that long (`docker compose up` then ends with the run)."""
        ctx = zmq.Context()
        server = _Server(self, ctx)
        try:
            server.bind(self.config.socket_path, self.config.client_gid)
            if on_ready is not None:
                on_ready()
            server.loop(stop, until_idle_s)
        finally:
            server.close()
            ctx.term()


class _Server:
    """The ROUTER socket and the threads that answer it (a slow Create never holds up a Poll)."""

    def __init__(self, launcher: Launcher, ctx: zmq.Context) -> None:
        self.launcher, self.ctx = launcher, ctx
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)  # a bigger frame drops its sender
        self.router.setsockopt(zmq.LINGER, 0)
        self.replies = ctx.socket(zmq.PULL)
        self.replies.bind("inproc://launcher-replies")
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="launcher")
        self.local = threading.local()
        self.pushes: list[zmq.Socket] = []
        self.pending = 0
        self.path = ""

    def bind(self, path: str, gid: int | None) -> None:
        if os.path.lexists(path):
            os.unlink(path)  # a previous launcher's socket: the root is ours alone
        self.router.bind(f"ipc://{path}")
        self.path = path
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, 0o660)
        log.info("launcher listening on ipc://%s", path)

    def loop(self, stop: threading.Event, until_idle_s: float | None = None) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.replies, zmq.POLLIN)
        next_sweep = time.monotonic() + _SWEEP_S
        while not stop.is_set():
            if until_idle_s is not None and self.launcher.idle_for() > until_idle_s:
                log.info("every client has gone for %g s: exiting (--until-idle)", until_idle_s)
                return
            events = dict(poller.poll(200))
            if self.replies in events:
                while self.replies.poll(0):
                    self.router.send_multipart(self.replies.recv_multipart(), copy=False)
                    self.pending -= 1
            if self.router in events:
                while self.router.poll(0):
                    self._take(self.router.recv_multipart())
            if time.monotonic() >= next_sweep:
                self.pool.submit(self.launcher.sweep)
                next_sweep = time.monotonic() + _SWEEP_S

    def _take(self, frames: list[bytes]) -> None:
        ident = frames[0]
        if self.pending >= _MAX_PENDING:
            self._send(ident, Refused(reason="the launcher is busy: too many requests in flight"))
            return
        self.pending += 1
        if len(frames) != 3 or frames[1] != b"":
            self.pool.submit(self._answer, ident, None)
        else:
            self.pool.submit(self._answer, ident, frames[2])

    def _answer(self, ident: bytes, payload: bytes | None) -> None:
        if payload is None:
            reply = Refused(reason="a request is an empty delimiter frame and one msgpack frame (a ZeroMQ DEALER or REQ socket)")
        else:
            try:
                reply = self.launcher.handle(payload)
            except Exception as exc:  # never leave a request unanswered: its pending count would leak
                log.exception("a request failed outside the policy")
                reply = Refused(reason=f"the launcher failed: {type(exc).__name__}")
        push = getattr(self.local, "push", None)
        if push is None:
            push = self.local.push = self.ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect("inproc://launcher-replies")
            self.pushes.append(push)
        push.send_multipart([ident, b"", encoder.encode(reply)])

    def _send(self, ident: bytes, reply: Reply) -> None:
        self.router.send_multipart([ident, b"", encoder.encode(reply)])

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for sock in [*self.pushes, self.replies, self.router]:
            sock.close(linger=0)
        if self.path and os.path.lexists(self.path):
            os.unlink(self.path)


def _check_id(job_id: str) -> None:
    if not _ID.fullmatch(job_id):
        raise Refusal("a job id is 1-64 letters, digits, _ or -")


def _device_problems(request: Create, c: LauncherConfig) -> list[str]:
    if request.device not in c.devices:
        return [f"device {request.device!r} is not granted by this launcher (its devices: {', '.join(c.devices)}; "
                "start it with --gpus all for cuda)"]
    if request.device != "cuda":
        return [] if request.gpu is None else ["a cpu sandbox names no GPU"]
    allowed = c.gpu_ids
    if allowed is not None and request.gpu not in allowed:
        return [f"GPU {request.gpu!r} is not granted (this launcher grants {', '.join(allowed)}; name one)"]
    return []


def _discard(job: _Job) -> None:
    if job.sandbox is not None:
        job.sandbox.close()
    paths.remove(job.dir)
