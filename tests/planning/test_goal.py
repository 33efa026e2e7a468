"""Targets read from goal sentences and from --target flags."""

from __future__ import annotations

import pytest

from orchestrator.exceptions import UsageError
from orchestrator.planning.goal import parse_goal, parse_target_flag
from orchestrator.planning.types import Target

GOALS_WITH_TARGET = [
    ("Train a CNN on digits targeting >70% accuracy", "accuracy", 0.70),
    ("F1 above 0.9", "f1_macro", 0.9),
    ("get at least 98% accuracy on fashion-mnist", "accuracy", 0.98),
    ("accuracy >= 0.95", "accuracy", 0.95),
    ("accuracy>=0.95 please", "accuracy", 0.95),
    ("a model with a macro F1 of 85%", "f1_macro", 0.85),
    ("above 98% accuracy", "accuracy", 0.98),
    ("Reach an accuracy of at least 97.5 percent", "accuracy", 0.975),
    ("accuracy ≥ 0.9", "accuracy", 0.9),
    ("acc > 0.93 on wine", "accuracy", 0.93),
    ("ACCURACY ABOVE 90", "accuracy", 0.90),
    ("accuracy: 95 %", "accuracy", 0.95),
    ("at least 0.99 test accuracy", "accuracy", 0.99),
    ("aim for 96% validation accuracy", "accuracy", 0.96),
    ("top-1 accuracy of 92%", "accuracy", 0.92),
    ("balanced accuracy above 0.8", "recall_macro", 0.8),  # the same quantity
    ("macro-F1 >= 0.88", "f1_macro", 0.88),
    ("f1-score over 90%", "f1_macro", 0.90),
    ("weighted F1 of 0.91", "f1_weighted", 0.91),
    ("AUROC above 0.97", "auroc", 0.97),
    ("an AUC of 0.95 or better", "auroc", 0.95),
    ("ROC-AUC > .9", "auroc", 0.9),
    ("0.9 AUROC on breast cancer", "auroc", 0.9),
    ("PR-AUC at least 0.8", "average_precision", 0.8),
    ("precision of at least 90%", "precision_macro", 0.90),
    ("recall > .8", "recall_macro", 0.8),
    ("use 50% dropout and get accuracy above 0.9", "accuracy", 0.9),
    ("accuracy above 95% and F1 above 0.9", "accuracy", 0.95),
    ("F1 above 0.9 and accuracy above 95%", "f1_macro", 0.9),
    ("targeting 98%", "accuracy", 0.98),
    ("error rate below 2%", "accuracy", 0.98),
    ("calibration error below 0.05", "calibration_error", 0.05),
]

GOALS_WITHOUT_TARGET = [
    "train a small CNN on digits",
    "Find the best model for Fashion-MNIST",
    "use 50% dropout and 3 conv layers",
    "train on 80% of the data for 20 epochs",
    "maximize accuracy",
    "report F1 and accuracy",
    "reach 10 epochs with batch size 64",
    "an accurate classifier for iris",
    "",
]


@pytest.mark.parametrize(("text", "metric", "threshold"), GOALS_WITH_TARGET)
def test_goal_states_target(text: str, metric: str, threshold: float) -> None:
    target = parse_goal(text)
    assert target is not None, text
    assert target.metric == metric
    assert target.threshold == pytest.approx(threshold)


@pytest.mark.parametrize("text", GOALS_WITHOUT_TARGET)
def test_goal_without_target_gives_none(text: str) -> None:
    assert parse_goal(text) is None


def test_goal_direction_follows_metric() -> None:
    assert parse_goal("accuracy above 0.9").direction == "maximize"  # type: ignore[union-attr]
    assert parse_goal("ECE below 0.05").direction == "minimize"  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["accuracy above 150%", "accuracy of 250"])
def test_goal_with_impossible_target_is_refused(text: str) -> None:
    with pytest.raises(UsageError, match="outside 0..100%"):
        parse_goal(text)


@pytest.mark.parametrize(("flag", "expected"), [
    ("accuracy=0.98", Target(metric="accuracy", threshold=0.98)),
    ("f1=90%", Target(metric="f1_macro", threshold=0.9)),
    ("macro-F1=0.85", Target(metric="f1_macro", threshold=0.85)),
    ("AUC = 0.9", Target(metric="auroc", threshold=0.9)),
    ("acc=1", Target(metric="accuracy", threshold=1.0)),
    ("ece=0.05", Target(metric="calibration_error", threshold=0.05, direction="minimize")),
])
def test_target_flag(flag: str, expected: Target) -> None:
    assert parse_target_flag(flag) == expected


@pytest.mark.parametrize(("flag", "message"), [
    ("accuracy", "METRIC=VALUE"),
    ("=0.9", "METRIC=VALUE"),
    ("accuracy=", "METRIC=VALUE"),
    ("accuracy=high", "not a number"),
    ("accuracy=98", "fraction in 0..1"),
    ("accuracy=120%", "fraction in 0..1"),
    ("speed=0.9", "unknown metric 'speed'"),
])
def test_bad_target_flag_is_a_usage_error(flag: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_target_flag(flag)
