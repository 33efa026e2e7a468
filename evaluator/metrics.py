"""Headline metrics from test logits, computed on the trusted side with torchmetrics.

``validate_logits`` turns a hostile ``Predictions`` buffer into a checked array;
``score_seeds`` scores every seed against the held-back labels and aggregates
each metric over seeds (mean, std, Student-t 95% interval). ``Metric`` is a value
that knows its direction: ``a > b`` means "a is better", and a failed run is worse
than any real value.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from evaluator.stats import interval
from orchestrator.exceptions import ProtocolViolation
from sandbox_image.protocol import ALLOWED_DTYPES

#: Metrics where a lower value is better; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"calibration_error", "nll"})
CALIBRATION_BINS = 15


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class Metric:
    """A metric value with its direction; ``value=None`` is a failed run (the worst value)."""

    name: str
    value: float | None
    higher_is_better: bool = True

    @classmethod
    def failed(cls, name: str = "accuracy") -> Metric:
        """The stand-in for a candidate that produced no score."""
        return cls(name=name, value=None, higher_is_better=name not in LOWER_IS_BETTER)

    @property
    def is_failed(self) -> bool:
        """Whether this is a failed run's stand-in."""
        return self.value is None

    def _comparable(self, other: Metric) -> None:
        if (other.name, other.higher_is_better) != (self.name, self.higher_is_better):
            raise TypeError(f"cannot compare metric {self.name!r} with {other.name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Metric):
            return NotImplemented
        self._comparable(other)
        return _goodness(self) == _goodness(other)

    def __lt__(self, other: object) -> bool:
        """``a < b``: a is worse than b."""
        if not isinstance(other, Metric):
            return NotImplemented
        self._comparable(other)
        return _goodness(self) < _goodness(other)

    def __hash__(self) -> int:
        return hash((self.name, self.higher_is_better, _goodness(self)))

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form."""
        return {"name": self.name, "value": self.value, "higher_is_better": self.higher_is_better}


def _goodness(m: Metric) -> float:
    if m.value is None or math.isnan(m.value):
        return -math.inf
    return m.value if m.higher_is_better else -m.value


class MetricSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One scalar metric over seeds: mean, std, 95% interval (None from one seed), per seed."""

    name: str
    higher_is_better: bool
    mean: float
    std: float
    ci95_low: float | None
    ci95_high: float | None
    per_seed: dict[int, float]

    def metric(self) -> Metric:
        """The mean as a direction-aware ``Metric``."""
        return Metric(self.name, self.mean, self.higher_is_better)


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

    def metric(self, name: str = "accuracy") -> Metric:
        """The mean of ``name`` over seeds as a ``Metric``."""
        if name not in self.metrics:
            raise KeyError(f"no metric {name!r}; have {sorted(self.metrics)}")
        return self.metrics[name].metric()

    def confusion_mean(self) -> np.ndarray:
        """Confusion matrix of one test pass: the sum over seeds divided by their number."""
        return np.asarray(self.confusion, dtype=np.float64) / len(self.seeds)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ validation


def validate_logits(
    buf: bytes, dtype: str, shape: Sequence[int], n_test: int, num_classes: int
) -> np.ndarray:
    """Decode a worker's logits buffer, checked: dtype, shape ``(n_test, C)``, size, finite."""
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolViolation(f"logits dtype {dtype!r} is not one of {ALLOWED_DTYPES}")
    if tuple(shape) != (n_test, num_classes):
        raise ProtocolViolation(f"logits shape {tuple(shape)} != expected {(n_test, num_classes)}")
    expected = n_test * num_classes * np.dtype(dtype).itemsize
    if len(buf) != expected:
        raise ProtocolViolation(f"logits buffer has {len(buf)} bytes, shape and dtype need {expected}")
    logits = np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(n_test, num_classes)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, caught below
        out = logits.astype(np.float32)  # also a private copy: the message buffer stays untouched
    if not np.isfinite(out).all():
        raise ProtocolViolation("logits contain NaN or infinite values (or values beyond float32)")
    return out


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
        name=name, higher_is_better=name not in LOWER_IS_BETTER, mean=ci.mean, std=ci.std,
        ci95_low=low, ci95_high=high, per_seed=dict(values),
    )  # fmt: skip
