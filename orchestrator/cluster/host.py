"""The sandbox host: one Ray actor per node, owning that node's Docker client and warm pool.

It runs on trusted infrastructure (a Ray node) and does for the orchestrator what the
local path does in-process: make hardened containers on its own Docker engine, bind
each job's ZeroMQ socket in a node-local job directory, and keep ``Ready`` slots
warm. It does *not* speak the job protocol: it forwards the orchestrator's encoded
``Job`` to a slot and hands back the worker's frames undecoded (each capped at the
socket by ``zmq.MAXMSGSIZE``). The orchestrator decodes, bounds, validates and scores
them itself, exactly as it does for a local slot; selection and test labels never
reach a node. Nothing here imports ray: ``orchestrator.cluster.pool`` wraps the class
with ``ray.remote`` (a threaded actor, so a blocking ``recv`` never holds up a
``kill``), which keeps this module testable without a cluster.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import msgspec

from orchestrator.exceptions import SandboxError
from orchestrator.sandbox.base import Backend, ExitStatus
from orchestrator.sandbox.config import DEFAULT_SPARE, SandboxConfig
from orchestrator.sandbox.runner import Slot, make_private_dir
from sandbox_image.protocol import Batches, Progress, encoder, worker_decoder

#: Most frames one ``recv`` call hands back (each at most the config's message cap).
MAX_FRAMES_PER_CALL = 64
#: Data file names a host accepts from the orchestrator (the sandbox data dir is flat).
_DATA_NAME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def _status(status: ExitStatus | None) -> tuple[int, bool, str] | None:
    return None if status is None else (status.exit_code, status.oom_killed, status.error)


class SandboxHost:
    """Sandboxes of one node for one run; every method is safe to call from several threads."""

    def __init__(self, config: SandboxConfig, *, slots: int, gpus: tuple[str, ...] | None = (),
                 backend: Backend | None = None) -> None:
        if slots < 1:
            raise ValueError("a sandbox host needs at least one slot")
        if gpus is None:  # the GPUs Ray gave this actor (its num_gpus): the sandboxes' GPUs
            import ray

            gpus = tuple(str(g) for g in ray.get_gpu_ids())
        # The orchestrator's jobs dir is a path on its own machine: each node uses its own default.
        self.config = msgspec.structs.replace(config, jobs_dir=None, gpus=tuple(gpus))
        self.slots, self.gpus = slots, tuple(gpus)
        self._backend = backend
        self._pool = None
        self._data_dir: Path | None = None
        self._scratch: Path | None = None
        self._live: dict[str, Slot] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._encoder = encoder()
        self._decoder = worker_decoder()

    # ------------------------------------------------------------------ set-up

    def stage(self, files: dict[str, bytes]) -> str:
        """Write the run's sandbox data (train/val with labels, evaluation inputs) to a node-local
        private directory and start the warm pool over it; returns the directory.

        ``files`` maps the flat ``.npy`` names of ``PreparedData.write_sandbox_dir`` to their bytes.
        """
        from orchestrator.sandbox.docker import DockerBackend
        from orchestrator.sandbox.pool import WarmPool

        with self._lock:
            if self._pool is not None:
                raise RuntimeError("this host already has the run's data")
            if self._closed:
                raise RuntimeError("this host is closed")
            self._scratch = make_private_dir(Path(self.config.jobs_root), "researcher-data-")
            data = self._scratch / "data"
            data.mkdir()
            for name, blob in files.items():
                if not name or set(name) - _DATA_NAME or name.startswith("."):
                    raise ValueError(f"refused data file name {name!r}")
                (data / name).write_bytes(blob)
                (data / name).chmod(0o644)
            data.chmod(0o755)  # uid 65534 in the container lists and reads it (read-only mount)
            self._scratch.chmod(0o711)
            self._data_dir = data
            if self._backend is None:
                self._backend = DockerBackend()
            self._pool = WarmPool(self._backend, self.config, size=self.slots, spare=DEFAULT_SPARE,
                                  data_dir=data, gpus=self.gpus)
            self._pool.start()
        return str(data)

    # ------------------------------------------------------------------ slots

    def acquire(self, timeout_s: float) -> dict:
        """A Ready slot of this node's pool: its id, the encoded Ready, start-up seconds and mounts.

        ``{"error": ...}`` instead when no sandbox can start here (no image, no engine).
        """
        pool = self._pool
        if pool is None:
            return {"error": "this host has no data yet (stage() first)"}
        try:
            slot = pool.acquire(timeout_s)
        except SandboxError as exc:
            return {"error": str(exc)[:2000]}
        with self._lock:
            self._live[slot.id] = slot
        return {
            "slot": slot.id, "ready": self._encoder.encode(slot.ready),
            "startup_s": slot.ready_at - slot.started_at,
            "socket_path": slot.sandbox.mounts.socket_path, "data_root": slot.sandbox.mounts.data_root,
        }

    def _slot(self, slot_id: str) -> Slot | None:
        with self._lock:
            return self._live.get(slot_id)

    def send(self, slot_id: str, frame: bytes) -> None:
        """Forward the orchestrator's encoded Job to the slot's worker."""
        slot = self._slot(slot_id)
        if slot is None:
            raise KeyError(f"no slot {slot_id} on this host")
        slot.prioritise()
        slot.channel.send_raw(frame)

    def recv(self, slot_id: str, timeout_s: float, linger_s: float = 0.0
             ) -> tuple[list[bytes], tuple[int, bool, str] | None, int]:
        """The worker's frames (waits up to ``timeout_s`` for the first, then up to ``linger_s`` more
        while they are Progress or Batches), the sandbox's exit status once it has ended,
        and the bytes received in total.

        Lingering batches a job's per-epoch Progress into few calls: each call through Ray
        Client costs about 25 ms of CPU here. Any other message returns at once.
        """
        slot = self._slot(slot_id)
        if slot is None:
            return [], (-1, False, "the slot is gone from its host"), 0
        frames: list[bytes] = []
        frame = slot.channel.recv_raw(timeout_s)
        until = time.monotonic() + linger_s
        while frame is not None:
            frames.append(bytes(frame))
            if len(frames) >= MAX_FRAMES_PER_CALL or self._ends_batch(frame):
                break
            frame = slot.channel.recv_raw(max(0.0, until - time.monotonic()))
        status = slot.sandbox.exit_status()
        if status is not None and not frames:
            frame = slot.channel.recv_raw(0.2)  # a last frame may still be in flight
            if frame is not None:
                frames.append(bytes(frame))
                status = None  # the caller asks again and learns the status then
        return frames, _status(status), slot.channel.received_bytes

    def _ends_batch(self, frame) -> bool:
        """False only for a Progress or Batches: any other message (the check report, predictions,
        Done, a Failure, anything undecodable) goes to the orchestrator at once.

        A hint for batching only: the orchestrator decodes and bounds every frame itself.
        """
        try:
            return not isinstance(self._decoder.decode(frame), (Progress, Batches))
        except msgspec.DecodeError:
            return True

    def bye(self, slot_id: str) -> None:
        """Tell the worker its last message was read."""
        slot = self._slot(slot_id)
        if slot is not None:
            slot.channel.bye()

    def exit_status(self, slot_id: str) -> tuple[int, bool, str] | None:
        """The slot's exit status, None while it runs."""
        slot = self._slot(slot_id)
        return (-1, False, "the slot is gone from its host") if slot is None else _status(slot.sandbox.exit_status())

    def wait_exit(self, slot_id: str, timeout_s: float) -> tuple[int, bool, str] | None:
        """Wait up to ``timeout_s`` for the slot to end; its status or None."""
        slot = self._slot(slot_id)
        if slot is None:
            return (-1, False, "the slot is gone from its host")
        return _status(slot.sandbox.wait_exit(timeout_s))

    def kill(self, slot_id: str) -> None:
        """Kill the slot's sandbox now."""
        slot = self._slot(slot_id)
        if slot is not None:
            slot.sandbox.kill()

    def logs(self, slot_id: str, tail: int) -> str:
        """The slot's last output lines (the worker's; for error messages)."""
        slot = self._slot(slot_id)
        return "" if slot is None else slot.sandbox.logs(tail)

    def peak_memory(self, slot_id: str) -> int | None:
        """The slot's peak memory where the backend can tell."""
        slot = self._slot(slot_id)
        peak = getattr(slot.sandbox, "peak_memory", None) if slot is not None else None
        return peak() if peak is not None else None

    def release(self, slot_id: str) -> None:
        """Remove the slot's sandbox, socket and job dir."""
        with self._lock:
            slot = self._live.pop(slot_id, None)
        if slot is not None:
            slot.close()

    # ------------------------------------------------------------------ teardown

    def busy(self) -> int:
        """Slots handed out and not yet released."""
        with self._lock:
            return len(self._live)

    def shutdown(self) -> int:
        """Kill and remove every sandbox of this host, then its data; returns how many were live."""
        with self._lock:
            self._closed = True
            slots = list(self._live.values())
            self._live.clear()
            pool, self._pool = self._pool, None
        for slot in slots:
            slot.sandbox.kill()
        if pool is not None:
            pool.close()
        for slot in slots:
            slot.close()
        if self._backend is not None:
            self._backend.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        return len(slots)
