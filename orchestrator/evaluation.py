"""Trusted evaluation services: prepare a dataset on the host and score a training job's logits.

The check command, the research loop and the benchmark share these; the test
labels never leave the trusted side. Evaluator imports are deferred (numpy,
torch, torchmetrics), so importing this module stays cheap.
"""

from __future__ import annotations

from typing import Any

from orchestrator.sandbox.runner import JobResult


def load_prepared(dataset: str | None, data_dir: str | None, *, seed: int = 0):
    """Load and split a dataset on the trusted side (test labels stay here)."""
    from evaluator.datasets import DEFAULT_DATASET, load_dataset
    from evaluator.prepare import prepare

    return prepare(load_dataset(dataset or DEFAULT_DATASET, data_dir), seed=seed)


def score_result(result: JobResult, prepared) -> tuple[Any, Any, Any]:
    """Test scores, selection scores (both over seeds) and learning dynamics of a finished training job.

    The worker predicted the evaluation array (selection and test inputs, shuffled);
    its logits are split back here, where both label sets are.
    """
    from evaluator.dynamics import analyse
    from evaluator.metrics import score_seeds

    names = prepared.raw.class_names
    split = {seed: prepared.split_eval(logits) for seed, logits in result.logits.items()}
    test = score_seeds({seed: t for seed, (_, t) in split.items()}, prepared.test_y, names)
    selection = score_seeds({seed: s for seed, (s, _) in split.items()}, prepared.select_y, names)
    curves = {p.seed: list(p.curves) for p in result.predictions}
    return test, selection, analyse(curves, kept={p.seed: p.best_epoch for p in result.predictions})
