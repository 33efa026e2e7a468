"""The offline planner: Optuna's TPE ask-and-tell over models and recipes, with Hyperband.

Each search proposal is one Optuna trial over a typed space (``planning.space``): the
architecture and the training recipe together. The first trials are known-good points
(a small CNN, then a ResNet with the field's standard recipe; an MLP for tables) so
the search does not start blind. Epochs are the fidelity: every trial is planned for
the space's ``max_epochs`` and a Hyperband pruner (``optuna.pruners.HyperbandPruner``,
rungs every ``reduction_factor`` x from ``min_epochs``) stops the weak ones through
:meth:`OfflinePlanner.report_epoch`: many short runs, the full budget for the best.

Budget: the loop calls :meth:`OfflinePlanner.set_budget` before each ``propose``. The
planner estimates each candidate's time from measured epochs (``planning.budget``)
and plans it shorter, or swaps it for a smaller model, when it would not fit the time
left; with too little time for any of them it returns None. What remains at the end
goes to one longer final training of the best design by ``Outcome.mean`` (the
selection metric): its config and recipe, on train + val, for the epochs that fill ``budget.FINAL_SHARE``
of a budgeted run (3x its epochs without a budget; at most ``final_epochs_factor`` x), a
proposal whose ``params[FINAL_OF]`` names the candidate it retrains and whose ``ref``
ends in ``:final``. It is proposed exactly once per run (a resume finds it in the
history): when the search no longer fits beside it, when one candidate is left, or
when ``max_trials`` search trials are spent.

Results are told back as they arrive, in any order; a failed candidate is told as FAIL
(no fake score) and one stopped by pruning as PRUNED. The study lives in memory and
is rebuilt from the recorded history on resume: every proposal carries its search
point (``Proposal.params``) and a ``ref`` naming its trial, and the sampler is
re-seeded from (seed, trial number) before each ask, so a resumed planner makes the
same next proposal as one that was never interrupted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import msgspec
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.exceptions import ExperimentalWarning
from optuna.pruners import BasePruner, HyperbandPruner, NopPruner, SuccessiveHalvingPruner
from optuna.samplers import TPESampler
from optuna.trial import TrialState

from orchestrator import units
from orchestrator.exceptions import ResearcherError, UsageError
from orchestrator.planning.assembler import DEFAULT_MAX_PARAMS, analyze
from orchestrator.planning.budget import Budget, EpochTimer, epoch_seeds, shortest_final
from orchestrator.planning.space import Params, SearchSpace, space_for
from orchestrator.planning.types import (  # FINAL_OF, final_training_of: re-exported
    FINAL_OF,
    PlannerFacts,
    InvalidConfig,
    Outcome,
    ParamValue,
    Proposal,
    Target,
    final_training_of,
    parse_train_spec,
)
from sandbox_image.protocol import TrainSpec

PrunerKind = Literal["hyperband", "halving", "none"]

_MAX_REJECTED = 50  # samples in a row the assembler may refuse before we give up
_MAX_OVER_BUDGET = 8  # samples in a row that do not fit the time left before we stop searching
_PRUNE_STARTUP = 3  # finished trials before a pruning decision is acted on
_SMALLER = ", made smaller to fit"


class _OverBudget(Exception):
    """A sampled candidate whose estimated time does not fit what is left."""


class OfflinePlanner:
    """Seeded, resumable, budget-aware TPE + Hyperband search; a ``PruningPlanner``."""

    def __init__(self, facts: PlannerFacts, target: Target = Target(), *, seed: int = 0,
                 study_name: str = "offline", max_trials: int | None = None,
                 train_defaults: TrainSpec = TrainSpec(), epochs: tuple[int, int] | None = None,
                 max_params: int = DEFAULT_MAX_PARAMS, n_startup_trials: int = 10,
                 pruner: PrunerKind = "hyperband", reduction_factor: int = 3,
                 flips: bool | None = None, device: str = "cpu",
                 final_epochs_factor: float = 10.0) -> None:
        if epochs is not None and not 1 <= epochs[0] <= epochs[1]:
            raise UsageError(f"epochs range {epochs} must be (low, high) with 1 <= low <= high")
        if pruner not in ("hyperband", "halving", "none") or reduction_factor < 2:
            raise UsageError(f"pruner {pruner!r} with reduction factor {reduction_factor}: use "
                             "hyperband, halving or none, and a factor >= 2")
        if not 1.0 < final_epochs_factor <= 10.0:
            raise UsageError(f"final_epochs_factor {final_epochs_factor} must be in (1, 10]")
        self.facts, self.target, self.seed = facts, target, seed
        self.space: SearchSpace = space_for(facts, epochs, flips=_flips(facts, flips))
        self.max_trials, self.max_params = max_trials, max_params
        self._train_defaults, self._n_startup = train_defaults, n_startup_trials
        self._final_factor = final_epochs_factor
        self._prefix = f"optuna:{study_name}:"
        self._pending: dict[str, optuna.Trial] = {}  # asked, not yet told
        self._done: set[str] = set()  # told or rebuilt
        self._pruned: set[str] = set()
        self._protected: set[str] = set()  # the start points: never pruned
        self._reported: dict[str, set[int]] = {}
        self._queue: list[tuple[str, Params]] = []  # (label, point) to enqueue next
        self._next = 0  # trial number of the next ask; survives rebuilds
        self._final: str | None = None  # candidate id retrained by the final training, once
        self._budget = Budget(EpochTimer.for_device(device), seeds=len(train_defaults.seeds))
        if facts.n_train > 0 and facts.n_val > 0:  # a final trains on train + val
            self._budget.final_scale = (facts.n_train + facts.n_val) / facts.n_train
        self._timed: set[str] = set()  # candidate ids measured
        self._best: Outcome | None = None  # the best design in the history, as of the last propose
        self._notices: list[str] = []  # for the user, taken by the loop (``take_notices``)
        self._noted: set[str] = set()  # designs already said to be too long for a final
        self._stop_reason = ""  # why the last propose returned None, for the user
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # tell() logs every trial at INFO
        self.study = optuna.create_study(
            direction=target.direction, sampler=self._sampler(0), study_name=study_name,
            pruner=self._make_pruner(pruner, reduction_factor))

    # ------------------------------------------------------------- Planner protocol

    def set_budget(self, seconds_left: float | None, *, candidate_s: float | None = None,
                   candidates_left: int | None = None) -> None:
        """What the run has left: wall seconds, the most one candidate may train, candidates.

        Called by the loop before each ``propose``; None means unlimited.
        """
        self._budget.set(seconds_left, candidate_s, candidates_left)

    def propose(self, history: Sequence[Outcome]) -> Proposal | None:
        """The final training when it is due, else the next trial that fits; None to stop."""
        best = self._learn(history)
        if self._final_due(best):
            return self._final_or_stop(best, self._out_of_room)
        if self.max_trials is not None \
                and len(self._pending) + len(self._done) >= self.max_trials:
            return self._final_or_stop(best, lambda: f"the search's {self.max_trials} trials were all proposed")
        over_budget = 0
        for _ in range(_MAX_REJECTED):
            proposal, why = self._ask()
            if proposal is not None:
                return proposal
            over_budget += why == "over budget"
            if over_budget >= _MAX_OVER_BUDGET:  # nothing fits beside the final: train it now
                return self._final_or_stop(best, self._out_of_room)
        raise ResearcherError(f"the search space for {self.facts.name!r} produced "
                              f"{_MAX_REJECTED} unusable configs in a row; raise max_params "
                              "or narrow the epochs range")

    def final_if_due(self, history: Sequence[Outcome]) -> Proposal | None:
        """The final training of the best design in ``history`` once the time budget has no room
        for another candidate beside it, else None.

        For a planner that searches by its own means (the LLM's) and leaves the final to this
        one: the designs may be anyone's, and ``--max-candidates`` is not a reason here (the
        candidates are the other planner's to propose). Proposed once, like ``propose``'s.
        """
        best = self._learn(history)
        return self._final_proposal(best) if self._final_due(best, last_candidate=False) else None

    def candidate_limit(self) -> float | None:
        """Seconds a search candidate may train now (None: no limit): at most one candidate's
        cap and, with a time budget, the time left less the final training's reserve."""
        limit = self._budget.search_limit(None if self._final is not None else self._reserve())
        return None if limit is None else max(limit, 0.0)

    def no_room(self, least_epochs: int = 1) -> str:
        """Why no further search candidate fits the run's time budget now ('' when one may).

        For a planner that searches by its own means (the LLM's), asked before each of its
        candidates once ``final_if_due`` has had its turn: with no time left beside the final
        training (or after it), or less than the quickest design measured needs for
        ``least_epochs``, the run should end rather than start a candidate it cannot afford.
        """
        budget = self._budget
        limit = self.candidate_limit()
        if budget.seconds_left is None or limit is None:
            return ""
        cheapest = budget.cheapest(least_epochs)
        if limit > 0 and (cheapest is None or limit >= cheapest):
            return ""
        return self._out_of_room(least_epochs)

    def fit(self, proposal: Proposal, *, least_epochs: int = 1) -> tuple[Proposal, str]:
        """Another planner's search candidate (the LLM's) held to the time this one's would get.

        Call after ``final_if_due`` (which learns the history). The candidate may train no
        longer than this planner's own may now (``Budget.search_limit``: the time left less
        the final training's reserve): that limit becomes its ``train.time_budget_s``, at
        which the worker stops it, truncated, with its best weights. A config whose size the
        timer can estimate is also planned for fewer epochs (never under ``least_epochs``)
        where its own would not fit, so its schedule still runs to its end. Returns the
        proposal and what was changed, in words ('' when nothing was).
        """
        budget = self._budget
        limit = self.candidate_limit()
        if limit is None or final_training_of(proposal) is not None:
            return proposal, ""
        epochs, note = proposal.train.epochs, ""
        try:
            per_epoch = self._per_epoch(proposal)
        except InvalidConfig:
            per_epoch = None
        if per_epoch is not None:
            fitted = max(least_epochs, min(epochs, budget.epochs_within(limit, per_epoch)))
            if fitted < epochs:
                note = (f"planned for {fitted} epochs instead of {epochs} to fit the {limit:.0f} s a "
                        f"candidate may now train ({units.estimate(budget.cost(per_epoch, fitted))})")
                epochs = fitted
        if not note and budget.seconds_left is not None:
            note = (f"may train {limit:.0f} s at most of the {budget.seconds_left:.0f} s left "
                    "(time is kept for a final training)")
        train = parse_train_spec(msgspec.structs.replace(proposal.train, epochs=epochs, time_budget_s=limit))
        return msgspec.structs.replace(proposal, train=train), note

    def observe(self, outcome: Outcome) -> None:
        """Tell the study how a candidate did; outcomes may arrive in any order."""
        self._measure(outcome)
        final_of = final_training_of(outcome.proposal)
        if final_of is not None and outcome.proposal.ref.startswith(self._prefix):
            self._final = self._final or final_of
            return
        ref = outcome.proposal.ref
        if not ref.startswith(self._prefix) or ref in self._done:
            return  # another planner's proposal, or already told
        if ref in self._pending:
            self._tell(ref, outcome)
        else:
            self._rebuild(outcome)

    def report_epoch(self, candidate_id: str, epoch: int, value: float, *,
                     proposal: Proposal) -> bool:
        """Record val accuracy after ``epoch`` (1 = first); True means prune this candidate.

        Hyperband decides at its rungs; a start point, a candidate at its last planned
        epoch, and any candidate while fewer than three trials have finished are never
        pruned (the rungs still record their values, for later candidates to compete with).
        """
        ref = proposal.ref
        if ref in self._pruned:
            return True
        trial = self._pending.get(ref)
        if trial is None or not self.target.maximize or not math.isfinite(value):
            return False  # unknown or finished candidate; val accuracy only guides maximising
        steps = self._reported.setdefault(ref, set())
        if epoch in steps:  # several seeds report the same epoch; the first one counts
            return False
        steps.add(epoch)
        trial.report(value, epoch)
        if not trial.should_prune():
            return False
        if epoch >= proposal.train.epochs or ref in self._protected \
                or self._finished() < _PRUNE_STARTUP:
            return False
        self._pruned.add(ref)
        return True

    def take_notices(self) -> list[str]:
        """What the user should know about the plan since the last call (each said once)."""
        notices, self._notices = self._notices, []
        return notices

    def stop_reason(self) -> str:
        """Why the last ``propose`` returned None, in words for the user ('' when it did not)."""
        return self._stop_reason

    # ------------------------------------------------------------- what we know

    @property
    def best(self) -> tuple[float, str] | None:
        """Best (value, candidate id) of the search told so far, or None before any success."""
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            return None
        trial = self.target.best(done, lambda t: t.value)
        return float(trial.value), str(trial.user_attrs.get("candidate", trial.number))

    @property
    def final_proposed(self) -> str | None:
        """The candidate id the final training retrains, once it has been proposed."""
        return self._final

    def estimate_seconds(self, proposal: Proposal) -> float | None:
        """Estimated wall seconds of ``proposal`` (all seeds, padded), or None before measurements.

        A final training is timed by the candidate it retrains; others by the fitted timer.
        """
        retrained = final_training_of(proposal)
        per_epoch = None if retrained is None else self._budget.final_per_epoch(retrained)
        if per_epoch is None:
            per_epoch = self._per_epoch(proposal)
        return None if per_epoch is None else self._budget.cost(per_epoch, proposal.train.epochs)

    def _per_epoch(self, proposal: Proposal) -> float | None:
        """The timer's seconds per epoch and seed for ``proposal``'s config (None: no config, or untimed)."""
        return None if proposal.config is None else self._budget.timer.per_epoch(self._macs(proposal))

    # ------------------------------------------------------------- search trials

    def _make_pruner(self, kind: PrunerKind, factor: int) -> BasePruner:
        lo, hi = self.space.min_epochs, self.space.max_epochs
        if kind == "hyperband":
            return HyperbandPruner(min_resource=lo, max_resource=hi, reduction_factor=factor)
        if kind == "halving":
            return SuccessiveHalvingPruner(min_resource=lo, reduction_factor=factor)
        return NopPruner()

    def _sampler(self, number: int) -> TPESampler:
        """A TPE sampler seeded by (seed, trial number), so a resume reproduces the run."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # ``group`` is experimental
            return TPESampler(seed=(self.seed * 1_000_003 + number) % 2 ** 32,
                              n_startup_trials=self._n_startup, multivariate=True, group=True,
                              constant_liar=True)

    def _ask(self) -> tuple[Proposal | None, str]:
        """Ask one trial and turn it into a proposal; (None, why) if it is refused."""
        number, ref = self._next, f"{self._prefix}{self._next}"
        self._next += 1
        self.study.sampler = self._sampler(number)
        if number == 0 and not self.study.trials:
            self._queue = list(self.space.starts)
        label = ""
        if self._queue:
            label, point = self._queue.pop(0)
            self.study.enqueue_trial(dict(point))
        trial = self.study.ask()
        trial.set_user_attr("ref", ref)
        params = self.space.sample(trial)
        try:
            proposal = self._proposal(ref, number, params, label)
        except (InvalidConfig, _OverBudget) as exc:
            over = isinstance(exc, _OverBudget)
            trial.set_user_attr("over_budget" if over else "rejected", str(exc))
            self.study.tell(trial, state=TrialState.FAIL)
            smaller = self.space.cheaper(params) if over or label else None
            if smaller is not None:  # the same idea, smaller, is the next trial
                smaller_label = label if label.endswith(_SMALLER) or not label \
                    else f"{label}{_SMALLER}"
                self._queue.insert(0, (smaller_label, smaller))
            return None, "over budget" if over else "rejected"
        if label:
            self._protected.add(ref)
        self._pending[ref] = trial
        return proposal, ""

    def _proposal(self, ref: str, number: int, params: Params, label: str) -> Proposal:
        config, _ = self.space.build(params)
        analysis = analyze(config, input_shape=self.facts.input_shape,
                           num_classes=self.facts.num_classes, max_params=self.max_params)
        epochs, seconds = self._fit(analysis.macs)
        config, fields = self.space.build(params, epochs)
        train = parse_train_spec(msgspec.structs.replace(self._train_defaults, **fields))
        described = f"{self.space.describe(params)}; {analysis.params:,} parameters"
        described += f", {epochs} epochs"
        if epochs < self.space.max_epochs:
            described += f" (of {self.space.max_epochs}, to fit the time left)"
        if seconds is not None:
            described += f", {units.estimate(seconds)}"
        return Proposal(config=config, train=train, ref=ref, params=params,
                        rationale=self._rationale(number, described, label))

    def _fit(self, macs: int) -> tuple[int, float | None]:
        """Epochs to plan for ``macs`` per example, and their seconds; _OverBudget if none fit."""
        lo, hi = self.space.min_epochs, self.space.max_epochs
        budget = self._budget
        per_epoch = budget.timer.per_epoch(macs)
        limit = self.candidate_limit()
        if per_epoch is None:
            return hi, None
        epochs = hi if limit is None else min(hi, budget.epochs_within(limit, per_epoch))
        if epochs < lo:
            raise _OverBudget(f"{lo} epochs would take about {budget.cost(per_epoch, lo):.0f} s; "
                              f"{limit:.0f} s are left for the search")
        return epochs, budget.cost(per_epoch, epochs)

    def _rationale(self, number: int, described: str, label: str) -> str:
        if label:
            return f"TPE trial {number}: {label} to start from ({described})"
        best = self.best
        so_far = f"best so far {best[0]:.4f} ({best[1]})" if best else "no result yet"
        finished = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        phase = "random start-up sample" if finished < self._n_startup else "TPE sample"
        return f"TPE trial {number} ({phase}); {so_far}; sampled {described}"

    def _finished(self) -> int:
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        return len(self.study.get_trials(deepcopy=False, states=states))

    # ------------------------------------------------------------- budget and the final run

    def _learn(self, history: Sequence[Outcome]) -> Outcome | None:
        """Catch up with ``history`` (trials, timings, notices); the best design in it."""
        self._sync(history)
        self._stop_reason = ""
        for outcome in history:
            self._measure(outcome)
        self._best = best = self._best_design(history)
        self._note_final_over_cap(best)
        return best

    def _measure(self, outcome: Outcome) -> None:
        """Learn what a finished candidate cost (once per candidate)."""
        cid, proposal = outcome.candidate_id, outcome.proposal
        if proposal.train.seeds:
            self._budget.seeds = len(proposal.train.seeds)  # the loop's seeds, as it ran every candidate
        if cid in self._timed or not outcome.val_curve:
            return
        self._timed.add(cid)
        done = epoch_seeds(len(outcome.val_curve), len(proposal.train.seeds), outcome.pruned)
        macs = None  # a final (train + val) would skew the timer's fit: kept for itself only
        if proposal.config is not None and not proposal.train.fit_val:
            try:
                macs = self._macs(proposal)
            except InvalidConfig:
                pass
        self._budget.measure(cid, macs, outcome.seconds, done)

    def _macs(self, proposal: Proposal) -> int:
        assert proposal.config is not None
        return analyze(proposal.config, input_shape=self.facts.input_shape,
                       num_classes=self.facts.num_classes, max_params=2 ** 62).macs

    def _best_design(self, history: Sequence[Outcome]) -> Outcome | None:
        """The passed, unpruned candidate with the best selection mean (never a final training)."""
        best = None
        for outcome in history:
            scored = outcome.status == "passed" and not outcome.pruned \
                and outcome.mean is not None and math.isfinite(outcome.mean)
            if scored and final_training_of(outcome.proposal) is None \
                    and self.target.better(outcome.mean, best.mean if best else None):
                best = outcome
        return best

    def _final_plan(self, best: Outcome | None) -> tuple[int, float | None] | None:
        """(epochs, estimated seconds) of the final training of ``best``; None if not worth it."""
        if best is None:
            return None
        return self._budget.final_plan(best.candidate_id, best.proposal.train.epochs,
                                       self._final_factor)

    def _note_final_over_cap(self, best: Outcome | None) -> None:
        """Say once per design when only one candidate's limit keeps the best one from a final training.

        Without this a run would simply search to its end, and the user would not learn why the
        best design was never trained longer (an hour's run on 2 cores met it: 1614 s needed,
        1440 s allowed).
        """
        budget = self._budget
        if self._final is not None or best is None or best.candidate_id in self._noted \
                or budget.candidate_s is None or self._final_plan(best) is not None:
            return
        per_epoch = budget.final_per_epoch(best.candidate_id)
        epochs = shortest_final(best.proposal.train.epochs)
        if per_epoch is None or (needed := budget.cost(per_epoch, epochs)) <= budget.candidate_s:
            return  # not the limit's doing
        if budget.seconds_left is not None and needed > budget.seconds_left:
            return  # the run's time budget has no room for it either: a longer --timeout would not help
        self._noted.add(best.candidate_id)
        self._notices.append(
            f"no final training of the best design so far ({best.candidate_id}): even {epochs} epochs on "
            f"train + val would take about {needed:.0f} s, more than the {budget.candidate_s:.0f} s one candidate "
            "may take; raise --timeout to give it one")

    def _reserve(self) -> float:
        """Seconds kept for the final training: its planned time with ``FINAL_SLACK`` while the
        plan still fits (at most what is left), else 0."""
        plan = self._final_plan(self._best)
        left = self._budget.seconds_left
        if plan is None or plan[1] is None or left is None or plan[1] > left:
            return 0.0  # no final to keep time for, or it no longer fits: the search has it all
        return self._budget.kept_for_final(plan[1])

    def _final_due(self, best: Outcome | None, *, last_candidate: bool = True) -> bool:
        """True when the final training should be the next proposal (with ``last_candidate``,
        also because one candidate is left of ``--max-candidates``)."""
        if self._final is not None or best is None or (plan := self._final_plan(best)) is None:
            return False
        budget = self._budget
        if last_candidate and budget.candidates_left is not None and budget.candidates_left <= 1:
            return True
        cheapest = budget.cheapest(self.space.min_epochs)
        if budget.seconds_left is None or plan[1] is None or cheapest is None:
            return False
        if plan[1] > budget.seconds_left:  # too late for the plan: a shorter final now, or none
            epochs = budget.fit_left(best.candidate_id, plan[0])
            return epochs >= shortest_final(best.proposal.train.epochs)
        # no search candidate fits beside it, with the slack kept for estimates that run over
        return budget.seconds_left - budget.kept_for_final(plan[1]) < cheapest

    def _final_or_stop(self, best: Outcome | None, why: Callable[[], str]) -> Proposal | None:
        """The final training, or None with ``why()`` kept as the reason the search stops."""
        final = self._final_proposal(best)
        if final is None:
            self._stop_reason = why()
        return final

    def _out_of_room(self, epochs: int | None = None) -> str:
        """Why no candidate fits: the run's time left, or one candidate's limit (then: --timeout);
        ``epochs``: the fewest a candidate trains (default: the search space's)."""
        budget = self._budget
        left, cap = budget.seconds_left, budget.candidate_s
        epochs = self.space.min_epochs if epochs is None else epochs
        cheapest = budget.cheapest(epochs)
        need = "" if cheapest is None else (f" (the quickest design measured needs about {cheapest:.0f} s "
                                            f"for {epochs} epoch{'' if epochs == 1 else 's'})")
        if left is not None and (cap is None or left <= cap):
            return f"time budget nearly spent: the {left:.0f} s left fit no further candidate{need}"
        if cap is not None:
            return f"no candidate fits the {cap:.0f} s one candidate may take{need}; raise --timeout"
        return "no candidate of the search space fits"

    def _final_proposal(self, best: Outcome | None) -> Proposal | None:
        """The best design trained longer with what is left; None if done or not worth it."""
        if self._final is not None or best is None or (plan := self._final_plan(best)) is None:
            return None
        base, epochs = best.proposal.train.epochs, self._budget.fit_left(best.candidate_id, plan[0])
        if epochs < shortest_final(base):
            return None
        # time_budget_s: the loop's deadline as the best design ran, not one for the final
        train = parse_train_spec(msgspec.structs.replace(best.proposal.train, epochs=epochs, fit_val=True,
                                                         time_budget_s=0.0))
        self._final = best.candidate_id
        per_epoch = self._budget.final_per_epoch(best.candidate_id)
        about = "" if per_epoch is None else f", {units.estimate(self._budget.cost(per_epoch, epochs))}"
        params: dict[str, ParamValue] = {FINAL_OF: best.candidate_id, "epochs": epochs,
                                         "base_epochs": base}
        return msgspec.structs.replace(
            best.proposal, train=train, parent=best.candidate_id, ref=f"{self._prefix}final",
            params=params,
            rationale=(f"final training of {best.candidate_id} (best selection "
                       f"{best.metric or 'metric'} {best.mean:.4f}): the same design and recipe "
                       f"for {epochs} epochs instead of {base}, on train + val{about}, with the time left"))

    # ------------------------------------------------------------- telling and resuming

    def _tell(self, ref: str, outcome: Outcome) -> None:
        trial = self._pending.pop(ref)
        self._done.add(ref)
        trial.set_user_attr("candidate", outcome.candidate_id)
        reported = self._reported.setdefault(ref, set())
        for epoch, value in enumerate(outcome.val_curve, start=1):
            if epoch in reported or not math.isfinite(value):
                continue  # epochs reported live are in the trial already
            reported.add(epoch)
            trial.report(value, epoch)
            if self.target.maximize:
                trial.should_prune()  # records the rungs this epoch completes, as live
        value = self._value(outcome)
        if ref in self._pruned or outcome.pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
        elif value is None:
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, value)

    def _value(self, outcome: Outcome) -> float | None:
        """The score to tell, or None when the candidate has none (failed)."""
        if outcome.status != "passed" or outcome.mean is None or not math.isfinite(outcome.mean):
            return None
        return float(outcome.mean)

    def _rebuild(self, outcome: Outcome) -> None:
        """Replay a trial recorded by an earlier run of this study (resume) as it was told live."""
        ref, params = outcome.proposal.ref, dict(outcome.proposal.params)
        try:
            number = int(ref.removeprefix(self._prefix))
        except ValueError:
            return
        dists = {name: self.space.distributions.get(name) for name in params}
        if not params or not all(_contains(d, params[n]) for n, d in dists.items()):
            return  # not a point of this space: nothing to learn from it
        self.study.enqueue_trial(params)
        trial = self.study.ask(fixed_distributions=dists)  # type: ignore[arg-type]
        trial.set_user_attr("ref", ref)
        self._pending[ref] = trial
        self._next = max(self._next, number + 1)
        self._tell(ref, outcome)

    def _sync(self, history: Sequence[Outcome]) -> None:
        """Tell every recorded outcome not yet known, in trial order (resume-safe)."""
        fresh = [o for o in history
                 if o.proposal.ref.startswith(self._prefix) and o.proposal.ref not in self._done]
        for outcome in sorted(fresh, key=lambda o: _trial_number(o.proposal.ref)):
            self.observe(outcome)


def _flips(facts: PlannerFacts, flips: bool | None) -> bool:
    """Whether the loop will let images be flipped: given, else the dataset's rule."""
    if flips is not None:
        return flips
    if not facts.is_image:
        return False
    from evaluator.augment import flips_preserve_labels  # imports torch: only for images

    return flips_preserve_labels(facts.name)


def _contains(dist: BaseDistribution | None, value: ParamValue) -> bool:
    """True when ``value`` is a point of ``dist`` (None: an unknown parameter)."""
    if isinstance(dist, CategoricalDistribution):
        return any(type(value) is type(c) and value == c for c in dist.choices)
    if isinstance(dist, IntDistribution):
        return type(value) is int and dist.low <= value <= dist.high
    if isinstance(dist, FloatDistribution):
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and dist.low <= value <= dist.high
    return False


def _trial_number(ref: str) -> int:
    """The trial number at the end of a ref ('optuna:offline:7' -> 7)."""
    tail = ref.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else -1
