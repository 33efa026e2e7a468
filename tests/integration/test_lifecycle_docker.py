"""Nothing is left behind: orphans are reaped on start, SIGTERM and Ctrl-C remove sandboxes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.sandbox.docker import LABEL_OWNER, LABEL_ROLE, DockerBackend

MODELS = Path(__file__).resolve().parents[1] / "models"
pytestmark = pytest.mark.docker


def _sandboxes(client, owner: str) -> list:
    return client.containers.list(all=True, ignore_removed=True, filters={"label": [f"{LABEL_ROLE}=sandbox", f"{LABEL_OWNER}={owner}"]})


def test_orphans_of_a_dead_orchestrator_are_removed_on_start(docker_client):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = f"{socket.gethostname()}:{int(dead.stdout)}"  # a pid that has exited
    orphan = docker_client.containers.create("pytorch-researcher-sandbox:latest", command=["/nonexistent"],
                                             labels={LABEL_ROLE: "sandbox", LABEL_OWNER: owner}, network_mode="none")
    try:
        DockerBackend(docker_client)  # reaps on start
        assert _sandboxes(docker_client, owner) == []
    finally:
        try:
            orphan.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone is the expected case
            pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_job_removes_the_sandbox_and_exits_130(docker_client, sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "check", str(MODELS / "sleep_import.py"),
         "--input-shape", "1,8,8", "--num-classes", "10", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    import socket

    owner = f"{socket.gethostname()}:{proc.pid}"
    deadline = time.monotonic() + 90
    while not _sandboxes(docker_client, owner) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sandboxes(docker_client, owner), "the sandbox never started"
    time.sleep(1.0)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert _sandboxes(docker_client, owner) == []


def test_a_standby_pool_container_waits_at_a_low_cpu_weight_and_its_job_runs_at_the_default(docker_backend):
    """Standby start-up takes only idle CPU: a training job's OpenMP threads keep their cores."""
    from orchestrator.sandbox.config import JOB_CPU_SHARES, STANDBY_CPU_SHARES, SandboxConfig
    from orchestrator.sandbox.pool import WarmPool
    from orchestrator.sandbox.runner import execute, new_job_id
    from sandbox_image.protocol import Job

    def shares(slot) -> int:
        slot.sandbox._container.reload()
        return slot.sandbox._container.attrs["HostConfig"]["CpuShares"]

    with WarmPool(docker_backend, SandboxConfig(timeout_s=60), size=1, spare=0) as pool:
        deadline = time.monotonic() + 120
        while pool.stats["ready"] < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        with pool._lock:
            standby = pool._ready[0]
        assert shares(standby) == STANDBY_CPU_SHARES
        with pool.acquire(timeout_s=120) as slot:
            assert slot is standby and shares(slot) == JOB_CPU_SHARES
            job = Job(job_id=new_job_id(), source=(MODELS / "good_mlp.py").read_text(), class_name="Net",
                      input_shape=(1, 8, 8), num_classes=10)
            assert execute(slot, job).status == "passed"
