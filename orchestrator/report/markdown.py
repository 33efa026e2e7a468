"""``report.md``: the report as Markdown, images linked by relative path.

Text that came from a model or an LLM is escaped so that no Markdown viewer
renders it as HTML, links or emphasis, and made inert (``safetext.inert``) so
that no terminal escape fires when the file is ``cat``-ed and no bidi control
reorders what it shows; source code goes in a fence longer than any run of
backticks inside it.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from pathlib import Path

from orchestrator.report import text
from orchestrator.report.content import ReportData
from orchestrator.safetext import inert

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
#: Longest failure message or rationale shown in full.
MAX_MESSAGE = 600


def md(value: object) -> str:
    """Untrusted text as inert single-line Markdown (controls escaped, HTML-escaped, specials backslashed)."""
    flat = inert(" ".join(str(value).split()))
    return _MD_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def fence(source: str, lang: str = "python") -> str:
    """``source`` in a code fence that nothing inside it can close, its control characters escaped."""
    source = inert(source, multiline=True)
    longest = max((len(m) for m in re.findall(r"`+", source)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{source.rstrip()}\n{ticks}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of already-escaped cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def clip(value: str, limit: int = MAX_MESSAGE) -> str:
    """``value`` cut to ``limit`` characters with a marker."""
    return value if len(value) <= limit else value[:limit] + " …(cut)"


def render_markdown(data: ReportData) -> str:
    """The whole Markdown report."""
    parts = [_header(data), _leaderboard(data), _best(data), _steps(data), _failures(data),
             _llm(data), _timeline(data),
             f"_Generated {text.when(data.generated)} by `researcher report` from "
             "`experiments/registry.sqlite`._"]
    return "\n\n".join(p for p in parts if p) + "\n"


def _header(data: ReportData) -> str:
    facts = text.dataset_lines(data) + text.run_lines(data)
    lines = [f"# Research run {md(data.paths.name)}", f"**Goal:** {md(data.run.settings.goal)}",
             f"**Outcome:** {md(text.outcome(data))}"]
    accuracy = text.headline_accuracy(data)
    if accuracy:
        lines.append(f"**Accuracy of the best:** {md(accuracy)}")
    lines.append(table(["", ""], [[md(k), md(v)] for k, v in facts]))
    return "\n\n".join(lines)


def _image(data: ReportData, key: str, alt: str) -> str:
    path = data.figures.get(key)
    if path is None:
        return ""
    rel = Path(os.path.relpath(path, data.paths.root)).as_posix()
    return f"![{md(alt)}]({rel})"


def _leaderboard(data: ReportData) -> str:
    if not data.leaderboard:
        return "## Leaderboard\n\nNo candidate passed."
    nodes = data.nodes  # a cluster run: which node ran each candidate
    header = ["#", "candidate", f"selection {md(data.metric)}", f"test {md(data.metric)} mean", "95% CI", "std",
              "params", "FLOPs/example", "epochs", "seconds"] + (["node"] if nodes else []) + ["model"]
    rows = []
    for rank, r in enumerate(data.leaderboard, start=1):
        s = r.summary(data.metric)
        rows.append([str(rank), md(r.label), text.num(r.value(data.metric)), text.num(s.mean if s else None),
                     md(text.ci(s)), text.std(s), text.params(r.params), text.flops(r.flops), text.epochs_run(r),
                     f"{r.seconds:.1f}"] + ([md(nodes.get(r.id, ""))] if nodes else [])
                    + [md(clip(text.layers(r), 160))])
    return "\n\n".join(["## Leaderboard", f"Passed candidates ranked by mean {md(data.metric)} on the held-out "
                        "selection split (what every decision reads); test means over seeds with Student-t 95% "
                        "confidence intervals are reported beside it and decide nothing.", table(header, rows),
                        _image(data, "leaderboard", "leaderboard"),
                        _image(data, "progress", "time to accuracy: best so far against wall time")])


def _best(data: ReportData) -> str:
    best = data.best
    if best is None:
        return ""
    metrics = table(["metric", "mean", "95% CI", "std"],
                    [[md(m.name), text.num(m.mean), md(text.ci(m)), text.std(m)]
                     for m in text.metric_rows(best)])
    per_class = table(["class", "support", "precision", "recall", "F1"],
                      [[md(c.name), str(c.support), text.num(c.precision), text.num(c.recall),
                        text.num(c.f1)] for c in (best.scores.per_class if best.scores else ())])
    insights = "\n".join(f"- {md(i)}" for i in (best.dynamics.insights if best.dynamics else ()))
    kept = text.kept(best)
    return "\n\n".join(p for p in [
        f"## Best model: {md(best.label)}",
        f"- layers: {md(text.layers(best))}\n- training: {md(text.training(best))}\n"
        + (f"- weights kept: {md(kept)}\n" if kept else "")
        + f"- parameters: {text.params(best.params)}{text.flops_note(best)}; evaluation took "
        f"{text.seconds(best.seconds)}\n"
        f"- rationale: {md(clip(best.proposal.rationale))}\n"
        "- source: `src/models/model.py` (also `candidates/" + md(best.id) + "/model.py`)",
        "### Test metrics", metrics,
        _image(data, "confusion", "confusion matrix"), _image(data, "curves", "learning curves"),
        "### Per class", per_class,
        "### Learning dynamics (from sandbox-reported curves)" if insights else "", insights,
        "### Source", fence(best.source),
    ] if p)


def _steps(data: ReportData) -> str:
    if not data.records:
        return ""
    rows = [[str(r.seq), md(r.id), md(text.result(r, data.metric)), md(r.proposal.parent or ""),
             md(clip(r.proposal.rationale or "–"))] for r in data.records]
    return "## Planner steps\n\n" + table(["step", "candidate", "result", "parent", "rationale"], rows)


def _failures(data: ReportData) -> str:
    if not data.failures:
        return ""
    blocks = ["## Failures by kind"]
    for kind, records in data.failures.items():
        lines = [f"### {md(kind)} ({len(records)})"]
        lines += [f"- **{md(r.id)}** ({md(r.failure.stage.value)}): {md(clip(r.failure.message))}"
                  for r in records if r.failure is not None]
        blocks.append("\n\n".join([lines[0], "\n".join(lines[1:])]))
    return "\n\n".join(blocks)


def _llm(data: ReportData) -> str:
    llm = data.llm
    if llm is None:
        return ""
    rows = [["calls", str(llm.calls)], ["errors", str(llm.errors)],
            ["tokens (prompt / completion)", f"{llm.prompt_tokens:,} / {llm.completion_tokens:,}"],
            ["latency mean / median / max", f"{llm.latency_mean:.2f} s / {llm.latency_p50:.2f} s / "
                                            f"{llm.latency_max:.2f} s"],
            ["by purpose", md(", ".join(f"{k}: {v}" for k, v in llm.by_purpose.items()))]]
    errors = "\n".join(f"- {md(clip(e, 300))}" for e in llm.error_samples)
    return "\n\n".join(p for p in ["## LLM calls", table(["", ""], rows),
                                   "Recent errors:\n\n" + errors if errors else ""] if p)


def _timeline(data: ReportData) -> str:
    if not data.events:
        return ""
    rows = [[text.when(e.time), md(e.kind), md(clip(e.message, 300))] for e in data.events]
    return "## Timeline\n\n" + table(["time", "event", "message"], rows)
