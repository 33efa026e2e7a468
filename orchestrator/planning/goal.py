"""Read a stopping target and the dataset out of a goal sentence, or from flags.

``parse_goal("train a CNN on digits targeting >98% accuracy")`` gives
``Target(metric="accuracy", threshold=0.98)``; a goal that states no target gives
None. A number counts only next to a metric name (``"50% dropout"`` is not a
target), so that settings in a goal are never mistaken for one.

``datasets_named("a small CIFAR-10 CNN")`` gives ``("cifar10",)``, and
``choose_dataset(goal, flag)`` settles the goal against ``--dataset``: the flag
when they agree, the goal's dataset when no flag is given, ``digits`` when
neither names one, and a UsageError naming both when they disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from evaluator.datasets import DEFAULT_DATASET
from orchestrator.exceptions import UsageError
from orchestrator.planning.types import METRIC_DIRECTIONS, Target

#: Metric names as people write them -> the loop's metric name. Longest first, so
#: "balanced accuracy" wins over "accuracy" and "pr-auc" over "auc".
_SYNONYMS: dict[str, str] = {
    "balanced accuracy": "recall_macro",  # balanced accuracy is the macro mean of per-class recall
    "balanced_accuracy": "recall_macro",
    "top-1 accuracy": "accuracy",
    "top1 accuracy": "accuracy",
    "accuracy": "accuracy",
    "acc": "accuracy",
    "weighted f1 score": "f1_weighted",
    "weighted f1": "f1_weighted",
    "f1 weighted": "f1_weighted",
    "f1_weighted": "f1_weighted",
    "macro averaged f1": "f1_macro",
    "macro f1 score": "f1_macro",
    "macro f1": "f1_macro",
    "f1 macro": "f1_macro",
    "f1_macro": "f1_macro",
    "f1 score": "f1_macro",
    "f1": "f1_macro",
    "average precision": "average_precision",
    "average_precision": "average_precision",
    "pr auc": "average_precision",
    "auprc": "average_precision",
    "macro precision": "precision_macro",
    "precision_macro": "precision_macro",
    "precision": "precision_macro",
    "macro recall": "recall_macro",
    "recall_macro": "recall_macro",
    "recall": "recall_macro",
    "roc auc": "auroc",
    "auroc": "auroc",
    "auc": "auroc",
    "calibration error": "calibration_error",
    "calibration_error": "calibration_error",
    "ece": "calibration_error",
}


def _alias_regex(alias: str) -> str:
    """An alias where a space or hyphen may be written as either (or nothing for 'f 1')."""
    return r"[\s\-]?".join(re.escape(word) for word in re.split(r"[\s\-]", alias))


_METRIC = "(?P<metric>" + "|".join(
    _alias_regex(a) for a in sorted(_SYNONYMS, key=len, reverse=True)) + ")"
_NUMBER = r"(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<percent>%|percent\b|pct\b)?"
# Words that may sit between a metric and its number ("accuracy of at least 95%").
_FILLER = (r"(?:of|at|least|above|over|greater|higher|better|more|than|exceeding|exceeds?|"
           r"beyond|reach|reaching|to|is|be|should|must|score|scores|around|about|"
           r"approximately|or|equal|no|less|below|under|most|>=|=>|≥|<=|≤|>|<|=|:)")
_GAP = rf"(?:\s*{_FILLER}\s*){{0,6}}"
# Words that may sit between a number and its metric ("98% test accuracy").
_QUALIFIER = r"(?:\s*(?:test|validation|val|overall|held[\s\-]?out|classification|mean)\b)*"
_COMPARATOR = r"(?:(?:at\s+least|above|over|more\s+than|greater\s+than|>=|≥|>)\s*)?"

_BOUND = r"(?<![a-z0-9_])"
_END = r"(?![a-z0-9_])"
_PATTERNS = (
    # "accuracy >= 0.95", "F1 above 0.9", "macro F1 of 85%"
    re.compile(_BOUND + _METRIC + _END + _GAP + _NUMBER),
    # "at least 98% accuracy", ">70% accuracy", "0.9 AUROC"
    re.compile(_BOUND + _COMPARATOR + _NUMBER + _QUALIFIER + r"\s*" + _METRIC + _END),
)
# "targeting 98%" with no metric named means accuracy.
_BARE_TARGET = re.compile(r"(?<![a-z])(?:target(?:ing)?|aim(?:ing)?\s+for|reach(?:ing)?|"
                          r"achiev(?:e|ing))\s+(?:of\s+)?" + _COMPARATOR + _NUMBER)
# "error rate below 2%" means accuracy of at least 98%.
_ERROR_RATE = re.compile(r"(?<![a-z])error(?:\s+rate)?\s+(?:of\s+)?(?:below|under|less\s+than|"
                         r"at\s+most|<=|≤|<)\s*" + _NUMBER)


def _canonical(alias: str) -> str:
    """The loop's metric name for an alias as written (any case, spaces or hyphens)."""
    key = re.sub(r"[\s\-]+", " ", alias.strip().lower())
    if key in _SYNONYMS:
        return _SYNONYMS[key]
    for known, name in _SYNONYMS.items():
        if re.sub(r"[\s\-]+", "", known) == re.sub(r"[\s\-]+", "", key):
            return name
    raise UsageError(f"unknown metric {alias!r}; use one of {', '.join(sorted(METRIC_DIRECTIONS))}")


def _fraction(number: str, percent: str | None, phrase: str) -> float:
    """A threshold in 0..1 from '98%', '98 percent', '0.98' or a bare '98' (a percentage)."""
    value = float(number)
    if percent or value > 1.0:
        value /= 100.0
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"the goal asks for {phrase.strip()!r}, which is outside 0..100%; "
                         "state the target as a percentage (98%) or a fraction (0.98)")
    return round(value, 10)


def _target(metric: str, threshold: float) -> Target:
    """A Target with the metric's natural direction."""
    return Target(metric=metric, threshold=threshold)  # its direction: the metric's own


def parse_goal(text: str) -> Target | None:
    """The first target stated in a goal sentence, or None when it states none."""
    lowered = text.lower()
    matches = [m for pattern in _PATTERNS if (m := pattern.search(lowered))]
    if matches:
        first = min(matches, key=lambda m: m.start())
        metric = _canonical(first.group("metric"))
        return _target(metric, _fraction(first.group("number"), first.group("percent"),
                                         first.group(0)))
    if m := _ERROR_RATE.search(lowered):
        error = _fraction(m.group("number"), m.group("percent"), m.group(0))
        return _target("accuracy", round(1.0 - error, 10))
    m = _BARE_TARGET.search(lowered)
    # Without a metric name only a percentage or a fraction counts ("reach 10 epochs" does not).
    if m and (m.group("percent") or float(m.group("number")) < 1.0):
        return _target("accuracy", _fraction(m.group("number"), m.group("percent"), m.group(0)))
    return None


def parse_target_flag(value: str) -> Target:
    """Parse ``--target METRIC=VALUE`` (``accuracy=0.98`` or ``f1=90%``); raise UsageError."""
    metric, sep, number = value.partition("=")
    if not sep or not metric.strip() or not number.strip():
        raise UsageError(f"--target {value!r} is not METRIC=VALUE; write e.g. "
                         "--target accuracy=0.98 or --target f1=90%")
    name = _canonical(metric)
    m = re.fullmatch(r"\s*" + _NUMBER + r"\s*", number.strip().lower())
    if m is None:
        raise UsageError(f"--target {value!r}: {number.strip()!r} is not a number; write a "
                         "fraction (0.98) or a percentage (98%)")
    threshold = float(m.group("number"))
    if m.group("percent"):
        threshold /= 100.0
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--target {value!r}: the threshold must be a fraction in 0..1 "
                         "(0.98) or a percentage in 0..100% (98%)")
    return _target(name, round(threshold, 10))


# ------------------------------------------------------------------ the dataset a goal names

#: (pattern, dataset) in matching order: a name is masked once matched, so "mnist"
#: is not found again inside "fashion-mnist" and "cifar-10" not inside "cifar-100".
_DATASET_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"fashion[\s\-_]*mnist|f[\-_]?mnist|zalando", "fashion_mnist"),
    (r"cifar[\s\-_]*100", "cifar100"),
    (r"cifar(?:[\s\-_]*10)?", "cifar10"),  # a bare "CIFAR" means CIFAR-10, as it usually does
    (r"(?<![a-z0-9][\-_])mnist", "mnist"),  # not K-MNIST, E-MNIST, ...
    (r"breast[\s\-_]*cancer|wdbc", "breast_cancer"),
    (r"iris", "iris"),
    (r"wines?", "wine"),
    (r"(?:handwritten[\s\-_]+)?digits?", "digits"),
)
_DATASET_REGEXES = tuple((re.compile(_BOUND + f"(?:{p})" + _END), name) for p, name in _DATASET_PATTERNS)
#: How messages write each dataset.
DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST",
                  "breast_cancer": "breast cancer", "iris": "iris", "wine": "wine", "digits": "digits"}
#: --dataset formats that hold the user's own data: a goal may describe what is in them.
_USER_FORMATS = ("imagefolder", "csv", "npz")


@dataclass(frozen=True)
class DatasetChoice:
    """The dataset a run uses, where the choice came from, and a note for the user ("" for none)."""

    name: str
    origin: str  # "flag" | "goal" | "default"
    note: str = ""


def datasets_named(text: str) -> tuple[str, ...]:
    """The known datasets a goal names, in order of first mention ("digits" yields to any other)."""
    lowered = text.lower()
    found: list[tuple[int, str]] = []
    for regex, name in _DATASET_REGEXES:
        for m in regex.finditer(lowered):
            found.append((m.start(), name))
        lowered = regex.sub(lambda m: " " * len(m.group(0)), lowered)  # masked: no re-match inside
    names = list(dict.fromkeys(name for _, name in sorted(found)))
    if len(names) > 1 and "digits" in names:  # "MNIST handwritten digits": the digits are MNIST's
        names.remove("digits")
    return tuple(names)


def _titled(names: tuple[str, ...]) -> str:
    return " and ".join(f"{DATASET_TITLES.get(n, n)} ({n})" for n in names)


def choose_dataset(goal: str, flag: str | None, default: str = DEFAULT_DATASET) -> DatasetChoice:
    """The run's dataset from the goal and ``--dataset`` (UsageError when they disagree)."""
    from evaluator.datasets import canonical_name  # numpy and friends: only when a run starts

    named = datasets_named(goal)
    if flag:
        name = canonical_name(flag)
        if not named or name in named:
            return DatasetChoice(name, "flag")
        if name in _USER_FORMATS:
            return DatasetChoice(name, "flag", f"the goal names {_titled(named)}; training on your "
                                               f"--dataset {name} data as given")
        raise UsageError(f"the goal names {_titled(named)} but --dataset is {flag!r}; drop --dataset to "
                         "train on the goal's dataset, or change the goal to name the one you want")
    if len(named) > 1:
        raise UsageError(f"the goal names several datasets ({_titled(named)}); choose one with --dataset")
    if named:
        return DatasetChoice(named[0], "goal", f"the goal names {_titled(named)}: training on it")
    return DatasetChoice(default, "default")
