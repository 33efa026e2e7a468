"""The run's registry: one SQLite database (WAL) that every record goes into first.

Each record is one transaction, committed with ``synchronous=FULL``: once a
method returns, a SIGKILL (or a power cut) cannot take the record back. The
files of the run directory are derived from the database afterwards and are
rebuilt by :meth:`Registry.open`, so a kill between the two costs nothing.

One process writes a run at a time (an advisory lock in ``experiments/``);
any number may read it with ``Registry.open(run_dir, readonly=True)``.
Methods are thread-safe: the loop may record from several worker threads.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from evaluator.dynamics import Dynamics
from evaluator.metrics import Scores
from orchestrator.exceptions import UsageError
from orchestrator.llm.records import LLMCall
from orchestrator.planning.types import Outcome, Proposal
from orchestrator.registry import schema
from orchestrator.registry.artifacts import write_best_source, write_candidate_files
from orchestrator.registry.codec import to_builtins, to_json
from orchestrator.registry.db import connect, take_lock
from orchestrator.registry.files import RunPaths, write_json
from orchestrator.registry.records import (
    FINISHED,
    CandidateRecord,
    EventRecord,
    RunInfo,
    RunStatus,
    higher_is_better,
    metric_summary,
)
from orchestrator.registry.settings import RunSettings, sanitised
from sandbox_image.protocol import CheckReport, EpochStats, Failure, FailureKind, Stage

_RUN_STATUSES = ("running", "finished", "interrupted", "failed")
INTERRUPTED = "interrupted"


class Registry:
    """Candidates, events and LLM calls of one run, in ``experiments/registry.sqlite``."""

    def __init__(self, paths: RunPaths, conn: sqlite3.Connection, *, readonly: bool,
                 lock_fd: int | None = None, plots: bool = True) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self.paths, self.readonly, self.plots = paths, readonly, plots
        self._conn, self._lock_fd = conn, lock_fd
        self._mutex = threading.RLock()
        self._settings: RunSettings | None = None
        #: Candidates this ``open`` found queued or running and marked failed (to redo).
        self.recovered: tuple[str, ...] = ()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, run_dir: str | Path, settings: RunSettings, *, plots: bool = True) -> Registry:
        """Start a new run in ``run_dir`` (empty or new): database, run.json, first event.

        ``plots`` draws each finished candidate's PNGs (about a second each); without
        it only the report draws the figures it shows.
        """
        paths = RunPaths(Path(run_dir))
        paths.experiments.mkdir(parents=True, exist_ok=True)
        lock_fd = take_lock(paths)
        try:
            if paths.sqlite.exists():
                raise UsageError(f"{paths.root} already holds a run; continue it with "
                                 f"`researcher resume {paths.root}` or choose another directory")
            conn = connect(paths.sqlite)
        except BaseException:
            os.close(lock_fd)
            raise
        registry = cls(paths, conn, readonly=False, lock_fd=lock_fd, plots=plots)
        try:
            registry._start(settings)
        except BaseException:
            registry._release()
            raise
        return registry

    @classmethod
    def open(cls, run_dir: str | Path, *, readonly: bool = False, plots: bool = True) -> Registry:
        """Open a run; writable (resume) marks its interrupted candidates failed and logs it."""
        paths = RunPaths(Path(run_dir))
        if not paths.sqlite.is_file():
            raise UsageError(f"{paths.root} is not a run directory: {paths.sqlite} is missing "
                             "(give a folder made by `researcher run`)")
        if readonly:
            registry = cls(paths, connect(paths.sqlite, readonly=True), readonly=True)
        else:
            lock_fd = take_lock(paths)
            try:
                conn = connect(paths.sqlite)
            except BaseException:
                os.close(lock_fd)
                raise
            registry = cls(paths, conn, readonly=False, lock_fd=lock_fd, plots=plots)
        try:
            registry._check_version()
            if not readonly:
                registry._recover()
        except BaseException:
            registry._release()
            raise
        return registry

    def close(self) -> None:
        """Export the JSON copy (when writable), close the database and release the lock."""
        with self._mutex:
            if self._conn is None:
                return
            try:
                if not self.readonly:
                    self.export_json()
            finally:
                self._release()

    def _release(self) -> None:
        """Close the connection and drop the writer lock, without exporting."""
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # also releases the flock
                self._lock_fd = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ run

    @property
    def settings(self) -> RunSettings:
        """The run's settings."""
        if self._settings is None:
            self._settings = self.run_info().settings
        return self._settings

    def run_info(self) -> RunInfo:
        """The run row: settings, status, times, dataset facts."""
        row = self._query("SELECT * FROM run WHERE id = 1")
        if not row:
            raise UsageError(f"{self.paths.sqlite} has no run row; the run was never started")
        return schema.run_from_row(row[0])

    def set_dataset(self, facts: msgspec.Struct | Mapping[str, Any]) -> None:
        """Store the prepared dataset's facts (either DatasetFacts) once they are known."""
        with self._tx() as conn:
            conn.execute("UPDATE run SET dataset = ? WHERE id = 1", (to_json(facts),))

    def set_status(self, status: RunStatus, message: str = "") -> None:
        """Set the run's status; ``finished``/``failed``/``interrupted`` also stamp the end time."""
        if status not in _RUN_STATUSES:
            raise ValueError(f"run status {status!r} is not one of {_RUN_STATUSES}")
        end = None if status == "running" else time.time()
        with self._tx() as conn:
            conn.execute("UPDATE run SET status = ?, message = ?, finished = ? WHERE id = 1",
                         (status, message, end))
            self._event(conn, f"run_{status}", message or f"run {status}", {})

    # ------------------------------------------------------------------ candidates

    def add_candidate(self, proposal: Proposal, source: str) -> str:
        """Record a proposal and the source that will run; return its new id (``c001`` ...)."""
        with self._tx() as conn:
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM candidates").fetchone()[0]
            cid = f"c{seq:03d}"
            conn.execute(
                "INSERT INTO candidates (seq, id, status, proposal, source, config, rationale, "
                "parent, created) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                (seq, cid, to_json(proposal), source,
                 to_json(proposal.config) if proposal.config is not None else None,
                 proposal.rationale, proposal.parent, time.time()))
        write_candidate_files(self.paths, self.candidate(cid), plots=False)
        return cid

    def mark_running(self, candidate_id: str) -> None:
        """The candidate's evaluation has started."""
        with self._tx() as conn:
            cur = conn.execute("UPDATE candidates SET status = 'running', started = ? "
                               "WHERE id = ? AND status = 'queued'", (time.time(), candidate_id))
            if cur.rowcount != 1:
                raise ValueError(self._not_in_state(conn, candidate_id, "queued"))
            self._event(conn, "candidate_started", f"candidate {candidate_id} started",
                        {"candidate": candidate_id})

    def finish_candidate(
        self, candidate_id: str, *, check: CheckReport | None = None, scores: Scores | None = None,
        selection: Scores | None = None, dynamics: Dynamics | None = None, failure: Failure | None = None,
        curves: Mapping[int, Sequence[EpochStats]] | None = None, seconds: float = 0.0,
        pruned: bool = False, truncated: bool = False,
    ) -> CandidateRecord:
        """Record how a candidate ended: ``failure`` set means failed, else passed with ``scores``.

        ``scores`` are the test split's (reported), ``selection`` the selection split's:
        the only scores that rank candidates, stop the run and feed the planners.
        """
        if failure is None and scores is None and not pruned:
            raise ValueError(f"candidate {candidate_id}: a passed candidate needs scores; "
                             "give failure=Failure(...) for one that failed")
        if failure is None and scores is not None and selection is None:
            raise ValueError(f"candidate {candidate_id}: scores without selection scores; the selection "
                             "split's scores are what rank candidates, so give both")
        row = _finished_row(self.settings.metric, check=check, scores=scores, selection=selection,
                            dynamics=dynamics, failure=failure, curves=curves, seconds=seconds, pruned=pruned,
                            truncated=truncated)
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE candidates SET {', '.join(f'{k} = ?' for k in row)} "
                "WHERE id = ? AND status IN ('queued', 'running')", (*row.values(), candidate_id))
            if cur.rowcount != 1:
                raise ValueError(self._not_in_state(conn, candidate_id, "queued or running"))
            self._event(conn, "candidate_finished", _finish_message(candidate_id, failure, row),
                        {"candidate": candidate_id, "status": row["status"],
                         "mean": row["metric_mean"]})
        record = self.candidate(candidate_id)
        self._refresh_files(record)
        return record

    def candidate(self, candidate_id: str) -> CandidateRecord:
        """One candidate by id; KeyError when there is none."""
        rows = self._query(f"SELECT {schema.CANDIDATE_COLUMNS} FROM candidates WHERE id = ?",
                           (candidate_id,))
        if not rows:
            raise KeyError(f"no candidate {candidate_id!r} in {self.paths.sqlite}")
        return schema.candidate_from_row(rows[0])

    def candidates(self, status: str | None = None) -> list[CandidateRecord]:
        """Every candidate (or those with ``status``), in the order they were added."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._query(f"SELECT {schema.CANDIDATE_COLUMNS} FROM candidates {where} ORDER BY seq",
                           args)
        return [schema.candidate_from_row(r) for r in rows]

    def best(self, metric: str | None = None) -> CandidateRecord | None:
        """The passed candidate with the best mean ``metric`` (default: the run's); None if none."""
        return best_of(self.candidates("passed"), metric or self.settings.metric,
                       self._maximize(metric))

    def outcomes(self) -> list[Outcome]:
        """Every finished candidate as the planner saw it (to rebuild its history on resume)."""
        metric = self.settings.metric
        return [c.outcome(metric) for c in self.candidates() if c.status in FINISHED]

    # ------------------------------------------------------------------ events and LLM calls

    def log_event(self, kind: str, message: str, **payload: Any) -> None:
        """Record an event (``target_met``, ``budget_spent``, ...) with a JSON payload."""
        with self._tx() as conn:
            self._event(conn, kind, message, payload)

    def events(self, kind: str | None = None) -> list[EventRecord]:
        """Events in order, optionally of one kind."""
        where, args = ("WHERE kind = ?", (kind,)) if kind else ("", ())
        return [schema.event_from_row(r)
                for r in self._query(f"SELECT * FROM events {where} ORDER BY seq", args)]

    def record_llm_call(self, call: LLMCall) -> None:
        """Record one LLM HTTP attempt: prompt, response, latency, tokens, error."""
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO llm_calls ({schema.LLM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (call.time, call.model, call.purpose, call.attempt, call.status,
                 call.response_format.value, call.latency_s, call.prompt_tokens,
                 call.completion_tokens, call.error, to_json(call.messages), call.response))

    def llm_calls(self) -> list[LLMCall]:
        """Every recorded LLM call, in order."""
        rows = self._query(f"SELECT {schema.LLM_COLUMNS} FROM llm_calls ORDER BY seq")
        return [schema.llm_call_from_row(r) for r in rows]

    # ------------------------------------------------------------------ export

    def export_json(self) -> Path:
        """Write ``experiments/registry.json`` (the whole registry) atomically; return its path."""
        with self._mutex:
            run = self.run_info()
            document = {
                "format": "pytorch-researcher registry", "schema_version": schema.SCHEMA_VERSION,
                "name": self.paths.name, "run": run, "candidates": self.candidates(),
                "events": self.events(), "llm_calls": self.llm_calls(),
            }
            return write_json(self.paths.registry_json, to_builtins(document))

    # ------------------------------------------------------------------ internals

    def _start(self, settings: RunSettings) -> None:
        """First records of a new run: schema version, run row, run.json, first export."""
        settings = sanitised(settings)
        if not settings.name:
            settings = msgspec.structs.replace(settings, name=self.paths.name)
        with self._tx() as conn:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(schema.SCHEMA_VERSION),))
            conn.execute("INSERT INTO run (id, name, settings, status, started) VALUES (1, ?, ?, ?, ?)",
                         (self.paths.name, to_json(settings), "running", time.time()))
            self._event(conn, "run_started", f"run {self.paths.name} started: {settings.goal}",
                        {"settings": to_builtins(settings)})
        write_json(self.paths.run_json, settings)
        self.export_json()

    def _maximize(self, metric: str | None) -> bool:
        target = self.settings.target
        if metric is None or metric == target.metric:
            return target.maximize
        return higher_is_better(metric)

    def _refresh_files(self, record: CandidateRecord) -> None:
        """Files derived from a changed candidate: its folder, the best source, registry.json."""
        with self._mutex:  # one writer of the shared files at a time
            write_candidate_files(self.paths, record, plots=self.plots)
            write_best_source(self.paths, self.best())
            self.export_json()

    def _recover(self) -> None:
        """After a crash: fail unfinished candidates, log it, rebuild derived files."""
        run = self.run_info()
        with self._tx() as conn:
            stale = conn.execute("SELECT id, status FROM candidates "
                                 "WHERE status IN ('queued', 'running') ORDER BY seq").fetchall()
            for cid, status in stale:
                failure = _interrupted_failure(status)
                conn.execute("UPDATE candidates SET status = 'failed', failure = ?, failure_kind = ?, "
                             "finished = ? WHERE id = ?",
                             (to_json(failure), failure.kind.value, time.time(), cid))
            if run.status == "running":
                self._event(conn, "interrupted", "the previous process stopped without finishing "
                            f"({len(stale)} candidate(s) left unfinished)",
                            {"candidates": [cid for cid, _ in stale]})
            conn.execute("UPDATE run SET status = 'running', finished = NULL, message = '' WHERE id = 1")
            self._event(conn, "resumed", f"run resumed (was {run.status})", {"previous": run.status})
        self.recovered = tuple(cid for cid, _ in stale)
        for record in self.candidates():
            write_candidate_files(self.paths, record, plots=False)
        write_best_source(self.paths, self.best())
        write_json(self.paths.run_json, run.settings)
        self.export_json()

    def _check_version(self) -> None:
        row = self._query("SELECT value FROM meta WHERE key = 'schema_version'")
        found = row[0][0] if row else "none"
        if found != str(schema.SCHEMA_VERSION):
            why = (" (schema 1 runs chose their best on test metrics; this version chooses on a held-out "
                   "selection split and cannot rank them honestly)" if found == "1" else "")
            raise UsageError(f"{self.paths.sqlite} has registry schema {found}, this version of "
                             f"researcher reads {schema.SCHEMA_VERSION}{why}; start a new run, or read it "
                             "with the version that wrote it")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on error."""
        if self.readonly:
            raise UsageError(f"{self.paths.root} was opened read-only; open it without "
                             "readonly=True to record")
        with self._mutex:
            conn = self._live()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._mutex:
            return self._live().execute(sql, args).fetchall()

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"registry of {self.paths.root} is closed")
        return self._conn

    @staticmethod
    def _event(conn: sqlite3.Connection, kind: str, message: str, payload: Mapping[str, Any]) -> None:
        conn.execute("INSERT INTO events (time, kind, message, payload) VALUES (?, ?, ?, ?)",
                     (time.time(), kind, message, to_json(dict(payload))))

    @staticmethod
    def _not_in_state(conn: sqlite3.Connection, candidate_id: str, expected: str) -> str:
        row = conn.execute("SELECT status FROM candidates WHERE id = ?", (candidate_id,)).fetchone()
        if row is None:
            return f"no candidate {candidate_id!r}"
        return f"candidate {candidate_id} is {row[0]}, expected {expected}"


def best_of(records: Sequence[CandidateRecord], metric: str, maximize: bool) -> CandidateRecord | None:
    """The record with the best mean ``metric``; failed or unscored ones never win; ties: earliest."""
    best, best_value = None, None
    for record in records:
        value = record.value(metric)
        if value is None:
            continue
        if best_value is None or (value > best_value if maximize else value < best_value):
            best, best_value = record, value
    return best


def _opt(value: msgspec.Struct | None) -> str | None:
    return None if value is None else to_json(value)


def _finished_row(
    metric: str, *, check: CheckReport | None, scores: Scores | None, selection: Scores | None,
    dynamics: Dynamics | None, failure: Failure | None, curves: Mapping[int, Sequence[EpochStats]] | None,
    seconds: float, pruned: bool, truncated: bool = False,
) -> dict[str, Any]:
    """Column values of a finished candidate; the primary metric's columns come from ``selection``."""
    summary = metric_summary(selection, metric) if failure is None else None
    return {
        "status": "failed" if failure else "passed", "check_report": _opt(check),
        "scores": _opt(scores), "selection": _opt(selection), "failure": _opt(failure),
        "failure_kind": failure.kind.value if failure else None, "dynamics": _opt(dynamics),
        "curves": to_json({int(k): tuple(v) for k, v in curves.items()}) if curves else None,
        "params": check.params if check else None, "seconds": float(seconds),
        "pruned": int(pruned), "truncated": int(truncated), "metric": metric if summary else None,
        "metric_mean": summary.mean if summary else None,
        "ci_low": summary.ci95_low if summary else None,
        "ci_high": summary.ci95_high if summary else None, "finished": time.time(),
    }  # fmt: skip


def _finish_message(cid: str, failure: Failure | None, row: Mapping[str, Any]) -> str:
    if failure is not None:
        return f"candidate {cid} failed ({failure.kind.value}): {failure.message[:200]}"
    if row["metric_mean"] is None:
        return f"candidate {cid} passed (not scored)"
    return f"candidate {cid} passed: {row['metric']} {row['metric_mean']:.4f}"


def _interrupted_failure(status: str) -> Failure:
    """The failure recorded for a candidate the previous process left unfinished."""
    if status == "running":
        return Failure(stage=Stage.TRAIN, kind=FailureKind.CRASHED, message=INTERRUPTED)
    return Failure(stage=Stage.STARTUP, kind=FailureKind.CRASHED,
                   message=f"{INTERRUPTED} before it started")
