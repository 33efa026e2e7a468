"""`researcher bench` through real Docker: every figure, and nothing left behind, interrupted or not."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from orchestrator.sandbox.docker import LABEL_OWNER, LABEL_ROLE

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BENCH = [sys.executable, "-m", "orchestrator.cli", "bench", "--candidates", "2", "--epochs", "1", "--parallel", "2"]


def _sandboxes(client, pid: int) -> list:
    owner = f"{socket.gethostname()}:{pid}"
    return client.containers.list(all=True, ignore_removed=True, filters={"label": [f"{LABEL_ROLE}=sandbox", f"{LABEL_OWNER}={owner}"]})


def test_bench_json_has_every_figure_and_leaves_no_container(docker_client):
    proc = subprocess.Popen([*BENCH, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    report = json.loads(out)
    for key in ("overhead_ratio", "handoff_ms_p50", "handoff_ms_p95", "candidates_per_min",
                "peak_memory_mb_per_container", "parallel_speedup", "profile"):
        assert report[key] is not None, key
    assert all(m["failures"] == [] for m in report["modes"].values())
    assert report["peak_memory_mb_per_container"] > 50  # read from the container's cgroup
    assert report["profile"]["cold_phase_ms_median"]["imports"] > 100
    assert "direct (no isolation)" in err and "sandboxed warm, parallel 2" in err  # progress as it goes
    assert _sandboxes(docker_client, proc.pid) == []


def test_an_interrupted_bench_removes_its_containers_and_exits_130(docker_client):
    proc = subprocess.Popen(BENCH, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not _sandboxes(docker_client, proc.pid) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert _sandboxes(docker_client, proc.pid), "the bench never started a sandbox"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert _sandboxes(docker_client, proc.pid) == []
