"""What the user sees while a run goes: candidates in flight, their epoch, a leaderboard.

A rich ``Live`` panel on a terminal; one plain line per finished candidate
otherwise (CI logs, pipes), so progress is always visible.

Failure messages, model names and LLM errors are untrusted: every piece of text
goes to rich as a ``Text`` (never read as markup) and through ``inert`` (no
terminal escape survives), on the panel and on the plain lines alike.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator import units
from orchestrator.planning.types import Proposal, candidate_label, final_training_of
from orchestrator.safetext import inert


def _fmt_ci(record, metric: str) -> str:
    summary = record.selection_summary(metric)  # the live view shows what decides: selection, never test
    if summary is None or summary.ci95_low is None:
        return ""
    return f"[{summary.ci95_low:.4f}, {summary.ci95_high:.4f}]"


def _cell(value: object, style: str = "") -> Text:
    """A table cell or line that rich shows literally: no markup, no control characters."""
    return Text(inert(value), style=style)


def _say(line: str) -> None:
    """One plain progress line on stderr, made inert."""
    print(f"[researcher] {inert(line)}", file=sys.stderr, flush=True)


#: Seconds between progress lines when there is no terminal (compose `up`, CI logs, a pipe).
HEARTBEAT_S = 15.0


class LiveView:
    """Renders the loop's state; safe to use without a terminal."""

    def __init__(self, *, console: Console | None = None, enabled: bool | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live_mode = self.console.is_terminal if enabled is None else enabled
        self._live: Live | None = None
        self._loop = None
        self._last_line = time.monotonic()  # the first progress line comes after HEARTBEAT_S

    def __enter__(self) -> LiveView:
        if self.live_mode:
            self._live = Live(Text("starting..."), console=self.console, refresh_per_second=4, transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._live is not None:
            if self._loop is not None:
                self._live.update(self._render(self._loop))
            self._live.stop()

    def refresh(self, loop) -> None:
        """Redraw from the loop's state (main thread); without a terminal, a progress line now and then."""
        self._loop = loop
        if self._live is not None:
            self._live.update(self._render(loop))
            return
        now = time.monotonic()
        if loop.state.in_flight and now - self._last_line >= HEARTBEAT_S:
            self._last_line = now
            _say(f"{now - loop.state.started:.0f} s: {self._in_flight_line(loop)}")

    @staticmethod
    def _in_flight_line(loop) -> str:
        parts, now = [], time.monotonic()
        for cid, entry in list(loop.state.in_flight.items()):
            took = _took(entry, now)
            if not entry.get("epoch") and not entry.get("batch"):
                parts.append(f"{_flying(cid, entry)} {_before_first_epoch(entry)}{took}")
                continue
            val = ""
            if entry.get("val_acc") is not None:  # of the last finished epoch, named when another is under way
                val = f" val acc {entry['val_acc']:.4f}" + (f" at epoch {entry['epoch']}" if entry.get("batch") else "")
            parts.append(f"{_flying(cid, entry)} seed {entry.get('seed')} epoch {_epoch(entry)}{val}{took}")
        return "; ".join(parts) + f" ({loop.state.finished} finished)"

    def candidate_finished(self, record) -> None:
        """One line per finished candidate when there is no live panel."""
        if self._live is not None:
            return
        metric = self._loop.target.metric if self._loop else "accuracy"
        if record.status == "failed":
            line = f"{record.id} failed ({record.failure.kind.value}): {inert(record.failure.message, 120)}"
        elif record.pruned:
            line = f"{record.id} pruned after {len(record.val_curve())} epochs"
        else:
            value = record.value(metric)
            facts = [f"{record.params or 0:,} params"]
            if record.flops is not None:
                facts.append(f"{units.flops(record.flops)} per example")
            facts.append(f"{record.seconds:.1f} s")
            if record.truncated:
                facts.append("truncated at its deadline")
            line = f"{record.label} selection {metric} {value:.4f} {_fmt_ci(record, metric)}  ({', '.join(facts)})"
        _say(line)

    def message(self, text: str) -> None:
        """A line above the panel (or on stderr)."""
        if self._live is not None:
            self._live.console.print(_cell(text))
        else:
            _say(text)

    # ------------------------------------------------------------------ render

    def _render(self, loop) -> Group:
        metric = loop.target.metric
        settings = loop.settings
        elapsed = time.monotonic() - loop.state.started
        budget = f"{loop.counted_candidates()}/{settings.max_candidates or '∞'} candidates"
        clock = f"{elapsed:.0f}/{settings.time_budget_s:.0f} s" if settings.time_budget_s else f"{elapsed:.0f} s"
        target = (f"target {metric} {loop.target.sign} {loop.target.threshold}" if loop.target.threshold is not None
                  else f"{'maximise' if loop.target.maximize else 'minimise'} {metric}")
        header = _cell(f"{settings.name}: {budget}, {clock}, {target}, pool {loop.pool.stats['ready']} ready", "bold")
        flight = Table(title="in flight", expand=True, title_justify="left")
        for col in ("candidate", "model", "seed", "epoch", "val acc", "params", "time"):
            flight.add_column(_cell(col))
        now = time.monotonic()
        for cid, entry in list(loop.state.in_flight.items()):
            proposal = entry["proposal"]
            model = (proposal.config.name if proposal.config else "LLM source")[:40]
            epoch = _epoch(entry) if entry.get("epoch") or entry.get("batch") else _before_first_epoch(entry)
            val = f"{entry['val_acc']:.4f}" if entry.get("val_acc") is not None else ""
            took = f"{now - entry['submitted']:.0f} s" if entry.get("submitted") is not None else ""
            flight.add_row(*map(_cell, (_flying(cid, entry), model, entry.get("seed", ""), epoch, val,
                                        f"{entry.get('params', 0):,}", took)))
        board = Table(title="leaderboard (selection split, mean over seeds)", expand=True, title_justify="left")
        for col in ("#", "candidate", metric, "95% CI", "params", "seconds"):
            board.add_column(_cell(col))
        passed = loop.target.ranked([c for c in loop.registry.candidates("passed") if c.value(metric) is not None],
                                    lambda c: c.value(metric))
        for rank, rec in enumerate(passed[:5], 1):
            board.add_row(*map(_cell, (rank, rec.label, f"{rec.value(metric):.4f}", _fmt_ci(rec, metric),
                                       f"{rec.params or 0:,}", f"{rec.seconds:.1f}")))
        footer = _cell(f"finished {loop.state.finished}, failed {loop.state.failed}")
        return Group(header, flight, board, footer)


def _flying(cid: str, entry: dict) -> str:
    """A candidate in flight by its id, naming the one it retrains when it is a final training."""
    proposal = entry.get("proposal")
    return candidate_label(cid, final_training_of(proposal) if isinstance(proposal, Proposal) else None)


def _epoch(entry: dict) -> str:
    """``3/20`` after an epoch; ``4/20, batch 120/469`` while a Batches message says where epoch 4 is
    (``4/20, validating 3/16`` while it is validated; ``20/20, predicting 5/63`` once training is over);
    ``5/7 (of 12 asked)`` once the candidate's deadline has re-planned its schedule over 7 epochs."""
    epochs = entry.get("epochs") or "?"
    planned = entry.get("planned") or epochs
    of = f"{planned} (of {epochs} asked)" if planned != epochs else f"{epochs}"
    batch = entry.get("batch")
    if batch:
        epoch, step, steps = batch
        doing = {"val": "validating", "predict": "predicting"}.get(entry.get("phase", "train"), "batch")
        return f"{epoch}/{of}, {doing} {step}/{steps}"
    return f"{entry['epoch']}/{of}"


def _took(entry: dict, now: float) -> str:
    """`` (42 s)``: how long ago the candidate was sent to its sandbox."""
    submitted = entry.get("submitted")
    return "" if submitted is None else f" ({now - submitted:.0f} s)"


def _before_first_epoch(entry: dict) -> str:
    """A candidate with no epoch yet: its sandbox starting, or (its model checked) its first epoch training."""
    return "training its first epoch" if "params" in entry else "starting"
