"""Read a stopping target (metric, threshold) out of a goal sentence or a flag.

``parse_goal("train a CNN on digits targeting >98% accuracy")`` gives
``Target(metric="accuracy", threshold=0.98)``; a goal that states no target gives
None. A number counts only next to a metric name (``"50% dropout"`` is not a
target), so that settings in a goal are never mistaken for one.
"""

from __future__ import annotations

import re

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
    return Target(metric=metric, threshold=threshold, direction=METRIC_DIRECTIONS[metric])


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
