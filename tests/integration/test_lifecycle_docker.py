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
