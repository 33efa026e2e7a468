"""A warm pool of sandboxes: started ahead of need, each used for exactly one job.

Start-up (container + torch import) costs 2.5-3 s of CPU here against a few
seconds of training for a small candidate, so the pool keeps ``size`` slots
(one per ``--parallel`` job) plus ``spare`` started and ``Ready`` while jobs
run: with a spare, a job shorter than a start-up does not leave the next one
waiting for its successor's imports. A slot is never reused: after its job
it is destroyed and a fresh one takes its place. A slot that dies or idles
too long is replaced; repeated start-up failures surface as
``SandboxUnavailable`` to whoever waits for a slot. ``close()`` (or leaving
the ``with`` block, Ctrl-C included) removes every container of the pool.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path

import msgspec

from orchestrator.exceptions import SandboxError, SandboxUnavailable
from orchestrator.sandbox.base import Backend
from orchestrator.sandbox.config import DEFAULT_SPARE, SandboxConfig
from orchestrator.sandbox.runner import Slot

_TICK_S = 0.05
#: A standby slot still starting after this long gets the normal CPU weight (well inside
#: the start-up timeout), so jobs that keep every core busy cannot starve it into a failure.
STANDBY_GRACE_S = 20.0
_MAX_START_FAILURES = 3


class WarmPool:
    """Keeps ``size + spare`` slots started; ``acquire()`` hands one out and starts its successor."""

    def __init__(self, backend: Backend, config: SandboxConfig, *, size: int = 1, spare: int = DEFAULT_SPARE,
                 data_dir: Path | None = None, jobs_root: Path | None = None, gpus: tuple[str, ...] = (),
                 max_idle_s: float = 900.0) -> None:
        if size < 1 or spare < 0:
            raise ValueError("a pool needs at least one slot and no negative spares")
        self.backend, self.config, self.size, self.spare = backend, config, size, spare
        self.data_dir, self.jobs_root, self.max_idle_s = data_dir, jobs_root, max_idle_s
        self.gpus = tuple(gpus) or (config.gpus if config.device == "cuda" else ())
        self._starting: list[Slot] = []
        self._ready: deque[Slot] = deque()
        self._lock = threading.Condition()
        self._closed = False
        self._error: SandboxError | None = None
        self._failures = 0
        self._launched = 0
        self._thread = threading.Thread(target=self._fill_forever, name="warm-pool", daemon=True)

    def __enter__(self) -> WarmPool:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        """Start filling the pool in the background."""
        self._thread.start()

    def acquire(self, timeout_s: float | None = None) -> Slot:
        """A Ready slot (the caller owns and must close it); SandboxUnavailable if none can start."""
        until = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while not self._ready:
                if self._error is not None:
                    raise self._error
                if self._closed:
                    raise SandboxUnavailable("the sandbox pool is closed")
                left = None if until is None else until - time.monotonic()
                if left is not None and left <= 0:
                    raise SandboxUnavailable(f"no sandbox became ready within {timeout_s:g} s")
                self._lock.wait(timeout=0.5 if left is None else min(0.5, left))
            slot = self._ready.popleft()
            self._lock.notify_all()
        if not slot.alive():  # died since the last recycle tick: replace, wait again
            slot.close()
            return self.acquire(None if until is None else max(0.0, until - time.monotonic()))
        slot.prioritise()  # it has a job: the CPU is its own now, not the standby slots' (execute() too)
        return slot

    def close(self) -> None:
        """Stop filling and remove every slot that was not handed out."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        with self._lock:
            slots = list(self._starting) + list(self._ready)
            self._starting.clear()
            self._ready.clear()
        for slot in slots:
            slot.close()

    # ------------------------------------------------------------------ filler

    def _fill_forever(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                missing = self.size + self.spare - len(self._starting) - len(self._ready)
            if missing > 0 and self._error is None:
                self._launch()
            self._promote()
            self._recycle()
            time.sleep(_TICK_S)

    def _slot_config(self) -> SandboxConfig:
        # Slots wait for their job anyway: let them warm up before saying Ready.
        config = msgspec.structs.replace(self.config, warm_up=True)
        if not self.gpus:
            return config
        return msgspec.structs.replace(config, gpu=self.gpus[self._launched % len(self.gpus)])

    def _launch(self) -> None:
        try:
            slot = Slot(self.backend, self._slot_config(), data_dir=self.data_dir, jobs_root=self.jobs_root)
            self._launched += 1
            slot.start()
        except SandboxError as exc:
            self._start_failed(exc, None)
            return
        with self._lock:
            self._starting.append(slot)

    def _promote(self) -> None:
        for slot in list(self._starting):
            try:
                ready = slot.poll_ready(0)
                if not ready and time.monotonic() - slot.started_at > STANDBY_GRACE_S:
                    slot.prioritise()  # starved by busy jobs: its start-up must not time out
                if not ready and time.monotonic() - slot.started_at > self.config.startup_timeout_s:
                    raise SandboxUnavailable(
                        f"a pool sandbox did not report Ready within {self.config.startup_timeout_s:g} s"
                    )
            except SandboxError as exc:
                with self._lock:
                    self._starting.remove(slot)
                self._start_failed(exc, slot)
                continue
            if ready:
                with self._lock:
                    self._starting.remove(slot)
                    self._ready.append(slot)
                    self._failures = 0
                    self._lock.notify_all()

    def _recycle(self) -> None:
        """Replace ready slots that died or idled past ``max_idle_s``."""
        now = time.monotonic()
        with self._lock:
            stale = [s for s in self._ready if not s.alive() or now - s.ready_at > self.max_idle_s]
            for slot in stale:
                self._ready.remove(slot)
        for slot in stale:
            slot.close()

    def _start_failed(self, exc: SandboxError, slot: Slot | None) -> None:
        if slot is not None:
            slot.close()
        with self._lock:
            self._failures += 1
            if self._failures >= _MAX_START_FAILURES or isinstance(exc, SandboxUnavailable) and "protocol" in str(exc):
                self._error = exc if isinstance(exc, SandboxUnavailable) else SandboxUnavailable(str(exc))
                self._lock.notify_all()

    @property
    def stats(self) -> dict[str, int]:
        """Counts for progress displays: ready, starting, launched."""
        with self._lock:
            return {"ready": len(self._ready), "starting": len(self._starting), "launched": self._launched}
