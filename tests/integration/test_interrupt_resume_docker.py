"""Ctrl-C in the middle of a run loses nothing, leaves no container, and `resume` finishes it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from orchestrator.registry import Registry
from orchestrator.sandbox.docker import LABEL_OWNER, LABEL_ROLE

pytestmark = pytest.mark.docker


def test_interrupt_mid_run_then_resume(docker_client, tmp_path):
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", "--dataset", "iris", "--max-candidates", "3",
           "--seeds", "2", "--cpus", "1", "--runs-dir", str(tmp_path), "--name", "r"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = tmp_path / "r" / "run.json"  # written once the registry's schema and run row are in
    deadline = time.monotonic() + 120
    started = False
    while time.monotonic() < deadline and not started:
        time.sleep(0.3)
        if ready.exists():
            with Registry.open(tmp_path / "r", readonly=True) as registry:
                started = any(c.status == "running" for c in registry.candidates())
    assert started, "no candidate started"
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "researcher resume" in out
    owner = f"{__import__('socket').gethostname()}:{proc.pid}"
    assert docker_client.containers.list(all=True, ignore_removed=True, filters={"label": [f"{LABEL_ROLE}=sandbox", f"{LABEL_OWNER}={owner}"]}) == []
    with Registry.open(tmp_path / "r", readonly=True) as registry:
        assert registry.run_info().status == "interrupted"
        before = registry.candidates()

    resumed = subprocess.run([sys.executable, "-m", "orchestrator.cli", "resume", str(tmp_path / "r")],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    with Registry.open(tmp_path / "r", readonly=True) as registry:
        after = registry.candidates()
        assert registry.run_info().status == "finished"
    # everything recorded before the interrupt is still there, unchanged where it had finished
    for old in before:
        new = next(c for c in after if c.id == old.id)
        if old.status in ("passed", "failed"):
            assert (new.status, new.mean) == (old.status, old.mean)
    counted = [c for c in after if not (c.failure and c.failure.message.startswith("interrupted"))]
    assert len(counted) == 3


def test_a_run_made_before_the_settings_were_typed_resumes(docker_client, tmp_path):
    """The run.json and registry of the untyped-settings version (tests/registry/fixtures/old-run) resume."""
    import shutil
    from pathlib import Path

    run = tmp_path / "old"
    shutil.copytree(Path(__file__).parents[1] / "registry" / "fixtures" / "old-run", run)
    resumed = subprocess.run([sys.executable, "-m", "orchestrator.cli", "resume", str(run)],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    with Registry.open(run, readonly=True) as registry:
        assert registry.run_info().status == "finished"
        assert [c.status for c in registry.candidates()] == ["passed"]
        assert registry.settings.sandbox.timeout_s == 900.0  # the old run's, not SandboxConfig's default
