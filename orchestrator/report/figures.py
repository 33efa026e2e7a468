"""The report's figures, regenerated from stored records when they are missing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from evaluator.plots import Bar, plot_leaderboard
from orchestrator.registry import CandidateRecord
from orchestrator.registry.artifacts import CONFUSION_PNG, CURVES_PNG, write_plots
from orchestrator.report.content import ReportData

#: Most bars in the leaderboard plot (the best ones; failed runs are counted in the text).
MAX_BARS = 30
LEADERBOARD_PNG = "leaderboard.png"


def with_figures(data: ReportData) -> ReportData:
    """``data`` with its figures drawn: leaderboard, and the best's confusion matrix and curves."""
    figures: dict[str, Path] = {}
    if data.leaderboard:
        figures["leaderboard"] = plot_leaderboard(
            [_bar(data, r) for r in data.leaderboard[:MAX_BARS]],
            data.paths.figures / LEADERBOARD_PNG, metric=data.metric,
            title=f"Leaderboard: test {data.metric}, best first")
    if data.best is not None:
        folder = data.paths.candidate(data.best.id)
        write_plots(folder, data.best, overwrite=False)
        for key, name in (("confusion", CONFUSION_PNG), ("curves", CURVES_PNG)):
            if (folder / name).is_file():
                figures[key] = folder / name
    return dataclasses.replace(data, figures=figures)


def _bar(data: ReportData, record: CandidateRecord) -> Bar:
    summary = record.summary(data.metric)
    assert summary is not None  # the leaderboard holds scored candidates only
    params = f", {record.params:,} params" if record.params else ""
    return Bar(label=f"{record.id}{params}", mean=summary.mean, low=summary.ci95_low,
               high=summary.ci95_high)
