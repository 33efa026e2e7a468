"""Typed records read back from the registry: candidates, events, the run, run summaries."""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec

from evaluator.dynamics import Dynamics
from evaluator.metrics import MetricSummary, Scores
from evaluator.metrics import higher_is_better as higher_is_better
from orchestrator.planning.types import Outcome, Proposal, candidate_label, final_training_of
from orchestrator.registry.settings import RunSettings
from sandbox_image.protocol import CheckReport, EpochStats, Failure

CandidateStatus = Literal["queued", "running", "passed", "failed"]
RunStatus = Literal["running", "finished", "interrupted", "failed"]

#: Statuses of a candidate whose evaluation is over.
FINISHED = ("passed", "failed")


def metric_summary(scores: Scores | None, metric: str) -> MetricSummary | None:
    """``metric`` of ``scores``; ``auroc`` also finds ``auroc_macro``. None when absent."""
    if scores is None:
        return None
    for key in (metric, f"{metric}_macro"):
        if key in scores.metrics:
            return scores.metrics[key]
    return None


class CandidateRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One candidate as stored: what was proposed, what ran and how it went."""

    id: str
    seq: int  # 1, 2, ... in the order candidates were added
    status: CandidateStatus
    proposal: Proposal
    source: str  # the exact source that was (or will be) run
    created: float  # unix seconds
    started: float | None = None
    finished: float | None = None
    check: CheckReport | None = None
    scores: Scores | None = None  # the test split: recorded and reported, never decides anything
    dynamics: Dynamics | None = None
    failure: Failure | None = None
    curves: dict[int, tuple[EpochStats, ...]] = {}  # per seed, measured in the sandbox
    params: int | None = None
    seconds: float = 0.0
    pruned: bool = False
    metric: str | None = None  # the run's primary metric at the time it finished
    mean: float | None = None  # its mean over seeds on the selection split (None: failed or not scored)
    ci95: tuple[float, float] | None = None  # Student-t 95% interval (None from one seed)
    selection: Scores | None = None  # the selection split: what ranks, stops and plans
    truncated: bool = False  # a seed reached the candidate's deadline and stopped with its best weights

    @property
    def flops(self) -> int | None:
        """Forward FLOPs per example, as the sandbox counted them (None: not counted)."""
        return self.check.flops if self.check is not None else None

    @property
    def final_of(self) -> str | None:
        """The candidate this one retrains when it is a final training, else None."""
        return final_training_of(self.proposal)

    @property
    def label(self) -> str:
        """Its id, naming the candidate it retrains when it is a final: ``c007 (final of c003)``."""
        return candidate_label(self.id, self.final_of)

    def summary(self, metric: str) -> MetricSummary | None:
        """``metric`` over seeds on the TEST split (for reports), or None when there is no such score."""
        return metric_summary(self.scores, metric)

    def selection_summary(self, metric: str) -> MetricSummary | None:
        """``metric`` over seeds on the selection split, or None when there is no such score."""
        return metric_summary(self.selection, metric)

    def value(self, metric: str) -> float | None:
        """Mean selection ``metric`` over seeds, the value every decision reads; None when failed,
        unscored or not finite. Test metrics never enter it."""
        summary = self.selection_summary(metric)
        if self.status != "passed" or summary is None or not math.isfinite(summary.mean):
            return None
        return summary.mean

    def test_value(self, metric: str) -> float | None:
        """Mean test ``metric`` over seeds (reported only); None when failed, unscored or not finite."""
        summary = self.summary(metric)
        if self.status != "passed" or summary is None or not math.isfinite(summary.mean):
            return None
        return summary.mean

    def val_curve(self) -> tuple[float, ...]:
        """Val accuracy per epoch, averaged over the seeds that reached that epoch."""
        by_epoch: dict[int, list[float]] = {}
        for curve in self.curves.values():
            for stats in curve:
                by_epoch.setdefault(stats.epoch, []).append(stats.val_acc)
        return tuple(math.fsum(v) / len(v) for _, v in sorted(by_epoch.items()))

    def outcome(self, metric: str) -> Outcome:
        """The planner's view of this finished candidate: ``metric`` on the selection split, never test."""
        if self.status not in FINISHED:
            raise ValueError(f"candidate {self.id} is {self.status}, not finished")
        summary = self.selection_summary(metric)
        ci = None
        if summary is not None and summary.ci95_low is not None and summary.ci95_high is not None:
            ci = (summary.ci95_low, summary.ci95_high)
        return Outcome(
            candidate_id=self.id, proposal=self.proposal, status=self.status,  # type: ignore[arg-type]
            metric=metric if summary is not None else None,
            mean=summary.mean if summary is not None else None, ci95=ci,
            failure_kind=self.failure.kind if self.failure else None,
            failure_message=self.failure.message if self.failure else None,
            failure_traceback=self.failure.traceback if self.failure else "",
            val_curve=self.val_curve(), params=self.params, seconds=self.seconds,
            pruned=self.pruned, flops=self.flops,
        )  # fmt: skip


class EventRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the run's history (run started, candidate finished, target met, ...)."""

    seq: int
    time: float
    kind: str
    message: str
    payload: dict[str, Any] = {}


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The run row: settings, status, times and the dataset facts once known."""

    settings: RunSettings
    status: RunStatus
    started: float
    finished: float | None = None
    dataset: dict[str, Any] | None = None  # DatasetFacts as plain JSON
    message: str = ""  # why the run stopped


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One line of ``researcher ls``."""

    name: str
    path: str
    status: str  # a RunStatus, or "unreadable"
    started: float | None = None
    finished: float | None = None
    goal: str = ""
    dataset: str = ""
    metric: str = "accuracy"
    candidates: int = 0
    passed: int = 0
    failed: int = 0
    best_id: str | None = None
    best_final_of: str | None = None  # when the best is a final training: the candidate it retrained
    best_mean: float | None = None
    best_ci95: tuple[float, float] | None = None
    target_met: bool = False
    error: str = ""  # why an unreadable run could not be read
