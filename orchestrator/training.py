"""`researcher check --train`'s training half: prepare data on the host, train in the sandbox, score here.

The host loads and splits the dataset once, writes train/val (with labels)
and test *inputs* as read-only ``.npy`` files, and keeps the test labels in
memory. The sandbox returns test logits per seed; every headline metric is
computed here from those logits with torchmetrics. ``orchestrator.check`` (the
command) calls this module, never the other way round.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import msgspec
import shutil
from pathlib import Path
from typing import Any

from orchestrator import logs
from orchestrator.evaluation import load_prepared, score_result
from orchestrator.exceptions import UsageError
from orchestrator.safetext import inert
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.runner import JobResult, make_private_dir, run_job
from sandbox_image.protocol import Batches, Job, Progress

#: Metrics shown in the text summary, in this order.
SUMMARY_METRICS = ("accuracy", "top3_accuracy", "top5_accuracy", "f1_macro", "f1_weighted", "precision_macro",
                   "recall_macro", "auroc_macro", "average_precision_macro", "calibration_error", "nll")


def train_and_score(request, source: str, job_id: str, backend_factory, config: SandboxConfig, *,
                    progress=None) -> tuple[JobResult, Any, Any, Any]:
    """Train ``source`` (a ``CheckRequest``'s model) on its dataset in a sandbox and score its test logits.

    Returns the job's result, its test scores and learning dynamics (both None when
    the job failed) and the dataset's facts.
    """
    prepared = load_prepared(request.dataset, request.data_dir)
    facts = prepared.facts()
    check_shape_flags(request, facts)
    # In the jobs dir: a containerised orchestrator has it at the same path as the host (bind mounts).
    scratch = make_private_dir(Path(config.jobs_root), "researcher-data-")
    try:
        spec = prepared.write_sandbox_dir(scratch / "data")
        job = Job(
            job_id=job_id, source=source, class_name=request.class_name, input_shape=facts.input_shape,
            num_classes=facts.num_classes, device=config.device, threads=config.threads,
            train=request.train, data=spec,
        )
        backend = backend_factory()
        try:
            with TrainingProgress(request.train.epochs, len(request.train.seeds), enabled=progress) as bar:
                result = run_job(backend, job, config, data_dir=scratch / "data", n_test=prepared.n_eval,
                                 on_message=bar.update)
        finally:
            backend.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    scores = dynamics = None
    if result.failure is None:
        scores, _, dynamics = score_result(result, prepared)
    return result, scores, dynamics, facts


def check_shape_flags(request, facts) -> None:
    """UsageError when ``--input-shape``/``--num-classes`` disagree with the dataset's."""
    if request.input_shape is not None and tuple(request.input_shape) != tuple(facts.input_shape):
        raise UsageError(f"--input-shape {request.input_shape} does not match dataset {facts.name!r}, "
                         f"whose inputs are {facts.input_shape}; drop the flag")
    if request.num_classes is not None and request.num_classes != facts.num_classes:
        raise UsageError(f"--num-classes {request.num_classes} does not match dataset {facts.name!r}, "
                         f"which has {facts.num_classes} classes; drop the flag")


def dataset_json(facts) -> dict:
    """The `--json` ``dataset`` key: name, split sizes and content hash."""
    return {"name": facts.name, "n_train": facts.n_train, "n_val": facts.n_val,
            "n_test": facts.n_test, "content_hash": facts.content_hash}


def training_json(scores, dynamics, facts) -> dict:
    """The `--json` training keys: metrics, confusion_matrix, per_class, dynamics."""
    metrics = {
        name: {"mean": m.mean, "std": m.spread, "ci95": [m.ci95_low, m.ci95_high],
               "per_seed": {str(k): v for k, v in m.per_seed.items()}, "higher_is_better": m.higher_is_better}
        for name, m in scores.metrics.items()
    }
    return {
        "metrics": metrics,
        "confusion_matrix": [list(row) for row in scores.confusion],
        "class_names": list(scores.class_names),
        "per_class": [{"class": r.name, "support": r.support, "precision": r.precision, "recall": r.recall, "f1": r.f1}
                      for r in scores.per_class],
        "dynamics": msgspec.to_builtins(dynamics),
        "seeds": list(scores.seeds),
    }


def summary_text(scores, dynamics, result: JobResult) -> str:
    """A readable table of metric, mean and 95% CI, plus the dynamics insights."""
    seeds = len(scores.seeds)
    lines = [f"\n  test metrics over {seeds} seed{'s' if seeds > 1 else ''} (n_test={scores.n_test}, scored on the host):",
             f"  {'metric':<24} {'mean':>8}   {'95% CI':<19} {'std':>7}"]
    for name in SUMMARY_METRICS:
        m = scores.metrics.get(name)
        if m is None:
            continue
        ci = f"[{m.ci95_low:.4f}, {m.ci95_high:.4f}]" if m.ci95_low is not None else "(one seed)"
        std = f"{'-':>7}" if m.spread is None else f"{m.spread:>7.4f}"
        lines.append(f"  {name:<24} {m.mean:>8.4f}   {ci:<19} {std}")
    worst = sorted(scores.per_class, key=lambda r: r.f1)[:3]
    lines.append("  weakest classes (F1): " + ", ".join(f"{r.name} {r.f1:.3f}" for r in worst))
    from orchestrator.report.text import kept_weights

    kept = kept_weights(dynamics)
    if kept:
        lines.append(f"  weights kept: {kept}")
    for insight in dynamics.insights:
        lines.append(f"  - {insight}")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, scores, result: JobResult, data: dict) -> list[str]:
    """Write result.json (``data``, the check's `--json` object, plus the file list), the
    confusion matrix and learning curves into ``out``."""
    from evaluator.plots import plot_confusion, plot_learning_curves

    out.mkdir(parents=True, exist_ok=True)
    files = [
        plot_confusion(scores.confusion, scores.class_names, out / "confusion_matrix.png",
                       title=f"Confusion matrix (test set, summed over {len(scores.seeds)} seed(s))"),
        plot_learning_curves({p.seed: list(p.curves) for p in result.predictions}, out / "learning_curves.png",
                             kept={p.seed: p.best_epoch for p in result.predictions}),
    ]
    names = [str(f) for f in files] + [str(out / "result.json")]
    data["files"] = names
    (out / "result.json").write_text(json.dumps(data, indent=2))
    return names


#: Seconds between two "batch i/n" lines when there is no terminal (a long epoch on a CPU).
BATCH_LINE_EVERY_S = 15.0


class TrainingProgress:
    """A rich progress bar over seeds and epochs, fed by Progress and Batches messages.

    ``enabled``: None shows a bar on a terminal and a line per epoch otherwise (and where
    a long epoch is, every ``BATCH_LINE_EVERY_S``); True always shows the bar; False shows nothing.
    """

    def __init__(self, epochs: int, seeds: int, *, enabled: bool | None = None) -> None:
        self.epochs, self.seeds, self.enabled = epochs, seeds, enabled
        self._progress = None
        self._epochs_done = 0  # Progress messages so far, over all seeds
        self._last_line = time.monotonic()

    def __enter__(self) -> TrainingProgress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        if self.enabled is False or (self.enabled is None and not console.is_terminal):
            return self
        self._progress = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console, transient=False)
        self._progress.start()
        self._task = self._progress.add_task("starting sandbox", total=self.epochs * self.seeds, detail="")
        return self

    def update(self, msg) -> None:
        """Advance on each epoch (and within one, by its batches); show the latest losses and accuracies."""
        if isinstance(msg, Batches):
            self._batches(msg)
            return
        if not isinstance(msg, Progress):
            if self._progress is not None:
                self._progress.update(self._task, description="training")
            return
        if self.enabled is False:  # progress off: nothing at all
            return
        detail = logs.epoch_line(msg.stats, msg.seed, self.epochs)
        self._epochs_done += 1
        self._last_line = time.monotonic()
        if self._progress is None:
            print(inert(detail), file=sys.stderr, flush=True)
            return
        if logs.epochs.isEnabledFor(logging.INFO):  # --verbose: a line per epoch above the bar, too
            from rich.text import Text

            self._progress.console.print(Text(inert(detail)))
        self._progress.update(self._task, completed=self._epochs_done, description="training", detail=detail)

    def _batches(self, msg: Batches) -> None:
        """The bar moves within an epoch; without a terminal, a line now and then."""
        if self.enabled is False:
            return
        planned = msg.planned or self.epochs  # fewer than asked once a deadline re-planned the schedule
        if msg.phase == "predict":
            where = f"seed {msg.seed}: predicting the held-out inputs, batch {msg.step}/{msg.steps}"
        else:
            doing = "validating, batch" if msg.phase == "val" else "batch"
            where = f"seed {msg.seed} epoch {msg.epoch}/{planned}: {doing} {msg.step}/{msg.steps}"
        if self._progress is not None:
            if msg.phase == "train":
                self._progress.update(self._task, completed=self._epochs_done + msg.step / max(msg.steps, 1),
                                      description="training")
            else:
                self._progress.update(self._task, description="validating" if msg.phase == "val" else "predicting")
            return
        now = time.monotonic()
        if now - self._last_line >= BATCH_LINE_EVERY_S:
            self._last_line = now
            print(inert(where), file=sys.stderr, flush=True)

    def __exit__(self, *exc_info) -> None:
        if self._progress is not None:
            self._progress.stop()
