"""The research loop: propose, assemble, evaluate in a sandbox, score, record, repeat.

The planner and the registry live on the main thread; candidates are
evaluated on up to ``parallel`` worker threads, each taking one ready slot
from the warm pool (one container per candidate, never reused). Results may
come back out of order; the planner is told as each one lands. Every
abnormal end of a candidate is a recorded failure; only an unusable sandbox
(no engine, no image) or the user's Ctrl-C ends the run early, and both
leave the registry consistent so that `researcher resume` continues it.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import msgspec

from orchestrator import logs
from orchestrator.evaluation import score_result
from orchestrator.exceptions import NodeLost, SandboxUnavailable
from orchestrator.planning.assembler import render
from orchestrator.planning.budget import FINAL_SHARE, SAFETY
from orchestrator.planning.types import InvalidConfig, Outcome, Planner, Proposal, should_prune
from orchestrator.registry import CandidateRecord, Registry
from orchestrator.registry.store import INTERRUPTED
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.pool import WarmPool
from orchestrator.sandbox.runner import JobResult, execute
from orchestrator.sandbox.validate import syntax_failure
from sandbox_image.protocol import Batches, CheckReport, Failure, FailureKind, Job, Predictions, Progress, Stage

#: Planner failures in a row (exceptions, unrecordable proposals) after which the loop stops.
MAX_PLANNER_ERRORS = 5
#: A candidate trains for at most this share of the sandbox's hard limit, less a margin for
#: start-up and predictions; it always gets at least MIN_CANDIDATE_S.
SANDBOX_SHARE, SANDBOX_MARGIN_S, MIN_CANDIDATE_S = 0.85, 5.0, 20.0
MAX_OVERHEAD_S = 60.0  # the most one candidate's measured non-training time counts
RUN_TIMEOUT_S = 900.0  # `run`'s --timeout when not given, for time budgets up to LONG_RUN_S
LONG_RUN_S = 1800.0


def default_run_timeout(time_budget_s: float | None) -> float:
    """`run`'s --timeout when not given: 900 s, or for a time budget over 30 minutes long enough
    for the final training's share (``planning.budget.FINAL_SHARE``) of it, padded as the
    planner pads its estimates (``SAFETY``), to fit one candidate's cap."""
    if not time_budget_s or time_budget_s <= LONG_RUN_S:
        return RUN_TIMEOUT_S
    needed = (FINAL_SHARE * SAFETY * time_budget_s + SANDBOX_MARGIN_S) / SANDBOX_SHARE
    return float(max(RUN_TIMEOUT_S, math.ceil(needed)))


@dataclass
class Evaluation:
    """What one candidate's evaluation produced, ready for the registry."""

    result: JobResult
    scores: object | None = None  # test: recorded and reported, never decides anything
    selection: object | None = None  # the selection split: what every decision reads
    dynamics: object | None = None
    failure: Failure | None = None


@dataclass
class LoopState:
    """Live counters the view reads.

    The loop thread alone adds and removes ``in_flight`` entries and writes the
    counters and ``stop_reason``. While a candidate runs, its worker thread alone
    updates that candidate's entry dict (progress, pruning, errors); the loop thread
    pops it only after the worker's future is done. Readers take ``list(...)``
    snapshots of ``in_flight``; each write is a single dict operation under the GIL.
    """

    started: float = field(default_factory=time.monotonic)
    in_flight: dict[str, dict] = field(default_factory=dict)  # cid -> {"seed", "epoch", "val_acc", ...}
    finished: int = 0
    failed: int = 0
    stop_reason: str = ""


class ResearchLoop:
    """Runs candidates until the target, the candidate budget or the time budget is met."""

    def __init__(self, registry: Registry, planner: Planner, pool: WarmPool, prepared, config: SandboxConfig,
                 *, parallel: int = 1, view=None) -> None:
        self.registry, self.planner, self.pool, self.prepared = registry, planner, pool, prepared
        self.config, self.parallel, self.view = config, parallel, view
        self.settings = registry.settings
        self.target = self.settings.target
        self.facts = prepared.facts()
        self.state = LoopState()
        self._planner_lock = threading.Lock()  # planners are not thread-safe; pruning calls come from workers
        self._slots: dict[str, object] = {}  # candidate id -> the Slot its worker thread runs it in
        self._slots_lock = threading.Lock()
        self._planner_errors = 0  # in a row
        #: Seconds recent candidates took besides training (start-up, data, predictions, scoring):
        #: a candidate the run's deadline cuts gets that much less, so the run ends near its budget.
        self._overheads: deque[float] = deque(maxlen=5)

    # ------------------------------------------------------------------ main loop

    def run(self) -> str:
        """Run to a stop condition; returns why it stopped."""
        history = self.registry.outcomes()
        in_flight: dict[Future, tuple[str, Proposal]] = {}
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="candidate") as workers:
            try:
                while True:
                    reason = self.stop_reason()
                    while not reason and len(in_flight) < self.parallel:
                        reason = self._submit_next(workers, in_flight, history)
                    if reason and not self.state.stop_reason:
                        self.state.stop_reason = reason
                    if not in_flight:
                        break
                    done, _ = wait(list(in_flight), timeout=0.25, return_when=FIRST_COMPLETED)
                    for future in done:
                        cid, proposal = in_flight.pop(future)
                        history.append(self._record(cid, proposal, future))
                    self._refresh_view()
            except BaseException:
                # Ctrl-C, SIGTERM or a crash: do not wait for candidates mid-training. Their
                # sandboxes are killed (the records stay "running", so resume redoes them) and
                # the pool closes, so the worker threads return within seconds.
                for future in in_flight:
                    future.cancel()
                self._abort_in_flight()
                raise
        reason = self.state.stop_reason
        kind = "target_met" if reason.startswith("target met") else "budget_spent" if "budget" in reason else "planner_done"
        self.registry.log_event(kind, reason)
        return reason

    def _abort_in_flight(self) -> None:
        """Kill every running candidate's sandbox and close the pool (threads waiting on it give up)."""
        self.pool.close()
        with self._slots_lock:
            slots = list(self._slots.values())
        for slot in slots:
            try:
                slot.sandbox.kill()
            except Exception:  # noqa: BLE001 - already gone; the worker thread's close() cleans up
                pass

    def stop_reason(self) -> str:
        """Why the loop must not start another candidate ('' = go on)."""
        best = self.registry.best()
        value = best.value(self.target.metric) if best else None
        if self.target.reached(value):
            return (f"target met: {best.id} has mean selection {self.target.metric} {value:.4f} "
                    f"{'>=' if self.target.direction == 'maximize' else '<='} {self.target.threshold}")
        budget = self.settings.max_candidates
        if budget is not None and self.counted_candidates() >= budget:
            return f"candidate budget spent ({budget} candidates)"
        limit = self.settings.time_budget_s
        if limit and time.monotonic() - self.state.started >= limit:
            return f"time budget spent ({limit:g} s)"
        return ""

    def counted_candidates(self) -> int:
        """Candidates that count against the budget (interrupted ones are redone, not counted)."""
        return sum(1 for c in self.registry.candidates() if not _interrupted(c))

    # ------------------------------------------------------------------ one candidate

    def _submit_next(self, workers, in_flight, history: list[Outcome]) -> str:
        with self._planner_lock:
            try:
                set_budget = getattr(self.planner, "set_budget", None)
                if set_budget is not None:  # a budget-aware planner fits its proposals to the time left
                    budget = self.settings.max_candidates
                    set_budget(self._time_left_s(), candidate_s=self._candidate_cap_s(),
                               candidates_left=None if budget is None else max(0, budget - self.counted_candidates()))
                proposal = self.planner.propose(history)
            except InvalidConfig as exc:
                return self._planner_error(f"the planner proposed an invalid candidate: {exc}")
            except Exception as exc:  # noqa: BLE001 - a planner's bug or a reply it choked on: log, go on
                return self._planner_error(f"the planner failed: {type(exc).__name__}: {str(exc)[:300]}")
            self._log_planner_notices()
        if proposal is None:
            why = getattr(self.planner, "stop_reason", None)
            return (why() if why is not None else "") or "the planner has nothing more to propose"
        llm_error = getattr(self.planner, "last_error", "")
        if llm_error:  # the LLM was down or unusable: this candidate comes from the fallback
            self.registry.log_event("llm_fallback", f"LLM unusable, fallback proposal: {llm_error[:300]}")
            if self.view is not None:
                self.view.message(f"LLM unusable ({llm_error[:160]}); this candidate comes from the fallback planner")
        try:
            proposal = self._with_run_settings(proposal)
            source, failure = self._assemble(proposal)
            cid = self.registry.add_candidate(proposal, source)
        except Exception as exc:  # noqa: BLE001 - e.g. text SQLite cannot store; nothing was added
            return self._planner_error(f"the proposal could not be recorded: {type(exc).__name__}: {str(exc)[:300]}")
        self._planner_errors = 0
        if failure is not None:
            record = self.registry.finish_candidate(cid, failure=failure)
            history.append(self._observe(record))
            return ""
        self.registry.mark_running(cid)
        self.state.in_flight[cid] = {"proposal": proposal, "seed": None, "epoch": 0, "val_acc": None,
                                     "submitted": time.monotonic()}
        in_flight[workers.submit(self._evaluate, cid, proposal, source)] = (cid, proposal)
        self._refresh_view()
        return ""

    def _log_planner_notices(self) -> None:
        """Record and show what the planner wants the user to know (e.g. why no final training comes)."""
        take = getattr(self.planner, "take_notices", None)
        for notice in take() if take is not None else ():
            self.registry.log_event("planner_note", notice)
            if self.view is not None:
                self.view.message(notice)

    def _planner_error(self, message: str) -> str:
        """Log a planner failure; after ``MAX_PLANNER_ERRORS`` in a row, the loop stops (why, or '')."""
        self._planner_errors += 1
        self.registry.log_event("planner_error", message)
        if self._planner_errors >= MAX_PLANNER_ERRORS:
            return f"the planner failed {self._planner_errors} times in a row (last: {message[:200]})"
        return ""

    def _with_run_settings(self, proposal: Proposal) -> Proposal:
        """The run's seeds, the dataset's flip rule and the candidate's deadline replace whatever the
        planner set; a deadline the planner set (``train.time_budget_s`` > 0) shortens the loop's."""
        from evaluator.augment import flips_preserve_labels

        deadline = self._candidate_budget_s()
        planned = proposal.train.time_budget_s
        if planned > 0 and math.isfinite(planned):
            deadline = min(deadline, max(MIN_CANDIDATE_S, planned))
        train = msgspec.structs.replace(proposal.train, seeds=self.settings.seeds,
                                        hflip_ok=flips_preserve_labels(self.facts.name),
                                        time_budget_s=deadline)
        return msgspec.structs.replace(proposal, train=train)

    def _time_left_s(self) -> float | None:
        """Seconds left of the run's time budget (None: no time budget)."""
        limit = self.settings.time_budget_s
        return None if not limit else max(0.0, limit - (time.monotonic() - self.state.started))

    def _candidate_cap_s(self) -> float:
        """The most one candidate may train: a share of the sandbox's hard limit, less a margin."""
        return max(MIN_CANDIDATE_S, SANDBOX_SHARE * self.config.timeout_s - SANDBOX_MARGIN_S)

    def _candidate_budget_s(self) -> float:
        """Seconds the worker may train this candidate (all seeds) before it stops by itself.

        Inside the sandbox's hard limit with room for start-up and predictions, so a long
        candidate ends truncated with its best weights and predictions instead of killed;
        and no further than the run's time budget allows, less what recent candidates spent
        besides training (``SANDBOX_MARGIN_S`` before any has finished), but never under a minimum.
        """
        budget = self._candidate_cap_s()
        left = self._time_left_s()
        if left is not None:
            overhead = statistics.median(self._overheads) if self._overheads else SANDBOX_MARGIN_S
            budget = min(budget, max(MIN_CANDIDATE_S, left - overhead))
        return float(budget)

    def _note_overhead(self, entry: dict, result: JobResult) -> None:
        """Keep how long a finished candidate took besides its seeds' training (wall less training).

        The training seconds are the worker's word, so they are held within the job's time as
        the host measured it, the overhead is capped, and the budget reads the median of the
        last few: one lying candidate cannot shorten the others' training.
        """
        submitted = entry.get("submitted")
        if submitted is None or not result.predictions:
            return
        job = result.seconds
        trained = min(sum(min(max(p.seconds, 0.0), job) if math.isfinite(p.seconds) else 0.0
                          for p in result.predictions), job)
        self._overheads.append(min(max(time.monotonic() - submitted - trained, 0.0), MAX_OVERHEAD_S))

    def _assemble(self, proposal: Proposal) -> tuple[str, Failure | None]:
        if proposal.config is not None:
            try:
                return render(proposal.config, input_shape=self.facts.input_shape,
                              num_classes=self.facts.num_classes, class_name=proposal.class_name), None
            except (InvalidConfig, ValueError) as exc:
                return "", Failure(stage=Stage.COMPILE, kind=FailureKind.SYNTAX_ERROR,
                                   message=f"the assembler refused the config: {exc}")
        try:
            return proposal.source or "", syntax_failure(proposal.source or "")
        except (RecursionError, MemoryError, ValueError) as exc:  # nested past the parser's limits
            return proposal.source or "", Failure(stage=Stage.COMPILE, kind=FailureKind.SYNTAX_ERROR,
                                                  message=f"the source cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}")

    def _evaluate(self, cid: str, proposal: Proposal, source: str) -> Evaluation:
        """Worker thread: one candidate in one fresh sandbox, scored on the host."""
        job = Job(job_id=cid, source=source, class_name=proposal.class_name, input_shape=self.facts.input_shape,
                  num_classes=self.facts.num_classes, device=self.config.device, threads=self.config.threads,
                  train=proposal.train, data=self.data_spec)
        result = self._execute(cid, proposal, job)
        if result.failure is not None or result.stopped:
            return Evaluation(result=result, failure=result.failure)
        try:
            scores, selection, dynamics = score_result(result, self.prepared)
        except Exception as exc:  # noqa: BLE001 - the worker's data, however odd, fails only this candidate
            return Evaluation(result=result, failure=unprocessable(Stage.PREDICT, "score", exc))
        return Evaluation(result=result, scores=scores, selection=selection, dynamics=dynamics)

    def _execute(self, cid: str, proposal: Proposal, job: Job) -> JobResult:
        """Run the job in a slot; on a cluster, a node lost under it costs one retry on another node."""
        tries = 1 + getattr(self.pool, "node_retries", 0)
        avoid = None
        for attempt in range(1, tries + 1):
            slot = self.pool.acquire(avoid=avoid) if avoid else self.pool.acquire()
            node = getattr(slot, "node", None)
            if node is not None:
                self.state.in_flight.get(cid, {})["node"] = node
                self.registry.log_event("candidate_placed", f"candidate {cid} runs on node {node}"
                                        + (f" (try {attempt} of {tries})" if attempt > 1 else ""),
                                        candidate=cid, node=node, attempt=attempt)
            with slot:
                with self._slots_lock:
                    self._slots[cid] = slot
                try:
                    return execute(slot, job, n_test=self.prepared.n_eval,
                                   on_message=lambda msg: self._on_message(cid, proposal, msg))
                except NodeLost as exc:
                    lost = getattr(self.pool, "lost", None)
                    if lost is not None:
                        lost(exc.node, exc.detail)
                    entry = self.state.in_flight.get(cid, {})
                    entry.pop("curves", None)  # the retry's epochs start again
                    last = attempt == tries
                    self.registry.log_event("candidate_node_lost", f"candidate {cid}: {exc}; "
                                            + ("recorded as crashed" if last else "retrying on another node"),
                                            candidate=cid, node=exc.node, attempt=attempt)
                    if last:
                        return JobResult(job_id=cid, failure=Failure(
                            stage=Stage.TRAIN, kind=FailureKind.CRASHED,
                            message=f"node {exc.node} was lost mid-candidate ({str(exc)[:300]}), "
                                    f"after {attempt} tries on cluster nodes"))
                    avoid = exc.node
                finally:
                    with self._slots_lock:
                        self._slots.pop(cid, None)
        raise AssertionError("unreachable")

    def _on_message(self, cid: str, proposal: Proposal, msg) -> bool:
        """Worker thread: track progress; True stops the job (pruned). Never raises."""
        try:
            return self._track(cid, proposal, msg)
        except Exception as exc:  # noqa: BLE001 - a pruning or view error must not end the candidate
            self.state.in_flight.get(cid, {}).setdefault("errors", []).append(f"{type(exc).__name__}: {exc}"[:300])
            return False

    def _track(self, cid: str, proposal: Proposal, msg) -> bool:
        entry = self.state.in_flight.get(cid)
        if entry is None:
            return False
        if isinstance(msg, CheckReport):
            entry["params"] = msg.params
        elif isinstance(msg, Batches):
            if msg.seed != entry.get("seed"):  # the next seed: the last one's epoch and val acc are not its own
                entry.update(epoch=0, val_acc=None)
            entry.update(seed=msg.seed, epochs=msg.epochs, batch=(msg.epoch, msg.step, msg.steps), phase=msg.phase)
            if msg.phase != "predict":  # predicting says nothing of the epochs planned
                entry["planned"] = msg.planned or msg.epochs
        elif isinstance(msg, Progress):
            entry.update(seed=msg.seed, epoch=msg.stats.epoch, epochs=msg.epochs, val_acc=msg.stats.val_acc,
                         batch=None)
            if logs.epochs.isEnabledFor(logging.INFO):
                logs.epochs.info("%s %s", cid, logs.epoch_line(msg.stats, msg.seed, msg.epochs))
            entry.setdefault("curves", {}).setdefault(msg.seed, []).append(msg.stats)
            if msg.seed == proposal.train.seeds[0]:
                with self._planner_lock:
                    if should_prune(self.planner, cid, msg.stats.epoch, msg.stats.val_acc, proposal=proposal):
                        entry["pruned"] = True
                        return True
        elif isinstance(msg, Predictions):
            entry["seeds_done"] = entry.get("seeds_done", 0) + 1
            entry["batch"] = None
        return False

    def _record(self, cid: str, proposal: Proposal, future: Future) -> Outcome:
        """Main thread: store a finished candidate and tell the planner.

        Whatever the candidate's data does to scoring, dynamics, the registry's
        encoders or the plots, it ends as this candidate's recorded failure; only an
        unusable sandbox (no engine, no image) goes on up and ends the run.
        """
        entry = self.state.in_flight.pop(cid, {})
        try:
            evaluation: Evaluation = future.result()
        except SandboxUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001
            evaluation = Evaluation(result=JobResult(job_id=cid), failure=unprocessable(Stage.PROTOCOL, "handle", exc))
        self._note_overhead(entry, evaluation.result)
        try:
            record = self._finish(cid, evaluation, entry)
        except Exception as exc:  # noqa: BLE001 - store the failure alone, without the data that broke it
            record = self._finish_bare(cid, unprocessable(Stage.PROTOCOL, "record", exc), evaluation.result.seconds)
        return self._observe(record)

    def _finish(self, cid: str, evaluation: Evaluation, entry: dict) -> CandidateRecord:
        result = evaluation.result
        # finished seeds' curves come with their predictions; a stopped seed's from its Progress
        curves = {seed: tuple(stats) for seed, stats in entry.get("curves", {}).items()}
        curves.update({p.seed: p.curves for p in result.predictions})
        pruned = bool(entry.get("pruned")) and result.stopped
        failure = evaluation.failure
        if result.stopped and not pruned and failure is None:
            failure = Failure(stage=Stage.TRAIN, kind=FailureKind.TIMEOUT, message="stopped by the orchestrator")
        return self.registry.finish_candidate(
            cid, check=result.check, scores=evaluation.scores, selection=evaluation.selection,
            dynamics=evaluation.dynamics, failure=failure, curves=curves, seconds=result.seconds, pruned=pruned,
            truncated=any(p.truncated for p in result.predictions),
        )

    def _finish_bare(self, cid: str, failure: Failure, seconds: float) -> CandidateRecord:
        """Record ``failure`` alone; if the first write got as far as committing, keep that record."""
        record = self.registry.candidate(cid)
        if record.status in ("queued", "running"):
            record = self.registry.finish_candidate(cid, failure=failure, seconds=seconds)
        else:
            self.registry.log_event("candidate_error", f"candidate {cid}: {failure.message}", candidate=cid)
        return record

    def _observe(self, record: CandidateRecord) -> Outcome:
        outcome = record.outcome(self.target.metric)
        with self._planner_lock:
            try:
                self.planner.observe(outcome)
            except Exception as exc:  # noqa: BLE001 - a planner that chokes on an outcome skips it
                self.registry.log_event("planner_error", f"the planner could not take {record.id}'s outcome: "
                                        f"{type(exc).__name__}: {str(exc)[:300]}", candidate=record.id)
        self.state.finished += 1
        if record.status == "failed":
            self.state.failed += 1
        if self.view is not None:
            try:
                self.view.candidate_finished(record)
            except Exception as exc:  # noqa: BLE001 - the terminal view is never worth a run
                self.registry.log_event("view_error", f"{type(exc).__name__}: {str(exc)[:300]}")
        return outcome

    def _refresh_view(self) -> None:
        if self.view is not None:
            self.view.refresh(self)

    data_spec = None  # set by the caller: the DataSpec of the run's prepared arrays


def unprocessable(stage: Stage, doing: str, exc: BaseException) -> Failure:
    """The failure of a candidate whose data the host could not ``doing`` (score, handle, record)."""
    try:
        detail = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - even str() of a hostile value can raise
        detail = type(exc).__name__
    return Failure(stage=stage, kind=FailureKind.PROTOCOL_VIOLATION,
                   message=f"the host could not {doing} this candidate's data ({detail[:500]}); "
                           "the candidate is failed and the run goes on")


def _interrupted(record: CandidateRecord) -> bool:
    return record.failure is not None and record.failure.message.startswith(INTERRUPTED) \
        and record.failure.kind is FailureKind.CRASHED
