"""Run one job in one sandbox and turn whatever happens into a ``JobResult``.

This is where the host speaks the protocol: bind the job's socket, start the
sandbox, wait for ``Ready``, send the ``Job``, collect messages until ``Done``
or ``Failure``, and enforce the wall-clock limit by killing the sandbox. A
model that crashes, hangs, floods, forges or exhausts anything ends as a
``Failure`` in the result - never as an exception here. Only an unusable
sandbox (no engine, no image, a stale image) raises ``SandboxUnavailable``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from orchestrator.exceptions import ProtocolViolation, SandboxUnavailable
from orchestrator.sandbox import bounds
from orchestrator.sandbox.base import Backend, ExitStatus, Sandbox
from orchestrator.sandbox.channel import Channel
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.jobsroot import default_jobs_root, ensure_jobs_root
from orchestrator.sandbox.validate import validate_logits
from sandbox_image.protocol import (
    ALLOWED_DTYPES,
    PROTOCOL_VERSION,
    Batches,
    CheckReport,
    Done,
    Failure,
    FailureKind,
    Job,
    Predictions,
    Progress,
    Ready,
    Stage,
    WorkerMessage,
)

_POLL_S = 0.05
#: Failure kinds only the host can observe; a worker that sends one is forging.
HOST_ONLY_KINDS = frozenset({FailureKind.TIMEOUT, FailureKind.OUT_OF_MEMORY, FailureKind.CRASHED,
                             FailureKind.SANDBOX_UNAVAILABLE})
_MAX_MESSAGES = 20_000  # a worker that floods small messages is cut off
_EXIT_GRACE_S = 5.0
_SIGSEGV = 11


@dataclass
class JobResult:
    """Everything the host learned from one job; ``failure`` is None when it passed."""

    job_id: str
    ready: Ready | None = None
    check: CheckReport | None = None
    progress: list[Progress] = field(default_factory=list)
    predictions: list[Predictions] = field(default_factory=list)
    logits: dict[int, np.ndarray] = field(default_factory=dict)  # validated, when n_test was given
    failure: Failure | None = None
    exit: ExitStatus | None = None
    logs: str = ""
    seconds: float = 0.0
    startup_seconds: float = 0.0
    handoff_seconds: float = 0.0  # Job sent -> first message back
    stopped: bool = False  # the caller stopped it (e.g. pruning); no failure, no full result
    peak_memory_bytes: int | None = None  # of the sandbox, where the backend can tell

    @property
    def status(self) -> str:
        """``passed``, ``failed`` or ``stopped``."""
        if self.failure is not None:
            return "failed"
        return "stopped" if self.stopped else "passed"


class _Ended(Exception):
    """Internal: the sandbox stopped before the job finished."""

    def __init__(self, status: ExitStatus) -> None:
        super().__init__(f"exit {status.exit_code}")
        self.status = status


class _Expired(Exception):
    """Internal: a deadline passed."""


def new_job_id() -> str:
    """A short unique id for a job (also the container name suffix)."""
    return uuid.uuid4().hex[:12]


def make_private_dir(root: Path | None, prefix: str) -> Path:
    """A new 0700 ``prefix*`` directory in the jobs root ``root`` (None = the default one).

    The root is made 0700 if missing and refused (``SandboxUnavailable``) unless it
    is private to this user: see ``orchestrator.sandbox.jobsroot``.
    """
    root = ensure_jobs_root(root if root is not None else default_jobs_root())
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    except OSError as exc:
        raise SandboxUnavailable(f"cannot make a directory in {root} (the jobs dir, --jobs-dir): {exc}") from exc


def make_job_dir(root: Path | None = None) -> Path:
    """A new directory for one job's socket in the private jobs root, searchable by uid 65534.

    Docker mounts this directory itself at /job: the worker needs o+x here (no
    listing), never a way through the 0700 root above it.
    """
    path = make_private_dir(root, "researcher-job-")
    path.chmod(0o711)  # just made by us inside a root only we can enter: no link to follow
    return path


class Slot:
    """A started sandbox whose worker said ``Ready``; it takes exactly one job, then goes.

    ``run_job`` makes one per job (the cold path); a warm pool makes them ahead
    of need so that a job only pays for the hand-off, never for start-up.
    """

    def __init__(self, backend: Backend, config: SandboxConfig, *, data_dir: Path | None = None,
                 jobs_root: Path | None = None, slot_id: str | None = None) -> None:
        self.id = slot_id or new_job_id()
        self.config = config
        self.ready: Ready | None = None
        self.violation = ""  # set when the Ready itself was out of bounds (e.g. GPUs not asked for)
        self.started_at = self.ready_at = 0.0
        self.prioritised = not config.warm_up  # only pool slots start at a low CPU weight
        maker = getattr(backend, "make_job_dir", None)  # a launcher makes job dirs itself
        self.job_dir = maker(self.id) if maker is not None else make_job_dir(
            jobs_root if jobs_root is not None else Path(config.jobs_root))
        try:
            self.channel = Channel(self.job_dir, max_message_bytes=config.max_message_bytes)
        except BaseException:
            shutil.rmtree(self.job_dir, ignore_errors=True)
            raise
        self.sandbox = backend.create(self.id, self.job_dir, data_dir, config)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        """Start the sandbox; the worker connects and imports torch by itself."""
        self.started_at = time.monotonic()
        self.sandbox.start()

    def wait_ready(self, timeout_s: float | None = None) -> Ready:
        """Block until the worker says Ready; SandboxUnavailable when it cannot."""
        until = time.monotonic() + (self.config.startup_timeout_s if timeout_s is None else timeout_s)
        while self.ready is None:
            if not self.poll_ready(min(_POLL_S, max(0.0, until - time.monotonic()))) and time.monotonic() >= until:
                raise SandboxUnavailable(
                    f"the sandbox worker did not report Ready within {self.config.startup_timeout_s:g} s; "
                    f"the host may be overloaded or the image {self.config.image!r} broken "
                    f"(rebuild it with `researcher image build`).\n{self.sandbox.logs(20)}"
                )
        return self.ready

    def poll_ready(self, timeout_s: float = 0.0) -> bool:
        """True once Ready has arrived (waits at most ``timeout_s``); raises if the worker died."""
        if self.ready is not None:
            return True
        try:
            msg = self.channel.recv(timeout_s)
        except ProtocolViolation as exc:
            raise SandboxUnavailable(
                f"the sandbox image {self.config.image!r} speaks another protocol ({exc}); "
                "rebuild it with `researcher image build`"
            ) from exc
        if msg is None:
            status = self.sandbox.exit_status()
            if status is not None and self.channel.recv(0.05) is None:
                raise SandboxUnavailable(
                    f"the sandbox worker exited with code {status.exit_code} before it was ready; is the "
                    f"image {self.config.image!r} sane? Rebuild it with `researcher image build`.\n{self.sandbox.logs(20)}"
                )
            return False
        if not isinstance(msg, Ready):
            raise SandboxUnavailable(f"the sandbox worker sent {type(msg).__name__} before Ready; rebuild the image")
        if msg.protocol != PROTOCOL_VERSION:
            raise SandboxUnavailable(
                f"the sandbox image {self.config.image!r} speaks protocol {msg.protocol}, this "
                f"orchestrator speaks {PROTOCOL_VERSION}: rebuild it with `researcher image build`"
            )
        self.channel.seal()
        try:
            bounds.check_ready(msg, device=self.config.device)
        except ProtocolViolation as exc:  # the job that takes this slot fails with it, unsent
            self.violation = str(exc)
        self.ready, self.ready_at = msg, time.monotonic()
        return True

    def prioritise(self) -> None:
        """Normal CPU weight from now on (a pool slot is started at a low one; once is enough)."""
        if not self.prioritised:
            self.prioritised = True
            self.sandbox.prioritise()

    def alive(self) -> bool:
        """True while the sandbox runs."""
        return self.sandbox.exit_status() is None

    def close(self) -> None:
        """Remove the sandbox, the socket and the job directory (idempotent)."""
        try:
            self.sandbox.close()
        finally:
            self.channel.close()
            shutil.rmtree(self.job_dir, ignore_errors=True)


def execute(slot: Slot, job: Job, *, n_test: int | None = None,
            on_message: Callable[[WorkerMessage], bool | None] | None = None) -> JobResult:
    """Send ``job`` to a ready slot and collect its result; the slot is spent afterwards.

    ``on_message`` sees every CheckReport, Batches, Progress and Predictions; returning
    True stops the job (the sandbox is killed and the result is ``stopped``).
    """
    if slot.ready is None:
        raise ValueError("execute() needs a slot whose worker said Ready")
    slot.prioritise()  # a pool slot waited at a low CPU weight; its job gets the normal one
    start = time.monotonic()
    result = JobResult(job_id=job.job_id, ready=slot.ready, startup_seconds=slot.ready_at - slot.started_at)
    if slot.violation:
        slot.sandbox.kill()
        result.failure = Failure(stage=Stage.STARTUP, kind=FailureKind.PROTOCOL_VIOLATION, message=slot.violation)
        result.logs = slot.sandbox.logs(40)
        return result
    try:
        _Session(slot.sandbox, slot.channel, slot.config, result, start, n_test, on_message).run(job)
    finally:
        result.seconds = time.monotonic() - start
    return result


def run_job(
    backend: Backend,
    job: Job,
    config: SandboxConfig,
    *,
    data_dir: Path | None = None,
    n_test: int | None = None,
    on_message: Callable[[WorkerMessage], bool | None] | None = None,
    jobs_root: Path | None = None,
) -> JobResult:
    """Run ``job`` in a fresh sandbox from ``backend`` (the cold path) and return what happened."""
    start = time.monotonic()
    with Slot(backend, config, data_dir=data_dir, jobs_root=jobs_root, slot_id=job.job_id) as slot:
        slot.start()
        slot.wait_ready()
        result = execute(slot, job, n_test=n_test, on_message=on_message)
    result.seconds = time.monotonic() - start
    return result


class _Stop(Exception):
    """Internal: the caller asked to stop the job."""


class _Session:
    """The protocol conversation of one job (internal to ``execute``)."""

    def __init__(self, sandbox: Sandbox, channel: Channel, config: SandboxConfig, result: JobResult,
                 start: float, n_test: int | None, on_message) -> None:
        self.sandbox, self.channel, self.config, self.result = sandbox, channel, config, result
        self.start, self.n_test, self.on_message = start, n_test, on_message
        self.deadline = start + config.timeout_s
        self.stage = Stage.IMPORT
        self.count = 0
        self.progress_seen: dict[int, int] = {}  # seed -> Progress messages
        self.batches_sent = 0  # Batches messages (bounded by rate, not by _MAX_MESSAGES)
        self.byte_budget = 0  # set with the job

    def run(self, job: Job) -> None:
        """Drive the job to a terminal state; record a Failure for anything abnormal."""
        # counted from here on: Ready came before, and the budget covers the job's own messages
        self.byte_budget = self.channel.received_bytes + bounds.byte_budget(job, self.n_test, self.config.timeout_s)
        try:
            self._send(job)
            self._collect(job)
        except _Stop:
            self.sandbox.kill()
            self._record_exit(self.sandbox.wait_exit(_EXIT_GRACE_S))
            self.result.stopped = True
        except _Expired:
            self.sandbox.kill()
            self._record_exit(self.sandbox.wait_exit(_EXIT_GRACE_S))
            self._timeout_failure()
        except _Ended as ended:
            self._record_exit(ended.status)
            self._exit_failure(ended.status)
        except ProtocolViolation as exc:
            self.sandbox.kill()
            self._record_exit(self.sandbox.wait_exit(_EXIT_GRACE_S))
            self._set_failure(FailureKind.PROTOCOL_VIOLATION, str(exc), Stage.PROTOCOL)
        if self.result.failure is not None:
            self.result.logs = self.sandbox.logs(40)

    def _send(self, job: Job) -> None:
        if job.data is not None and self.sandbox.mounts.data_root is not None:
            job = msgspec.structs.replace(job, data=msgspec.structs.replace(job.data, root=self.sandbox.mounts.data_root))
        self._sent_at = time.monotonic()
        self.channel.send(job)

    def _collect(self, job: Job) -> None:
        first = True
        while True:
            msg = self._next(self.deadline)
            if first:
                self.result.handoff_seconds = time.monotonic() - self._sent_at
                first = False
            done = self._accept(msg, job)
            if self.on_message is not None and not done and self.on_message(msg):
                raise _Stop
            if done:
                break
        self.channel.bye()  # everything is read: the worker may close without losing a frame
        peak = getattr(self.sandbox, "peak_memory", None)
        self.result.peak_memory_bytes = peak() if peak is not None else None
        # After Done nothing more is needed from the worker; after a Failure, give the
        # kernel a moment to report an OOM kill that may be its real cause.
        status = self.sandbox.wait_exit(_EXIT_GRACE_S if self.result.failure is not None else 0.5)
        if status is None:
            self.sandbox.kill()
            status = self.sandbox.wait_exit(_EXIT_GRACE_S)
        self._record_exit(status)
        if status is not None and status.oom_killed:
            self._set_failure(FailureKind.OUT_OF_MEMORY, f"killed at the memory cap ({self.config.memory})", self.stage, force=True)

    def _accept(self, msg: WorkerMessage, job: Job) -> bool:
        """Record one message, held to ``bounds`` first; True when it ends the job."""
        match msg:
            case CheckReport() if self.result.check is None:
                bounds.check_report(msg, job)
                self.result.check = msg
                self.stage = Stage.TRAIN
            case Batches() if self.result.check is not None:
                self.batches_sent += 1
                bounds.check_batches(msg, job, self.progress_seen, self.batches_sent, time.monotonic() - self._sent_at)
                if any(p.seed == msg.seed for p in self.result.predictions):
                    raise ProtocolViolation(f"Batches for seed {msg.seed} after its predictions")
            case Progress() if self.result.check is not None:
                bounds.check_progress(msg, job, self.progress_seen)
                self.result.progress.append(msg)
            case Predictions() if self.result.check is not None:
                self._check_predictions(msg, job)
                self.result.predictions.append(msg)
            case Failure() if msg.kind in HOST_ONLY_KINDS:
                raise ProtocolViolation(f"the worker claimed a {msg.kind.value} failure, which only the host can observe")
            case Failure():
                self.result.failure = msg
                return True
            case Done():
                bounds.check_done(msg)
                self._check_done(job)
                return True
            case _:
                raise ProtocolViolation(f"unexpected {type(msg).__name__} message at stage {self.stage.value}")
        return False

    # --------------------------------------------------------------- checks

    def _check_predictions(self, msg: Predictions, job: Job) -> None:
        bounds.check_predictions(msg, job)
        if any(p.seed == msg.seed for p in self.result.predictions):
            raise ProtocolViolation(f"predictions for repeated seed {msg.seed}")
        if msg.dtype not in ALLOWED_DTYPES:
            raise ProtocolViolation(f"logits dtype {msg.dtype!r} not in {ALLOWED_DTYPES}")
        if self.n_test is not None:
            self.result.logits[msg.seed] = validate_logits(msg.logits, msg.dtype, msg.shape, self.n_test, job.num_classes)

    def _check_done(self, job: Job) -> None:
        if self.result.check is None:
            raise ProtocolViolation("Done before any CheckReport")
        if job.train is not None and len(self.result.predictions) != len(job.train.seeds):
            raise ProtocolViolation(
                f"Done after {len(self.result.predictions)} of {len(job.train.seeds)} seeds' predictions"
            )

    # --------------------------------------------------------------- transport

    def _next(self, until: float) -> WorkerMessage:
        """The next message before ``until``; raises _Expired or _Ended."""
        while True:
            now = time.monotonic()
            if now >= until:
                raise _Expired
            msg = self.channel.recv(min(_POLL_S, until - now))
            if msg is not None:
                return self._counted(msg)
            status = self.sandbox.exit_status()
            if status is not None:
                msg = self.channel.recv(0.2)  # a last message may still be in flight
                if msg is not None:
                    return self._counted(msg)
                raise _Ended(status)

    def _counted(self, msg: WorkerMessage) -> WorkerMessage:
        """``msg``, if the job is still within its message count and byte budget."""
        if not isinstance(msg, Batches):  # Batches have their own rate bound
            self.count += 1
        if self.count > _MAX_MESSAGES:
            raise ProtocolViolation(f"more than {_MAX_MESSAGES} messages from one job")
        if self.channel.received_bytes > self.byte_budget:
            raise ProtocolViolation(f"the worker sent {self.channel.received_bytes:,} bytes, over this "
                                    f"job's budget of {self.byte_budget:,} (its logits and curves, and slack)")
        return msg

    # --------------------------------------------------------------- failures

    def _record_exit(self, status: ExitStatus | None) -> None:
        if status is not None:
            self.result.exit = status

    def _set_failure(self, kind: FailureKind, message: str, stage: Stage, *, force: bool = False) -> None:
        if self.result.failure is None or force:
            self.result.failure = Failure(stage=stage, kind=kind, message=message)

    def _timeout_failure(self) -> None:
        status = self.result.exit
        if status is not None and status.oom_killed:
            self._set_failure(FailureKind.OUT_OF_MEMORY, f"killed at the memory cap ({self.config.memory})", self.stage)
            return
        elapsed = time.monotonic() - self.start
        where = "while training" if self.stage is Stage.TRAIN else "before the model's check finished (import, instantiation or forward pass)"
        self._set_failure(
            FailureKind.TIMEOUT,
            f"no result within the {self.config.timeout_s:g} s limit ({where}, {elapsed:.1f} s after the job was sent); the sandbox was killed",
            self.stage,
        )

    def _exit_failure(self, status: ExitStatus) -> None:
        code = status.exit_code
        if status.oom_killed:
            self._set_failure(FailureKind.OUT_OF_MEMORY, f"killed at the memory cap ({self.config.memory})", self.stage)
        elif code in (-_SIGSEGV, 128 + _SIGSEGV):
            self._set_failure(FailureKind.CRASHED, "the worker died of a segmentation fault (SIGSEGV)", self.stage)
        elif code == 0:
            self._set_failure(
                FailureKind.PROTOCOL_VIOLATION,
                "the worker exited without finishing the job (a message over the "
                f"{self.config.max_message_bytes} byte limit is dropped, and so is a closed channel)",
                self.stage,
            )
        else:
            signal_note = f" (signal {code - 128})" if code > 128 else ""
            detail = f": {status.error}" if status.error else ""
            self._set_failure(FailureKind.CRASHED, f"the worker exited with code {code}{signal_note} mid-job{detail}", self.stage)
