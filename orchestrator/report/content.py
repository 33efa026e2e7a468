"""What a report says, gathered from the registry alone (no live objects needed)."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.llm.records import LLMCall
from orchestrator.registry import CandidateRecord, EventRecord, Registry, RunInfo, RunPaths
from orchestrator.registry.store import best_of

#: Events worth a line in the report's timeline (per-candidate ones are in the tables).
NOTABLE_EVENTS = frozenset({"run_started", "interrupted", "resumed", "target_met", "budget_spent",
                            "run_finished", "run_failed", "run_interrupted", "planner_stopped", "planner_note",
                            "cluster_node_ready", "cluster_node_lost", "cluster_node_broken", "candidate_node_lost"})


def placements(events: list[EventRecord]) -> dict[str, str]:
    """Candidate id -> the cluster node that ran it (its last try); empty for a run on one machine."""
    placed: dict[str, str] = {}
    for event in events:
        if event.kind == "candidate_placed" and isinstance(event.payload.get("candidate"), str):
            placed[event.payload["candidate"]] = str(event.payload.get("node", ""))
    return placed


@dataclass(frozen=True)
class LLMSummary:
    """Counts, tokens and latency of every recorded LLM call."""

    calls: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    latency_mean: float
    latency_p50: float
    latency_max: float
    by_purpose: dict[str, int]
    error_samples: tuple[str, ...]  # the last few distinct error messages

    @classmethod
    def of(cls, calls: list[LLMCall]) -> LLMSummary | None:
        """Summary of ``calls``; None when there were none."""
        if not calls:
            return None
        latencies = [c.latency_s for c in calls]
        errors = [c.error for c in calls if c.error]
        samples = tuple(dict.fromkeys(reversed(errors)))[:5]
        return cls(
            calls=len(calls), errors=len(errors),
            prompt_tokens=sum(c.prompt_tokens for c in calls),
            completion_tokens=sum(c.completion_tokens for c in calls),
            latency_mean=statistics.fmean(latencies), latency_p50=statistics.median(latencies),
            latency_max=max(latencies), by_purpose=dict(Counter(c.purpose or "-" for c in calls)),
            error_samples=samples,
        )  # fmt: skip


@dataclass(frozen=True)
class ReportData:
    """Everything the Markdown and HTML renderers show."""

    paths: RunPaths
    run: RunInfo
    metric: str
    maximize: bool
    records: list[CandidateRecord]
    leaderboard: list[CandidateRecord]  # passed and scored, best first
    best: CandidateRecord | None
    failures: dict[str, list[CandidateRecord]]  # failure kind -> candidates, most common first
    llm: LLMSummary | None
    events: list[EventRecord]
    wall_s: float | None
    generated: float = field(default_factory=time.time)
    figures: dict[str, Path] = field(default_factory=dict)  # leaderboard, confusion, curves
    nodes: dict[str, str] = field(default_factory=dict)  # candidate id -> cluster node that ran it (last try)

    @property
    def target_met(self) -> bool:
        """Whether the best mean reached the target threshold."""
        return self.run.settings.target.reached(self.best.value(self.metric) if self.best else None)

    @property
    def dataset(self) -> dict[str, Any]:
        """Dataset facts as stored (empty before the data was prepared)."""
        return dict(self.run.dataset or {})

    def count(self, status: str) -> int:
        """Candidates with ``status``; ``pruned`` ones are counted apart from ``passed``."""
        if status == "pruned":
            return sum(r.pruned for r in self.records)
        if status == "passed":
            return sum(r.status == "passed" and not r.pruned for r in self.records)
        return sum(r.status == status for r in self.records)


def gather(registry: Registry) -> ReportData:
    """Collect a report's content from an open registry."""
    run = registry.run_info()
    metric = run.settings.metric
    maximize = run.settings.target.maximize
    records = registry.candidates()
    scored = sorted((r for r in records if r.value(metric) is not None), key=lambda r: r.seq)
    leaderboard = run.settings.target.ranked(scored, lambda r: r.value(metric))  # stable: ties keep seq order
    events = registry.events()
    return ReportData(
        paths=registry.paths, run=run, metric=metric, maximize=maximize, records=records,
        leaderboard=leaderboard, best=best_of(records, metric, maximize),
        failures=_failures(records), llm=LLMSummary.of(registry.llm_calls()),
        events=[e for e in events if e.kind in NOTABLE_EVENTS],
        wall_s=running_seconds(run, events),
        nodes=placements(events),
    )  # fmt: skip


def _failures(records: list[CandidateRecord]) -> dict[str, list[CandidateRecord]]:
    groups: dict[str, list[CandidateRecord]] = {}
    for record in records:
        if record.status == "failed" and record.failure is not None:
            groups.setdefault(record.failure.kind.value, []).append(record)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def running_seconds(run: RunInfo, events: list[EventRecord]) -> float | None:
    """Seconds the run was running: start to end, minus the gaps before each resume."""
    total, start, last = 0.0, run.started, run.started
    for event in events:
        if event.kind == "resumed":  # the previous stretch ended at its last event
            total += max(0.0, last - start)
            start = last = event.time
        elif event.kind != "interrupted":  # logged at resume time, not when the run died
            last = event.time
    end = run.finished if run.finished is not None else last
    if not math.isfinite(end):
        return None
    return total + max(0.0, end - start)
