"""The warm pool: ready ahead of need, one job per slot, replaced, drained."""

import time
from pathlib import Path

import pytest

from orchestrator.exceptions import SandboxUnavailable
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.local import SubprocessBackend
from tests.fakes.backends import CountingBackend
from orchestrator.sandbox.pool import WarmPool
from orchestrator.sandbox.runner import execute, new_job_id
from sandbox_image.protocol import Job

SOURCE = (Path(__file__).resolve().parents[1] / "models" / "good_mlp.py").read_text()


def _job() -> Job:
    return Job(job_id=new_job_id(), source=SOURCE, class_name="Net", input_shape=(1, 8, 8), num_classes=10)


def test_slots_are_ready_before_they_are_asked_for_and_never_reused():
    backend = CountingBackend()
    with WarmPool(backend, SandboxConfig(timeout_s=30), size=1) as pool:
        first = pool.acquire(timeout_s=60)
        with first:
            result = execute(first, _job())
        assert result.status == "passed"
        second = pool.acquire(timeout_s=60)
        assert second is not first and second.ready is not None
        start = time.monotonic()
        with second:
            result = execute(second, _job())
        assert result.status == "passed"
        assert result.handoff_seconds < 2.0  # no start-up in the job's path
        assert time.monotonic() - start < 10
    assert all(s.exit_status() is not None for s in backend.created)  # drained: nothing left running


def test_a_slot_that_dies_while_idle_is_replaced():
    backend = CountingBackend()
    with WarmPool(backend, SandboxConfig(timeout_s=30), size=1) as pool:
        deadline = time.monotonic() + 60
        while pool.stats["ready"] < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        backend.created[0].kill()
        backend.created[0].wait_exit(5)
        slot = pool.acquire(timeout_s=60)
        assert slot.sandbox is not backend.created[0]
        with slot:
            assert execute(slot, _job()).status == "passed"
        assert len(backend.created) >= 2


def test_repeated_start_failures_reach_the_caller():
    class Broken(SubprocessBackend):
        def create(self, *args):
            sandbox = super().create(*args)
            sandbox.mounts = type(sandbox.mounts)(socket_path="/nonexistent/worker.sock", data_root=None)
            sandbox.start = lambda: None  # nothing ever starts
            sandbox.exit_status = lambda: __import__("orchestrator.sandbox.base", fromlist=["ExitStatus"]).ExitStatus(exit_code=1)
            return sandbox

    with WarmPool(Broken(), SandboxConfig(timeout_s=30), size=1) as pool:
        with pytest.raises(SandboxUnavailable, match="exited with code 1 before it was ready"):
            pool.acquire(timeout_s=30)


@pytest.mark.parametrize("spare", [0, 1])
def test_the_pool_keeps_size_plus_spare_slots_ready(spare):
    backend = CountingBackend()
    with WarmPool(backend, SandboxConfig(timeout_s=30), size=1, spare=spare) as pool:
        deadline = time.monotonic() + 90
        while pool.stats["ready"] < 1 + spare and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # a few filler ticks: no slot beyond size + spare is started
        assert pool.stats == {"ready": 1 + spare, "starting": 0, "launched": 1 + spare}
        with pool.acquire(timeout_s=60) as slot:
            assert execute(slot, _job()).status == "passed"
        # the spent slot is replaced on a filler tick: wait for it before closing the pool (a busy
        # CI host can run the job and reach close() before that tick)
        deadline = time.monotonic() + 30
        while len(backend.created) < 2 + spare and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(backend.created) >= 2 + spare  # the spent slot was replaced
    assert all(s.exit_status() is not None for s in backend.created)


def _nice_of_every_thread(pid: int) -> set[int]:
    import os

    return {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_a_standby_slot_runs_niced_until_it_gets_a_job():
    """Standby start-up must not take cores from a training job (OpenMP stalls at every barrier)."""
    import os

    backend = CountingBackend()
    with WarmPool(backend, SandboxConfig(timeout_s=30), size=1, spare=0) as pool:
        slot = pool.acquire(timeout_s=60)
        with slot:
            waiting = backend.created[0]._proc.pid
            assert slot.sandbox._proc.pid == waiting
            # acquire() gave it the normal priority; only root may lower a nice value again
            assert _nice_of_every_thread(waiting) == ({0} if os.geteuid() == 0 else {19})
            deadline = time.monotonic() + 60
            while pool.stats["ready"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            successor = backend.created[1]._proc.pid
            assert _nice_of_every_thread(successor) == {19}  # standby, threads included
            autogroup = Path(f"/proc/{successor}/autogroup")  # its own session's weight, where the kernel has them
            assert not autogroup.exists() or autogroup.read_text().split()[-1] == "19"
            assert execute(slot, _job()).status == "passed"
