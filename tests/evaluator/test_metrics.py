"""Metrics against scikit-learn on the same predictions; intervals against scipy."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from evaluator.metrics import (
    DIRECTIONS,
    Scores,
    direction,
    default_top_k,
    score_logits,
    score_seeds,
)
from evaluator.stats import interval, t_critical

N, C = 400, 6


def _logits(seed: int, y: np.ndarray, signal: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), C)) + signal * np.eye(C)[y]
    return logits.astype(np.float32)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(42).integers(0, C, N).astype(np.int64)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error, top-label, equal-width bins (the textbook definition)."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return total


def test_scalar_metrics_match_scikit_learn(labels: np.ndarray) -> None:
    logits = _logits(0, labels)
    probs, pred = _softmax(logits), logits.argmax(axis=1)
    got = score_logits(logits, labels, C, top_k=3).scalars
    expected = {
        "accuracy": skm.accuracy_score(labels, pred),
        "top3_accuracy": skm.top_k_accuracy_score(labels, probs, k=3),
        "precision_macro": skm.precision_score(labels, pred, average="macro", zero_division=0),
        "recall_macro": skm.recall_score(labels, pred, average="macro", zero_division=0),
        "f1_macro": skm.f1_score(labels, pred, average="macro", zero_division=0),
        "precision_weighted": skm.precision_score(labels, pred, average="weighted", zero_division=0),
        "recall_weighted": skm.recall_score(labels, pred, average="weighted", zero_division=0),
        "f1_weighted": skm.f1_score(labels, pred, average="weighted", zero_division=0),
        "auroc_macro": skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"),
        "average_precision_macro": skm.average_precision_score(
            label_binarize(labels, classes=range(C)), probs, average="macro"
        ),
        "nll": skm.log_loss(labels, probs),
        "calibration_error": _ece(probs, labels),
    }
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=2e-5), name
    assert 0.3 < got["accuracy"] < 0.95  # the fixture is neither trivial nor hopeless


def test_per_class_and_confusion_match_scikit_learn(labels: np.ndarray) -> None:
    logits = _logits(1, labels)
    pred = logits.argmax(axis=1)
    seed = score_logits(logits, labels, C, top_k=None)
    p, r, f, _ = skm.precision_recall_fscore_support(labels, pred, labels=range(C), zero_division=0)
    np.testing.assert_allclose(seed.precision, p, atol=1e-6)
    np.testing.assert_allclose(seed.recall, r, atol=1e-6)
    np.testing.assert_allclose(seed.f1, f, atol=1e-6)
    np.testing.assert_array_equal(seed.confusion, skm.confusion_matrix(labels, pred, labels=range(C)))


def test_class_missing_from_test_set_is_left_out_of_auroc(labels: np.ndarray) -> None:
    y = np.where(labels == C - 1, 0, labels)  # class C-1 never appears
    logits = _logits(2, y)
    probs = _softmax(logits)
    got = score_logits(logits, y, C, top_k=None).scalars
    per_class = [skm.roc_auc_score(y == c, probs[:, c]) for c in range(C - 1)]
    ap = [skm.average_precision_score(y == c, probs[:, c]) for c in range(C - 1)]
    assert got["auroc_macro"] == pytest.approx(np.mean(per_class), abs=1e-6)
    assert got["average_precision_macro"] == pytest.approx(np.mean(ap), abs=1e-6)


def test_score_seeds_aggregates_with_student_t(labels: np.ndarray) -> None:
    logits = {seed: _logits(seed, labels, signal=1.0 + 0.2 * seed) for seed in (3, 1, 2)}
    scores = score_seeds(logits, labels, [f"c{i}" for i in range(C)])
    acc = scores.metrics["accuracy"]
    values = [skm.accuracy_score(labels, logits[s].argmax(axis=1)) for s in (1, 2, 3)]
    lo, hi = stats.t.interval(0.95, df=2, loc=np.mean(values), scale=stats.sem(values))
    assert scores.seeds == (1, 2, 3)
    assert acc.mean == pytest.approx(np.mean(values), abs=1e-6)
    assert acc.std == pytest.approx(np.std(values, ddof=1), abs=1e-6) and acc.spread == acc.std
    assert (acc.ci95_low, acc.ci95_high) == (pytest.approx(lo, abs=1e-6), pytest.approx(hi, abs=1e-6))
    assert acc.per_seed[3] == pytest.approx(values[2], abs=1e-6)
    total = sum(skm.confusion_matrix(labels, logits[s].argmax(axis=1)) for s in logits)
    np.testing.assert_array_equal(np.array(scores.confusion), total)
    np.testing.assert_allclose(scores.confusion_mean(), total / 3)
    assert [row.support for row in scores.per_class] == np.bincount(labels, minlength=C).tolist()
    assert scores.top_k == 3 and "top3_accuracy" in scores.metrics


def test_single_seed_has_no_interval_and_intervals_stay_in_range(labels: np.ndarray) -> None:
    one = score_seeds({0: _logits(0, labels)}, labels, [str(i) for i in range(C)])
    assert one.metrics["accuracy"].ci95_low is None and one.metrics["accuracy"].std == 0.0
    assert one.metrics["accuracy"].spread is None  # what reports and --json show: no spread, not 0.0
    perfect = np.eye(C, dtype=np.float32)[labels] * 20
    near = {0: perfect, 1: perfect.copy(), 2: _logits(0, labels, signal=30.0)}
    top = score_seeds(near, labels, [str(i) for i in range(C)]).metrics["top3_accuracy"]
    assert top.ci95_high is not None and top.ci95_high <= 1.0


def test_scores_round_trip_through_json(labels: np.ndarray) -> None:
    scores = score_seeds({0: _logits(0, labels), 1: _logits(1, labels)}, labels, list("abcdef"))
    decoded = msgspec.json.decode(msgspec.json.encode(scores), type=Scores)
    assert decoded == scores
    assert msgspec.json.decode(msgspec.json.encode(scores.to_dict()))["metrics"]["nll"]["higher_is_better"] is False


def test_t_critical_matches_scipy_with_and_without_it() -> None:
    for df in (1, 2, 4, 9, 29, 30, 31, 50, 200, 10_000):
        expected = stats.t.ppf(0.975, df)
        assert t_critical(df) == pytest.approx(expected, rel=1e-9)
        assert t_critical(df, use_scipy=False) == pytest.approx(expected, abs=1e-5)
    result = interval([0.9, 0.92, 0.95])
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean([0.9, 0.92, 0.95]), scale=stats.sem([0.9, 0.92, 0.95]))
    assert (result.low, result.high) == (pytest.approx(lo), pytest.approx(hi))
    with pytest.raises(ValueError):
        t_critical(0)


def test_every_scored_metric_takes_its_direction_from_the_one_table() -> None:
    labels = np.random.default_rng(0).integers(0, C, N)
    scores = score_seeds({0: _logits(0, labels)}, labels, [str(i) for i in range(C)])
    assert set(scores.metrics) - set(DIRECTIONS) == {"top3_accuracy"}  # top-k: maximised, by rule
    assert direction("auroc") == direction("top3_accuracy") == "maximize"  # a target's name: the macro's
    for name, summary in scores.metrics.items():
        assert summary.higher_is_better == (direction(name) == "maximize"), name
    assert {n for n, d in DIRECTIONS.items() if d == "minimize"} == {"calibration_error", "nll"}


def test_default_top_k() -> None:
    assert [default_top_k(c) for c in (2, 3, 4, 10, 11, 100)] == [None, None, 3, 3, 5, 5]
