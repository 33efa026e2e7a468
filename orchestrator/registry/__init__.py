"""The run's registry (SQLite, WAL), its run directory and ``researcher ls``.

``Registry.create(run_dir, settings)`` starts a run, ``Registry.open(run_dir)``
resumes one (and ``readonly=True`` reads one that may still be running).
"""

from orchestrator.registry.files import RunPaths, atomic_write, new_run_dir
from orchestrator.registry.listing import list_runs
from orchestrator.registry.records import (
    CandidateRecord,
    EventRecord,
    RunInfo,
    RunSummary,
    higher_is_better,
    metric_summary,
)
from orchestrator.registry.settings import LLMConfig, RunSettings, redact_url
from orchestrator.registry.store import Registry, best_of

__all__ = [
    "CandidateRecord",
    "EventRecord",
    "LLMConfig",
    "Registry",
    "RunInfo",
    "RunPaths",
    "RunSettings",
    "RunSummary",
    "atomic_write",
    "best_of",
    "higher_is_better",
    "list_runs",
    "metric_summary",
    "new_run_dir",
    "redact_url",
]
