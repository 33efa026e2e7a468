"""Helpers of the real-cluster tests: `researcher` as a subprocess, the registry it leaves."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from orchestrator.registry import Registry

RESEARCHER = [sys.executable, "-m", "orchestrator.cli"]
HOSTILE = Path(__file__).resolve().parents[1] / "models" / "hostile"
RUN = ["run", "--dataset", "wine", "--goal", "wine classifier with at least 99.9% accuracy", "--seeds", "1",
       "--cpus", "1", "--time-budget", "900"]


#: A small CNN for digits that trains about 13 s for 3 seeds on 2 cores: what the scripted LLM proposes
SMALL_CNN = {
    "rationale": "two conv stages then global pooling",
    "config": {"layers": [{"type": "conv2d", "out_channels": 16}, {"type": "relu"}, {"type": "maxpool"},
                          {"type": "conv2d", "out_channels": 32}, {"type": "relu"}, {"type": "globalavgpool"}]},
    "train": {"epochs": 40, "batch_size": 32, "lr": 0.002, "optimizer": "adam"},
}


@contextlib.contextmanager
def scripted_llm(replies: int = 12) -> Iterator[list[str]]:
    """`run` arguments for a scripted LLM that proposes ``SMALL_CNN`` every time, up while the block runs.

    For the fault tests, whose subject is the cluster, not the search: the offline search's start
    designs (a 64-128-256 ResNet, 40 epochs) and a final training of 40% of the time budget took
    most of their minutes.
    """
    from tests.fakes.fake_llm_server import FakeLLMServer, Reply

    with FakeLLMServer([Reply.json(SMALL_CNN)] * replies) as server:
        yield ["--llm-base-url", server.base_url, "--llm-model", "scripted"]


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


