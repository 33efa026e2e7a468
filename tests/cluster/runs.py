"""Helpers of the real-cluster tests: `researcher` as a subprocess, the registry it leaves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from orchestrator.registry import Registry

RESEARCHER = [sys.executable, "-m", "orchestrator.cli"]
HOSTILE = Path(__file__).resolve().parents[1] / "models" / "hostile"
RUN = ["run", "--dataset", "wine", "--goal", "wine classifier with at least 99.9% accuracy", "--seeds", "1",
       "--cpus", "1", "--time-budget", "900"]


def _researcher(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(RESEARCHER + args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def _records(run_dir: Path):
    with Registry.open(run_dir, readonly=True) as registry:
        return registry.candidates(), registry.events(), registry.run_info()


def _only_run(root: Path) -> Path:
    (run,) = [p for p in (root / "runs").iterdir() if p.is_dir()]
    return run


def _sandboxes() -> list[str]:
    import docker

    client = docker.from_env()
    try:
        return [c.name for c in client.containers.list(all=True, ignore_removed=True,
                                                          filters={"label": "org.pytorch-researcher.role=sandbox"})]
    finally:
        client.close()


