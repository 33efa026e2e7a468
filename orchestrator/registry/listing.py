"""``researcher ls``: one summary per run directory, read without taking any lock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from orchestrator.exceptions import ResearcherError
from orchestrator.registry.files import RunPaths
from orchestrator.registry.records import RunSummary
from orchestrator.registry.store import Registry

#: What can go wrong reading someone else's (possibly half-written or foreign) run.
_READ_ERRORS = (ResearcherError, sqlite3.Error, OSError, ValueError, KeyError)


def list_runs(root: str | Path) -> list[RunSummary]:
    """Summaries of every run directly under ``root`` (or ``root`` itself), oldest first."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; give the folder that holds the runs")
    dirs = [root] if RunPaths(root).sqlite.is_file() else sorted(
        p for p in root.iterdir() if RunPaths(p).sqlite.is_file())
    summaries = [summarise(d) for d in dirs]
    return sorted(summaries, key=lambda s: (s.started is None, s.started or 0.0, s.name))


def summarise(run_dir: Path) -> RunSummary:
    """One run's summary; an unreadable run gives status ``unreadable`` and the reason."""
    try:
        registry = Registry.open(run_dir, readonly=True)
    except _READ_ERRORS as exc:
        return RunSummary(name=run_dir.name, path=str(run_dir), status="unreadable", error=str(exc))
    try:
        return _summary(registry)
    except _READ_ERRORS as exc:
        return RunSummary(name=run_dir.name, path=str(run_dir), status="unreadable", error=str(exc))
    finally:
        registry.close()


def _summary(registry: Registry) -> RunSummary:
    run = registry.run_info()
    settings = run.settings
    records = registry.candidates()
    best = registry.best()
    best_summary = best.summary(settings.metric) if best else None
    ci = None
    if best_summary is not None and best_summary.ci95_low is not None:
        ci = (best_summary.ci95_low, best_summary.ci95_high)
    dataset = (run.dataset or {}).get("name") or settings.dataset
    return RunSummary(
        name=registry.paths.name, path=str(registry.paths.root), status=run.status,
        started=run.started, finished=run.finished, goal=settings.goal, dataset=str(dataset),
        metric=settings.metric, candidates=len(records),
        passed=sum(r.status == "passed" for r in records),
        failed=sum(r.status == "failed" for r in records),
        best_id=best.id if best else None, best_final_of=best.final_of if best else None,
        best_mean=best_summary.mean if best_summary else None,
        best_ci95=ci,  # type: ignore[arg-type]
        target_met=settings.target.reached(best.value(settings.metric) if best else None),  # selection decides
    )  # fmt: skip
