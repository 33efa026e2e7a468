"""Each candidate's folder: its source, JSON records and plots, derived from its record.

The registry is the source of truth; these files are a readable copy, rewritten
whole (atomically) whenever a candidate changes and rebuilt on resume, so a kill
between the database commit and the file writes loses nothing.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from orchestrator.registry.files import RunPaths, write_if_changed, write_json
from orchestrator.registry.records import CandidateRecord

CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "learning_curves.png"


def write_candidate_files(paths: RunPaths, record: CandidateRecord, *, plots: bool = True) -> Path:
    """Write the files of ``record`` into ``candidates/<id>/``; return that folder."""
    folder = paths.candidate(record.id)
    write_if_changed(folder / "model.py", record.source)
    config = msgspec.to_builtins(record.proposal)
    config.pop("source", None)  # the source is model.py
    write_json(folder / "config.json", config)
    for name, value in (("check.json", record.check), ("metrics.json", record.scores),
                        ("failure.json", record.failure), ("dynamics.json", record.dynamics)):
        if value is not None:
            write_json(folder / name, value)
    if record.curves:
        write_json(folder / "curves.json", {str(k): v for k, v in record.curves.items()})
    if plots:
        try:
            write_plots(folder, record)
        except Exception:  # noqa: BLE001 - a plot is a convenience; the record and its JSON are written
            pass
    return folder


def write_plots(folder: Path, record: CandidateRecord, *, overwrite: bool = True) -> list[Path]:
    """Confusion matrix and learning curves of ``record`` as PNGs (those its data allow)."""
    from evaluator.plots import plot_confusion, plot_learning_curves

    written = []
    confusion, curves = folder / CONFUSION_PNG, folder / CURVES_PNG
    if record.scores is not None and (overwrite or not confusion.exists()):
        seeds = len(record.scores.seeds)
        written.append(plot_confusion(
            record.scores.confusion, record.scores.class_names, confusion,
            title=f"{record.id}: confusion matrix (test set, summed over {seeds} seed(s))"))
    if any(record.curves.values()) and (overwrite or not curves.exists()):
        spec = record.proposal.train
        written.append(plot_learning_curves(
            {seed: list(c) for seed, c in record.curves.items()}, curves,
            title=f"{record.id}: learning curves" + (" (trained on train + val)" if spec.fit_val else ""),
            kept=kept_epochs(record), train_note=train_note(spec)))
    return written


def kept_epochs(record: CandidateRecord) -> dict[int, int | None]:
    """Each seed's kept epoch as the worker reported it (none for a record made before it was stored)."""
    per_seed = record.dynamics.per_seed if record.dynamics is not None else {}
    return {seed: d.kept_epoch for seed, d in per_seed.items()}


def train_note(spec) -> str:  # type: ignore[no-untyped-def]
    """What makes a candidate's train curves differ from its val curves, e.g. 'label smoothing 0.1,
    crop_flip augmentation' ('' for the plain recipe)."""
    parts = [f"label smoothing {spec.label_smoothing:g}" if spec.label_smoothing else "",
             f"{spec.augment} augmentation" if spec.augment != "none" else ""]
    return ", ".join(p for p in parts if p)


def write_best_source(paths: RunPaths, best: CandidateRecord | None) -> bool:
    """Make ``src/models/model.py`` hold ``best``'s source; True when the file changed."""
    if best is None:
        return False
    return write_if_changed(paths.best_model, best.source)
