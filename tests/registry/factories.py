"""Realistic records for registry and report tests: real Scores from random logits."""

from __future__ import annotations

import functools

import numpy as np

from evaluator.dynamics import analyse
from evaluator.metrics import Scores, score_seeds
from orchestrator.llm.records import ChatMessage, FormatMode, LLMCall
from orchestrator.planning.types import Conv2d, Linear, ModelConfig, Proposal, ReLU, Target
from orchestrator.registry import Registry, RunSettings
from sandbox_image.protocol import CheckReport, EpochStats, Failure, FailureKind, Stage, TrainSpec

CLASS_NAMES = tuple(str(i) for i in range(10))
SEEDS = (0, 1, 2)
N_TEST = 200


def settings(**kw: object) -> RunSettings:
    """Settings of a digits run aiming at 90% accuracy."""
    base = {"goal": "digits classifier with at least 90% accuracy", "dataset": "digits",
            "target": Target(metric="accuracy", threshold=0.9), "seeds": SEEDS,
            "max_candidates": 5}
    base.update(kw)
    return RunSettings(**base)  # type: ignore[arg-type]


def proposal(width: int = 16, rationale: str = "a small CNN to start from") -> Proposal:
    """A layer-config proposal."""
    config = ModelConfig(layers=(Conv2d(out_channels=width), ReLU(), Linear(out_features=32)))
    return Proposal(config=config, train=TrainSpec(epochs=4, seeds=SEEDS), rationale=rationale,
                    ref=f"test:{width}", params={"width": width, "lr": 1e-3})


@functools.lru_cache(maxsize=None)
def scores(skill: float, seed: int = 0) -> Scores:
    """Real scores of random logits pushed towards the labels by ``skill`` (higher = better)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASS_NAMES), N_TEST)
    logits = {}
    for s in SEEDS:
        noise = rng.normal(size=(N_TEST, len(CLASS_NAMES))).astype(np.float32)
        noise[np.arange(N_TEST), y] += skill
        logits[s] = noise
    return score_seeds(logits, y, CLASS_NAMES)


def curves(epochs: int = 4) -> dict[int, tuple[EpochStats, ...]]:
    """Per-seed learning curves that improve a little each epoch."""
    return {s: tuple(EpochStats(epoch=e, train_loss=1.5 / e, train_acc=0.6 + 0.08 * e + 0.01 * s,
                                val_loss=1.6 / e + 0.01 * s, val_acc=0.55 + 0.08 * e, seconds=0.5)
                     for e in range(1, epochs + 1)) for s in SEEDS}


def check(params: int = 12345) -> CheckReport:
    """A check report (forward FLOPs per example: 2 per parameter, as for a linear model)."""
    return CheckReport(params=params, trainable_params=params, output_shape=(2, 10),
                       forward_seconds=0.01, flops=2 * params)


def failure(kind: FailureKind = FailureKind.SHAPE_MISMATCH, message: str = "bad shape") -> Failure:
    """A failure."""
    return Failure(stage=Stage.FORWARD, kind=kind, message=message, traceback="Traceback ...")


def llm_call(error: str = "") -> LLMCall:
    """One recorded LLM attempt."""
    return LLMCall(time=1.0, model="smollm2", attempt=1, status=500 if error else 200,
                   response_format=FormatMode.JSON_SCHEMA,
                   messages=(ChatMessage("system", "you design models"),
                             ChatMessage("user", "propose <b>one</b>")),
                   response="" if error else '{"layers": []}', latency_s=0.25,
                   prompt_tokens=120, completion_tokens=40, error=error, purpose="propose")


SOURCE = "import torch\nfrom torch import nn\n\nclass Net(nn.Module):\n    pass\n"


def add_passed(registry: Registry, skill: float, width: int = 16, seed: int = 0,
               source: str = SOURCE, proposed: Proposal | None = None) -> str:
    """Add, run and pass a candidate (``proposed``, else a CNN of ``width``); return its id."""
    cid = registry.add_candidate(proposed or proposal(width), source)
    registry.mark_running(cid)
    c = curves()
    registry.finish_candidate(cid, check=check(1000 * width), scores=scores(skill, seed),
                              selection=scores(skill, seed + 1000), seconds=2.5, curves=c,
                              dynamics=analyse(c, kept={s: len(curve) for s, curve in c.items()}))  # the last is best
    return cid


def add_failed(registry: Registry, kind: FailureKind = FailureKind.SHAPE_MISMATCH,
               message: str = "bad shape") -> str:
    """Add, run and fail a candidate; return its id."""
    cid = registry.add_candidate(proposal(8, rationale="too ambitious"), SOURCE)
    registry.mark_running(cid)
    registry.finish_candidate(cid, failure=failure(kind, message), seconds=0.3)
    return cid
