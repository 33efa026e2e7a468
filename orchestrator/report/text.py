"""Plain-text pieces both renderers share: numbers, intervals, times, configs, outcome lines.

Nothing here escapes: the renderers escape every piece (they come in part from
models and LLMs, so they are untrusted).
"""

from __future__ import annotations

import math
import time
from typing import Any

import msgspec

from evaluator.metrics import MetricSummary
from orchestrator import units
from orchestrator.registry import CandidateRecord
from orchestrator.report.content import ReportData

#: Metrics shown in the best model's table, in this order (those present).
DETAIL_METRICS = ("accuracy", "balanced_accuracy", "top3_accuracy", "top5_accuracy", "f1_macro",
                  "f1_weighted", "precision_macro", "recall_macro", "auroc_macro",
                  "average_precision_macro", "calibration_error", "nll")


def num(value: float | None, digits: int = 4) -> str:
    """A number with ``digits`` decimals; an en dash for none, NaN and infinities spelled."""
    if value is None:
        return "–"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}f}"


def ci(summary: MetricSummary | None) -> str:
    """``[low, high]``, or a note when one seed gives no interval."""
    if summary is None:
        return "–"
    if summary.ci95_low is None or summary.ci95_high is None:
        return "n/a (one seed)"
    return f"[{num(summary.ci95_low)}, {num(summary.ci95_high)}]"


def std(summary: MetricSummary | None) -> str:
    """The standard deviation over seeds, or a note when one seed gives none (not a false 0.0000)."""
    if summary is None:
        return "–"
    return "n/a (one seed)" if summary.spread is None else num(summary.spread)


def seconds(value: float | None) -> str:
    """``42.1 s``, ``3 min 20 s`` or ``1 h 05 min``."""
    if value is None:
        return "–"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60):02d} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60):02d} min"


def when(stamp: float | None) -> str:
    """A unix time as ``2026-11-25 09:30:00 UTC``."""
    if stamp is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def params(value: int | None) -> str:
    """A parameter count with thousands separators."""
    return "–" if value is None else f"{value:,}"


def flops(value: int | None) -> str:
    """Forward FLOPs per example for a table cell (``2.66 M``), or a dash when not counted."""
    return units.flops(value).removesuffix("FLOPs").strip()


def flops_note(record: CandidateRecord) -> str:
    """``; forward 2.66 MFLOPs per example`` beside a parameter count ('' when not counted)."""
    return f"; forward {units.flops(record.flops)} per example" if record.flops is not None else ""


def layers(record: CandidateRecord) -> str:
    """The layer config in one line (``conv2d(out_channels=16) → relu``), or a source note."""
    config = record.proposal.config
    if config is None:
        return f"free-form source (class {record.proposal.class_name})"
    parts = []
    for layer in config.layers:
        fields = msgspec.to_builtins(layer)
        kind = fields.pop("type")
        args = ", ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        parts.append(f"{kind}({args})" if args else kind)
    return " → ".join(parts) or "(no layers)"


def training(record: CandidateRecord) -> str:
    """The train settings in one line."""
    t = record.proposal.train
    patience = t.patience if t.patience is not None else (5 if t.schedule == "constant" else 0)  # the recipe's rule
    recipe = f" {t.schedule}" + (f" aug={t.augment}" if t.augment != "none" else "") + \
        (f" smooth={t.label_smoothing:g}" if t.label_smoothing else "") + (" nesterov" if t.nesterov else "") + \
        (" tta" if t.tta_flip and t.hflip_ok else "")
    stop = "no early stop" if patience == 0 or t.fit_val else f"patience={patience}"  # 0: runs its schedule out
    return (f"{t.optimizer} lr={t.lr:g} wd={t.weight_decay:g} batch={t.batch_size}{recipe} "
            f"epochs≤{t.epochs} {stop}{' on train+val' if t.fit_val else ''} seeds={list(t.seeds)}")


def kept(record: CandidateRecord) -> str | None:
    """Which epoch's weights each seed kept, as the worker reported it; None when none was recorded."""
    return kept_weights(record.dynamics, fit_val=record.proposal.train.fit_val)


def kept_weights(dynamics, *, fit_val: bool = False) -> str | None:  # type: ignore[no-untyped-def]
    """``kept`` from a ``Dynamics`` (None: none recorded)."""
    per_seed = dynamics.per_seed if dynamics is not None else {}
    pairs = [(seed, d.kept_epoch, d.epochs) for seed, d in sorted(per_seed.items()) if d.kept_epoch is not None]
    if not pairs:
        return None
    how = "the last epoch on train + val" if fit_val else "the highest val accuracy"
    if len(pairs) > 1 and len({(epoch, n) for _, epoch, n in pairs}) == 1:
        return f"epoch {pairs[0][1]} of {pairs[0][2]} for every seed ({how})"
    return ", ".join(f"seed {seed}: epoch {epoch} of {n}" for seed, epoch, n in pairs) + f" ({how})"


def epochs_run(record: CandidateRecord) -> str:
    """Epochs actually trained (max over seeds), or a dash."""
    counts = [len(c) for c in record.curves.values() if c]
    if not counts:
        return "–"
    return f"{max(counts)} (truncated)" if record.truncated else str(max(counts))


def result(record: CandidateRecord, metric: str) -> str:
    """A candidate's result in a few words: its mean metric, or its failure kind."""
    if record.status == "failed" and record.failure is not None:
        return f"failed: {record.failure.kind.value}"
    value = record.value(metric)
    if value is not None:
        return (f"selection {metric} {num(value)}" + (" (pruned)" if record.pruned else "")
                + (" (truncated at its deadline)" if record.truncated else ""))
    return record.status + (" (pruned)" if record.pruned else "")


def target(data: ReportData) -> str:
    """``accuracy ≥ 0.9900`` or ``accuracy, no threshold``."""
    t = data.run.settings.target
    if t.threshold is None:
        return f"best {t.metric} ({'higher' if t.direction == 'maximize' else 'lower'} is better), no threshold"
    return f"{t.metric} {'≥' if t.direction == 'maximize' else '≤'} {num(t.threshold)}"


def outcome(data: ReportData) -> str:
    """One sentence: target met or not, by whom, with what mean and interval."""
    best = data.best
    if best is None:
        return f"No candidate passed ({data.count('failed')} failed); no model to report."
    summary = best.summary(data.metric)
    chosen = best.selection_summary(data.metric)
    head = ("Target met" if data.target_met else
            "Target not met" if data.run.settings.target.threshold is not None else "Best result")
    n_select = data.dataset.get("n_select") or (best.selection.n_test if best.selection else 0)
    return (f"{head}: candidate {best.label} reached mean test {data.metric} {num(summary.mean if summary else None)} "
            f"(95% CI {ci(summary)}) over {len(best.scores.seeds) if best.scores else 0} seed(s). "
            f"{selection_note(data.metric, chosen, n_select, stopped=data.target_met)}")


def selection_note(metric: str, chosen, n_select: int, *, stopped: bool = False) -> str:
    """How the best was chosen (and, ``stopped``, the run ended): on the selection split, never on test."""
    how = "It was chosen, and the run stopped," if stopped else "It was chosen"
    return (f"{how} on mean {metric} {num(chosen.mean if chosen else None)} over a "
            f"held-out selection split of {n_select:,} examples whose labels never entered a sandbox; the test "
            "split decided nothing, so its figure is not the best of many test scores.")


def headline_accuracy(data: ReportData) -> str | None:
    """The best's mean test accuracy with its CI, when the primary metric is another one."""
    if data.best is None or data.metric == "accuracy":
        return None
    summary = data.best.summary("accuracy")
    if summary is None:
        return None
    return f"mean test accuracy {num(summary.mean)} (95% CI {ci(summary)})"


def dataset_lines(data: ReportData) -> list[tuple[str, str]]:
    """(label, value) facts of the dataset, those known."""
    facts: dict[str, Any] = data.dataset
    settings = data.run.settings
    rows = [("dataset", str(facts.get("name") or settings.dataset))]
    if "input_shape" in facts:
        rows.append(("input shape", " × ".join(str(v) for v in facts["input_shape"])))
    if "num_classes" in facts:
        rows.append(("classes", str(facts["num_classes"])))
    if "n_train" in facts:
        rows.append(("split (train / val / selection / test)",
                     f"{facts.get('n_train', 0):,} / {facts.get('n_val', 0):,} / {facts.get('n_select', 0):,} / "
                     f"{facts.get('n_test', 0):,}"))
    if facts.get("content_hash"):
        rows.append(("content hash", str(facts["content_hash"])))
    return rows


def run_lines(data: ReportData) -> list[tuple[str, str]]:
    """(label, value) facts of the run: status, target, planner, budgets, times, throughput."""
    s = data.run.settings
    finished = data.count("passed") + data.count("pruned") + data.count("failed")
    rate = f"{finished / (data.wall_s / 60):.2f}" if data.wall_s and finished else "–"
    planner = s.planner + (f" ({s.llm.model or 'default model'} at {s.llm.base_url})" if s.llm else "")
    budgets = [f"{s.max_candidates} candidates" if s.max_candidates else "",
               seconds(s.time_budget_s) if s.time_budget_s else ""]
    return [
        ("status", data.run.status + (f" ({data.run.message})" if data.run.message else "")),
        ("target", target(data)),
        ("planner", planner),
        ("budget", ", ".join(b for b in budgets if b) or "none"),
        ("seeds", f"{len(s.seeds)} per candidate ({'seed' if len(s.seeds) == 1 else 'seeds'} "
                  f"{', '.join(map(str, s.seeds))})"),
        ("device / runtime", f"{s.device} / {s.sandbox.container_runtime}"),
        ("started", when(data.run.started)),
        ("wall time (running)", seconds(data.wall_s)),
        ("candidates", f"{len(data.records)} ({data.count('passed')} passed, {data.count('pruned')} pruned, "
                       f"{data.count('failed')} failed), {rate} per minute"),
    ]


def metric_rows(record: CandidateRecord) -> list[MetricSummary]:
    """The best model's metrics worth a table row, in a fixed order."""
    if record.scores is None:
        return []
    return [record.scores.metrics[m] for m in DETAIL_METRICS if m in record.scores.metrics]
