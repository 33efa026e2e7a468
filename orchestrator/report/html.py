"""``report.html``: one self-contained file (inline CSS, images as data URIs, no script).

Every string is escaped with ``html.escape`` at the point it enters the page:
sources, rationales, failure messages and LLM errors are untrusted text. Their
control and bidi characters are made visible first (``safetext.inert``), so a
source cannot show the reader something other than what it holds.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from pathlib import Path

from orchestrator.registry import CandidateRecord
from orchestrator.report import text
from orchestrator.report.content import ReportData
from orchestrator.report.markdown import clip
from orchestrator.report.style import CSS
from orchestrator.safetext import inert


def e(value: object) -> str:
    """``value`` as escaped HTML text, its control and bidi characters made visible."""
    return escape(inert(value, multiline=True), quote=True)


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(rows: Sequence[tuple[str, str]]) -> str:
    """A definition list of (label, value) pairs, escaped."""
    return "<dl class=\"facts\">" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows) + "</dl>"


def render_html(data: ReportData) -> str:
    """The whole HTML report."""
    body = "".join([_header(data), _leaderboard(data), _best(data), _steps(data), _failures(data),
                    _llm(data), _timeline(data)])
    footer = (f"<footer>Generated {e(text.when(data.generated))} by <code>researcher report</code> "
              "from <code>experiments/registry.sqlite</code>.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "img-src data:; style-src 'unsafe-inline'\">"
            f"<title>Research run {e(data.paths.name)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}{footer}</main></body></html>\n")


def _img(data: ReportData, key: str, alt: str, *, cls: str = "") -> str:
    path = data.figures.get(key)
    if path is None or not path.is_file():
        return ""
    klass = f' class="{cls}"' if cls else ""
    return f'<figure{klass}><img src="{data_uri(path)}" alt="{e(alt)}"></figure>'


def _header(data: ReportData) -> str:
    status = "met" if data.target_met else ("none" if data.best is None else "notmet")
    accuracy = text.headline_accuracy(data)
    extra = f"<p>{e(accuracy)}</p>" if accuracy else ""
    return (f"<header><h1>Research run <span class=\"name\">{e(data.paths.name)}</span></h1>"
            f"<p class=\"goal\">{e(data.run.settings.goal)}</p></header>"
            f"<section class=\"outcome {status}\"><p>{e(text.outcome(data))}</p>{extra}</section>"
            f"<section class=\"grid\"><div><h2>Dataset</h2>{facts(text.dataset_lines(data))}</div>"
            f"<div><h2>Run</h2>{facts(text.run_lines(data))}</div></section>")


def _candidate(record: CandidateRecord) -> str:
    """The id as code, with ``final of cNNN`` beside it for a final training."""
    of = record.final_of
    return f"<code>{e(record.id)}</code>" + ("" if of is None else f" <small>final of <code>{e(of)}</code></small>")


def _leaderboard(data: ReportData) -> str:
    if not data.leaderboard:
        return "<section><h2>Leaderboard</h2><p>No candidate passed.</p></section>"
    rows = []
    nodes = data.nodes  # a cluster run: which node ran each candidate
    for rank, r in enumerate(data.leaderboard, start=1):
        s = r.summary(data.metric)
        rows.append([str(rank), _candidate(r), text.num(r.value(data.metric)),
                     f"<b>{text.num(s.mean if s else None)}</b>",
                     e(text.ci(s)), text.std(s), text.params(r.params), text.flops(r.flops),
                     text.epochs_run(r), f"{r.seconds:.1f}"] + ([e(nodes.get(r.id, ""))] if nodes else [])
                    + [f"<span class=\"layers\">{e(clip(text.layers(r), 200))}</span>"])
    header = ["#", "candidate", f"selection {e(data.metric)}", f"test {e(data.metric)} mean", "95% CI", "std",
              "params", "FLOPs/example", "epochs", "seconds"] + (["node"] if nodes else []) + ["model"]
    return (f"<section><h2>Leaderboard</h2><p class=\"note\">Passed candidates ranked by mean "
            f"{e(data.metric)} on the held-out selection split (what every decision reads); test means over "
            f"seeds with Student-t 95% confidence intervals are reported beside it and decide nothing.</p>"
            f"{table(header, rows, cls='num')}{_img(data, 'leaderboard', 'leaderboard plot')}"
            f"{_img(data, 'progress', 'time to accuracy: best so far against wall time')}</section>")


def _best(data: ReportData) -> str:
    best = data.best
    if best is None:
        return ""
    kept = text.kept(best)
    summary = facts([("layers", text.layers(best)), ("training", text.training(best)),
                     *([("weights kept", kept)] if kept else []),
                     ("parameters", text.params(best.params) + text.flops_note(best)),
                     ("evaluation time", text.seconds(best.seconds)),
                     ("rationale", clip(best.proposal.rationale or "–")),
                     ("source", f"src/models/model.py (and candidates/{best.id}/model.py)")])
    metrics = table(["metric", "mean", "95% CI", "std"],
                    [[e(m.name), text.num(m.mean), e(text.ci(m)), text.std(m)]
                     for m in text.metric_rows(best)], cls="num")
    per_class = table(["class", "support", "precision", "recall", "F1"],
                      [[e(c.name), str(c.support), text.num(c.precision), text.num(c.recall),
                        text.num(c.f1)] for c in (best.scores.per_class if best.scores else ())],
                      cls="num")
    insights = "".join(f"<li>{e(i)}</li>" for i in (best.dynamics.insights if best.dynamics else ()))
    dynamics = (f"<h3>Learning dynamics <small>(from sandbox-reported curves)</small></h3>"
                f"<ul>{insights}</ul>" if insights else "")
    return (f"<section><h2>Best model: {_candidate(best)}</h2>{summary}"
            f"<div class=\"grid\"><div><h3>Test metrics</h3>{metrics}</div>"
            f"<div><h3>Per class</h3>{per_class}</div></div>"
            f"{_img(data, 'confusion', 'confusion matrix', cls='square')}{_img(data, 'curves', 'learning curves')}"
            f"{dynamics}<h3>Source</h3><pre><code>{e(best.source)}</code></pre></section>")


def _steps(data: ReportData) -> str:
    if not data.records:
        return ""
    rows = [[str(r.seq), f"<code>{e(r.id)}</code>",
             f"<span class=\"{r.status}\">{e(text.result(r, data.metric))}</span>",
             e(r.proposal.parent or ""), e(clip(r.proposal.rationale or "–"))] for r in data.records]
    return ("<section><h2>Planner steps</h2>"
            f"{table(['step', 'candidate', 'result', 'parent', 'rationale'], rows, cls='steps')}"
            "</section>")


def _failures(data: ReportData) -> str:
    if not data.failures:
        return ""
    blocks = []
    for kind, records in data.failures.items():
        items = "".join(
            f"<li><code>{e(r.id)}</code> <small>({e(r.failure.stage.value)})</small> "
            f"{e(clip(r.failure.message))}"
            + (f"<details><summary>traceback</summary><pre>{e(r.failure.traceback)}</pre></details>"
               if r.failure.traceback else "") + "</li>"
            for r in records if r.failure is not None)
        blocks.append(f"<h3>{e(kind)} <span class=\"count\">{len(records)}</span></h3><ul>{items}</ul>")
    return "<section><h2>Failures by kind</h2>" + "".join(blocks) + "</section>"


def _llm(data: ReportData) -> str:
    llm = data.llm
    if llm is None:
        return ""
    rows = [("calls", str(llm.calls)), ("errors", str(llm.errors)),
            ("tokens (prompt / completion)", f"{llm.prompt_tokens:,} / {llm.completion_tokens:,}"),
            ("latency mean / median / max",
             f"{llm.latency_mean:.2f} s / {llm.latency_p50:.2f} s / {llm.latency_max:.2f} s"),
            ("by purpose", ", ".join(f"{k}: {v}" for k, v in llm.by_purpose.items()))]
    errors = "".join(f"<li>{e(clip(m, 300))}</li>" for m in llm.error_samples)
    recent = f"<h3>Recent errors</h3><ul>{errors}</ul>" if errors else ""
    return f"<section><h2>LLM calls</h2>{facts(rows)}{recent}</section>"


def _timeline(data: ReportData) -> str:
    if not data.events:
        return ""
    rows = [[e(text.when(ev.time)), f"<code>{e(ev.kind)}</code>", e(clip(ev.message, 300))]
            for ev in data.events]
    return f"<section><h2>Timeline</h2>{table(['time', 'event', 'message'], rows)}</section>"
