"""The report's figures, regenerated from stored records when they are missing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from evaluator.plots import Bar, Progress, plot_leaderboard, plot_time_to_accuracy
from orchestrator.registry import CandidateRecord
from orchestrator.registry.artifacts import CONFUSION_PNG, CURVES_PNG, write_plots
from orchestrator.report.content import ReportData

#: Most bars in the leaderboard plot (the best ones; failed runs are counted in the text).
MAX_BARS = 30
LEADERBOARD_PNG = "leaderboard.png"
PROGRESS_PNG = "time_to_accuracy.png"


def with_figures(data: ReportData) -> ReportData:
    """``data`` with its figures drawn: leaderboard, and the best's confusion matrix and curves.

    A figure that cannot be drawn (whatever a candidate's stored numbers do to
    matplotlib) is left out; the report's text and tables are written regardless.
    """
    figures: dict[str, Path] = {}
    if data.leaderboard:
        try:
            figures["leaderboard"] = plot_leaderboard(
                [_bar(data, r) for r in data.leaderboard[:MAX_BARS]],
                data.paths.figures / LEADERBOARD_PNG, metric=data.metric,
                title=f"Leaderboard: test {data.metric}, ranked by selection {data.metric}")
        except Exception:  # noqa: BLE001
            pass
    points = time_to_accuracy(data)
    if points:
        try:
            figures["progress"] = plot_time_to_accuracy(
                points, data.paths.figures / PROGRESS_PNG, metric=data.metric,
                title=f"Time to {data.metric}: best so far against wall time")
        except Exception:  # noqa: BLE001
            pass
    if data.best is not None:
        folder = data.paths.candidate(data.best.id)
        try:
            write_plots(folder, data.best, overwrite=False)
        except Exception:  # noqa: BLE001
            pass
        for key, name in (("confusion", CONFUSION_PNG), ("curves", CURVES_PNG)):
            if (folder / name).is_file():
                figures[key] = folder / name
    return dataclasses.replace(data, figures=figures)


def time_to_accuracy(data: ReportData) -> list[Progress]:
    """Best-so-far after each finished candidate, in the order they finished (chosen on selection)."""
    maximize = data.run.settings.target.maximize
    done = sorted((r for r in data.records if r.finished is not None and r.value(data.metric) is not None),
                  key=lambda r: r.finished)
    points: list[Progress] = []
    best: CandidateRecord | None = None
    for record in done:
        value = record.value(data.metric)
        if best is None or (value > best.value(data.metric) if maximize else value < best.value(data.metric)):
            best = record
        points.append(Progress(seconds=max(0.0, record.finished - data.run.started),
                               selection=best.value(data.metric), test=best.test_value(data.metric)))
    return points


def _bar(data: ReportData, record: CandidateRecord) -> Bar:
    summary = record.summary(data.metric)
    assert summary is not None  # the leaderboard holds scored candidates only
    params = f", {record.params:,} params" if record.params else ""
    return Bar(label=f"{record.id}{params}", mean=summary.mean, low=summary.ci95_low,
               high=summary.ci95_high)
