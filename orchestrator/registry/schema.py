"""SQLite tables of the registry and the conversion of their rows to typed records."""

from __future__ import annotations

import sqlite3
from typing import Any

from evaluator.dynamics import Dynamics
from evaluator.metrics import Scores
from orchestrator.llm.records import ChatMessage, FormatMode, LLMCall
from orchestrator.planning.types import Proposal
from orchestrator.registry.codec import from_json, maybe
from orchestrator.registry.records import CandidateRecord, EventRecord, RunInfo
from orchestrator.registry.settings import decode_settings
from sandbox_image.protocol import CheckReport, EpochStats, Failure

#: 2: the selection split (its scores decide; test scores are only reported).
SCHEMA_VERSION = 2

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    settings TEXT NOT NULL,           -- RunSettings JSON (never an API key)
    status TEXT NOT NULL,             -- running | finished | interrupted | failed
    message TEXT NOT NULL DEFAULT '',
    dataset TEXT,                     -- DatasetFacts JSON once the data is prepared
    started REAL NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS candidates (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'passed', 'failed')),
    proposal TEXT NOT NULL,           -- Proposal JSON
    source TEXT NOT NULL,             -- the source that runs
    config TEXT,                      -- the layer config, when the proposal had one
    rationale TEXT NOT NULL DEFAULT '',
    parent TEXT,
    check_report TEXT,                -- CheckReport JSON
    scores TEXT,                      -- Scores JSON: the test split (reported, decides nothing)
    selection TEXT,                   -- Scores JSON: the selection split (every decision reads it)
    failure TEXT,                     -- Failure JSON
    failure_kind TEXT,
    dynamics TEXT,                    -- Dynamics JSON
    curves TEXT,                      -- {seed: [EpochStats]} JSON
    params INTEGER,
    seconds REAL NOT NULL DEFAULT 0,
    pruned INTEGER NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0, -- a seed stopped at its deadline, with its best weights
    metric TEXT,                      -- primary metric, its selection mean and 95% CI over seeds
    metric_mean REAL,
    ci_low REAL,
    ci_high REAL,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS candidates_status ON candidates (status);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS llm_calls (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    model TEXT NOT NULL,
    purpose TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status INTEGER NOT NULL,
    response_format TEXT NOT NULL,
    latency_s REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    error TEXT NOT NULL,
    messages TEXT NOT NULL,           -- [ChatMessage] JSON
    response TEXT NOT NULL
);
"""

CANDIDATE_COLUMNS = (
    "seq, id, status, proposal, source, check_report, scores, selection, failure, dynamics, curves, "
    "params, seconds, pruned, truncated, metric, metric_mean, ci_low, ci_high, created, started, finished"
)
LLM_COLUMNS = (
    "time, model, purpose, attempt, status, response_format, latency_s, prompt_tokens, "
    "completion_tokens, error, messages, response"
)


def candidate_from_row(row: sqlite3.Row) -> CandidateRecord:
    """A candidate row (``CANDIDATE_COLUMNS``) as a typed record."""
    ci = (row["ci_low"], row["ci_high"])
    curves = maybe(row["curves"], dict[int, tuple[EpochStats, ...]]) or {}
    return CandidateRecord(
        id=row["id"], seq=row["seq"], status=row["status"],
        proposal=from_json(row["proposal"], Proposal), source=row["source"],
        check=maybe(row["check_report"], CheckReport), scores=maybe(row["scores"], Scores),
        selection=maybe(row["selection"], Scores),
        failure=maybe(row["failure"], Failure), dynamics=maybe(row["dynamics"], Dynamics),
        curves=curves, params=row["params"], seconds=row["seconds"], pruned=bool(row["pruned"]),
        truncated=bool(row["truncated"]),
        metric=row["metric"], mean=row["metric_mean"],
        ci95=ci if None not in ci else None,  # type: ignore[arg-type]
        created=row["created"], started=row["started"], finished=row["finished"],
    )  # fmt: skip


def event_from_row(row: sqlite3.Row) -> EventRecord:
    """An events row as a typed record."""
    return EventRecord(seq=row["seq"], time=row["time"], kind=row["kind"], message=row["message"],
                       payload=from_json(row["payload"], dict[str, Any]))


def llm_call_from_row(row: sqlite3.Row) -> LLMCall:
    """An llm_calls row as the LLMCall it was made from."""
    return LLMCall(
        time=row["time"], model=row["model"], purpose=row["purpose"], attempt=row["attempt"],
        status=row["status"], response_format=FormatMode(row["response_format"]),
        latency_s=row["latency_s"], prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"], error=row["error"],
        messages=from_json(row["messages"], tuple[ChatMessage, ...]), response=row["response"],
    )  # fmt: skip


def run_from_row(row: sqlite3.Row) -> RunInfo:
    """The run row as a typed record."""
    return RunInfo(settings=decode_settings(row["settings"]), status=row["status"],
                   started=row["started"], finished=row["finished"], message=row["message"],
                   dataset=maybe(row["dataset"], dict[str, Any]))
