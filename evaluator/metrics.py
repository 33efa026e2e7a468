"""Headline metrics from test logits, computed on the trusted side with torchmetrics.

``score_seeds`` scores every seed against the held-back labels and aggregates
each metric over seeds (mean, std, Student-t 95% interval). ``DIRECTIONS`` is the
one table of which way each metric is better; the planner's ``Target``, the registry
and the reports all read it (``direction``, ``higher_is_better``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal
from dataclasses import dataclass

import msgspec
import numpy as np

from evaluator.stats import interval

#: Which way each scored metric is better: the one table. ``topK_accuracy`` is maximised too,
#: and a name without ``_macro`` (``auroc``, a target's name) is the macro average's.
DIRECTIONS: dict[str, Literal["maximize", "minimize"]] = {
    "accuracy": "maximize",
    "precision_macro": "maximize",
    "recall_macro": "maximize",
    "f1_macro": "maximize",
    "precision_weighted": "maximize",
    "recall_weighted": "maximize",
    "f1_weighted": "maximize",
    "auroc_macro": "maximize",
    "average_precision_macro": "maximize",
    "calibration_error": "minimize",
    "nll": "minimize",
}
CALIBRATION_BINS = 15


def direction(name: str) -> Literal["maximize", "minimize"]:
    """``maximize`` or ``minimize`` for metric ``name`` (top-k accuracies maximise)."""
    return DIRECTIONS.get(name) or DIRECTIONS.get(f"{name}_macro") or "maximize"


def higher_is_better(name: str) -> bool:
    """True unless ``name`` is a lower-is-better metric (calibration error, NLL)."""
    return direction(name) == "maximize"


class MetricSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One scalar metric over seeds: mean, std, 95% interval (None from one seed), per seed."""

    name: str
    higher_is_better: bool
    mean: float
    std: float
    ci95_low: float | None
    ci95_high: float | None
    per_seed: dict[int, float]

    @property
    def spread(self) -> float | None:
        """``std``, or None from one seed, which has no spread (as its interval is None); a
        stored 0.0 there would read as a perfectly steady model."""
        return self.std if len(self.per_seed) > 1 else None


class ClassRow(msgspec.Struct, frozen=True, kw_only=True):
    """Per-class precision, recall and F1, averaged over seeds, with the class's test support."""

    name: str
    support: int
    precision: float
    recall: float
    f1: float


class Scores(msgspec.Struct, frozen=True, kw_only=True):
    """Every headline metric of one candidate over its seeds (plain JSON when encoded)."""

    seeds: tuple[int, ...]
    n_test: int
    class_names: tuple[str, ...]
    top_k: int | None
    metrics: dict[str, MetricSummary]
    per_class: tuple[ClassRow, ...]
    confusion: tuple[tuple[int, ...], ...]  # summed over seeds: rows true, columns predicted

    def confusion_mean(self) -> np.ndarray:
        """Confusion matrix of one test pass: the sum over seeds divided by their number."""
        return np.asarray(self.confusion, dtype=np.float64) / len(self.seeds)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class SeedScores:
    """Metrics of one seed: scalars, per-class arrays and the confusion matrix."""

    scalars: dict[str, float]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    confusion: np.ndarray


def default_top_k(num_classes: int) -> int | None:
    """k for top-k accuracy: 5 above 10 classes, 3 above 3 classes, else none."""
    if num_classes > 10:
        return 5
    return 3 if num_classes > 3 else None


def score_logits(logits: np.ndarray, y: np.ndarray, num_classes: int, top_k: int | None) -> SeedScores:
    """Every metric of one seed's test logits (n, C) against labels (n,)."""
    import torch
    import torchmetrics.functional.classification as tmf

    preds, target = torch.from_numpy(np.asarray(logits, dtype=np.float32)), torch.from_numpy(y)
    probs = preds.double().softmax(dim=1)
    kw = {"num_classes": num_classes}
    scalars = {"accuracy": tmf.multiclass_accuracy(preds, target, average="micro", **kw)}
    if top_k is not None:
        scalars[f"top{top_k}_accuracy"] = tmf.multiclass_accuracy(
            preds, target, average="micro", top_k=top_k, **kw
        )
    for avg in ("macro", "weighted"):
        scalars[f"precision_{avg}"] = tmf.multiclass_precision(preds, target, average=avg, **kw)
        scalars[f"recall_{avg}"] = tmf.multiclass_recall(preds, target, average=avg, **kw)
        scalars[f"f1_{avg}"] = tmf.multiclass_f1_score(preds, target, average=avg, **kw)
    scalars["auroc_macro"] = _present_mean(tmf.multiclass_auroc, probs, target, kw)
    scalars["average_precision_macro"] = _present_mean(tmf.multiclass_average_precision, probs, target, kw)
    scalars["calibration_error"] = tmf.multiclass_calibration_error(
        probs.float(), target, n_bins=CALIBRATION_BINS, norm="l1", **kw
    )
    scalars["nll"] = torch.nn.functional.cross_entropy(preds.double(), target)
    return SeedScores(
        scalars={k: float(v) for k, v in scalars.items()},
        precision=tmf.multiclass_precision(preds, target, average="none", **kw).numpy(),
        recall=tmf.multiclass_recall(preds, target, average="none", **kw).numpy(),
        f1=tmf.multiclass_f1_score(preds, target, average="none", **kw).numpy(),
        confusion=tmf.multiclass_confusion_matrix(preds, target, **kw).numpy().astype(np.int64),
    )


def _present_mean(fn, probs, target, kw) -> float:  # type: ignore[no-untyped-def]
    """Macro average over the classes present in ``target`` (one-vs-rest is undefined otherwise)."""
    import torch

    with warnings.catch_warnings():
        # torchmetrics warns for classes absent from a small test set; they are dropped below.
        warnings.simplefilter("ignore", UserWarning)
        per_class = fn(probs, target, average="none", thresholds=None, **kw)
    present = torch.bincount(target, minlength=kw["num_classes"]) > 0
    return float(per_class[present].mean())


def score_seeds(
    logits_per_seed: Mapping[int, np.ndarray], y: np.ndarray, class_names: Sequence[str]
) -> Scores:
    """Score each seed's test logits against ``y`` and aggregate every metric over seeds."""
    if not logits_per_seed:
        raise ValueError("score_seeds needs the logits of at least one seed")
    y = np.asarray(y, dtype=np.int64)
    num_classes, top_k = len(class_names), default_top_k(len(class_names))
    for seed, logits in logits_per_seed.items():
        if logits.shape != (len(y), num_classes):
            raise ValueError(f"seed {seed}: logits {logits.shape} != {(len(y), num_classes)}")
    seeds = tuple(sorted(logits_per_seed))
    per_seed = {s: score_logits(logits_per_seed[s], y, num_classes, top_k) for s in seeds}
    metrics = {
        name: _summary(name, {s: per_seed[s].scalars[name] for s in seeds})
        for name in per_seed[seeds[0]].scalars
    }
    rows = _class_rows(list(per_seed.values()), y, class_names)
    confusion = sum((per_seed[s].confusion for s in seeds), np.zeros((num_classes,) * 2, np.int64))
    return Scores(
        seeds=seeds, n_test=len(y), class_names=tuple(map(str, class_names)), top_k=top_k,
        metrics=metrics, per_class=rows, confusion=tuple(tuple(int(v) for v in r) for r in confusion),
    )  # fmt: skip


def _class_rows(seeds: list[SeedScores], y: np.ndarray, class_names: Sequence[str]) -> tuple[ClassRow, ...]:
    """Per-class precision, recall and F1 averaged over seeds, with test support."""
    support = np.bincount(y, minlength=len(class_names))
    return tuple(
        ClassRow(
            name=str(class_names[c]),
            support=int(support[c]),
            precision=float(np.mean([s.precision[c] for s in seeds])),
            recall=float(np.mean([s.recall[c] for s in seeds])),
            f1=float(np.mean([s.f1[c] for s in seeds])),
        )
        for c in range(len(class_names))
    )


def _summary(name: str, values: dict[int, float]) -> MetricSummary:
    ci = interval(list(values.values()))
    # A t interval can leave the metric's range (accuracy 1.002); clip it to what is possible.
    upper = math.inf if name == "nll" else 1.0
    low = None if ci.low is None else min(max(ci.low, 0.0), upper)
    high = None if ci.high is None else min(max(ci.high, 0.0), upper)
    return MetricSummary(
        name=name, higher_is_better=higher_is_better(name), mean=ci.mean, std=ci.std,
        ci95_low=low, ci95_high=high, per_seed=dict(values),
    )  # fmt: skip
