"""The offline planner: Optuna's TPE ask-and-tell over a typed config space, with pruning.

Each proposal is one Optuna trial. Results are told back as they arrive, in any
order; a failed candidate is told as FAIL (no fake score) and one stopped by
:meth:`OfflinePlanner.report_epoch` as PRUNED. The study lives in memory and is
rebuilt from the recorded history on resume: every proposal carries its search
point (``Proposal.params``) and a ``ref`` naming its trial, and the sampler is
re-seeded from (seed, trial number) before each ask, so a resumed planner makes
the same next proposal as one that was never interrupted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import msgspec
import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.pruners import PercentilePruner
from optuna.samplers import TPESampler
from optuna.trial import TrialState, create_trial

from orchestrator.exceptions import ResearcherError, UsageError
from orchestrator.planning.assembler import DEFAULT_MAX_PARAMS, analyze
from orchestrator.planning.space import Params, SearchSpace, space_for
from orchestrator.planning.types import (
    DatasetFacts,
    InvalidConfig,
    Outcome,
    Proposal,
    Target,
    parse_train_spec,
)
from sandbox_image.protocol import TrainSpec

_MAX_REJECTED = 50  # samples in a row the assembler may refuse before we give up


class OfflinePlanner:
    """Seeded, resumable TPE search; satisfies ``Planner`` and ``PruningPlanner``."""

    def __init__(self, facts: DatasetFacts, target: Target = Target(), *, seed: int = 0,
                 study_name: str = "offline", max_trials: int | None = None,
                 train_defaults: TrainSpec = TrainSpec(), epochs: tuple[int, int] | None = None,
                 max_params: int = DEFAULT_MAX_PARAMS, n_startup_trials: int = 10,
                 prune_warmup_epochs: int = 3) -> None:
        if epochs is not None and not 1 <= epochs[0] <= epochs[1]:
            raise UsageError(f"epochs range {epochs} must be (low, high) with 1 <= low <= high")
        self.facts, self.target, self.seed = facts, target, seed
        self.space: SearchSpace = space_for(facts, epochs)
        self.max_trials, self.max_params = max_trials, max_params
        self._train_defaults, self._n_startup = train_defaults, n_startup_trials
        self._prefix = f"optuna:{study_name}:"
        self._pending: dict[str, optuna.Trial] = {}  # asked, not yet told
        self._done: set[str] = set()  # told or rebuilt
        self._pruned: set[str] = set()
        self._reported: dict[str, set[int]] = {}
        self._next = 0  # trial number of the next ask; survives rebuilds
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # tell() logs every trial at INFO
        self.study = optuna.create_study(
            direction=target.direction, sampler=self._sampler(0), study_name=study_name,
            # Keep the top 75% (optuna's percentile is what is kept), i.e. prune only the bottom
            # quarter: early epochs are noisy, and a median pruner stopped 13 of 20 digits
            # candidates after epoch 3.
            pruner=PercentilePruner(75.0, n_startup_trials=5, n_warmup_steps=prune_warmup_epochs))

    # ------------------------------------------------------------- Planner protocol

    def propose(self, history: Sequence[Outcome]) -> Proposal | None:
        """Next candidate as a TPE trial (the first one a known-good model), or None."""
        self._sync(history)
        if self.max_trials is not None \
                and len(self._pending) + len(self._done) >= self.max_trials:
            return None
        for _ in range(_MAX_REJECTED):
            proposal = self._ask()
            if proposal is not None:
                return proposal
        raise ResearcherError(f"the search space for {self.facts.name!r} produced "
                              f"{_MAX_REJECTED} unusable configs in a row; raise max_params "
                              "or narrow the epochs range")

    def observe(self, outcome: Outcome) -> None:
        """Tell the study how a candidate did; outcomes may arrive in any order."""
        ref = outcome.proposal.ref
        if not ref.startswith(self._prefix) or ref in self._done:
            return  # another planner's proposal, or already told
        if ref in self._pending:
            self._tell(ref, outcome)
        else:
            self._rebuild(outcome)

    def report_epoch(self, candidate_id: str, epoch: int, value: float, *,
                     proposal: Proposal) -> bool:
        """Record val accuracy after ``epoch`` (1 = first); True means prune this candidate."""
        ref = proposal.ref
        trial = self._pending.get(ref)
        if ref in self._pruned:
            return True
        if trial is None or self.target.direction != "maximize" or not math.isfinite(value):
            return False  # unknown or finished candidate; val accuracy only guides maximising
        steps = self._reported.setdefault(ref, set())
        if epoch not in steps:  # several seeds report the same epoch; the first one counts
            steps.add(epoch)
            trial.report(value, epoch)
            if trial.should_prune():
                self._pruned.add(ref)
        return ref in self._pruned

    # ------------------------------------------------------------- what we know

    @property
    def best(self) -> tuple[float, str] | None:
        """Best (value, candidate id) told so far, or None before any success."""
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            return None
        pick = max if self.target.direction == "maximize" else min
        trial = pick(done, key=lambda t: t.value)
        return float(trial.value), str(trial.user_attrs.get("candidate", trial.number))

    @property
    def n_proposed(self) -> int:
        """Trial number the next proposal gets (also the count of proposals so far)."""
        return self._next

    # ------------------------------------------------------------- internals

    def _sampler(self, number: int) -> TPESampler:
        """A TPE sampler seeded by (seed, trial number), so a resume reproduces the run."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # ``group`` is experimental
            return TPESampler(seed=(self.seed * 1_000_003 + number) % 2 ** 32,
                              n_startup_trials=self._n_startup, multivariate=True, group=True,
                              constant_liar=True)

    def _ask(self) -> Proposal | None:
        """Ask one trial and turn it into a proposal; None if the assembler refuses it."""
        number, ref = self._next, f"{self._prefix}{self._next}"
        self._next += 1
        self.study.sampler = self._sampler(number)
        if number == 0 and not self.study.trials:
            self.study.enqueue_trial(dict(self.space.first))
        trial = self.study.ask()
        trial.set_user_attr("ref", ref)
        params = self.space.sample(trial)
        try:
            proposal = self._proposal(ref, number, params)
        except InvalidConfig as exc:
            trial.set_user_attr("rejected", str(exc))
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        self._pending[ref] = trial
        return proposal

    def _proposal(self, ref: str, number: int, params: Params) -> Proposal:
        config, fields = self.space.build(params)
        analysis = analyze(config, input_shape=self.facts.input_shape,
                           num_classes=self.facts.num_classes, max_params=self.max_params)
        train = parse_train_spec(msgspec.structs.replace(self._train_defaults, **fields))
        return Proposal(config=config, train=train, ref=ref, params=params,
                        rationale=self._rationale(number, params, analysis.params))

    def _rationale(self, number: int, params: Params, n_params: int) -> str:
        described = f"{self.space.describe(params)}; {n_params:,} parameters"
        if number == 0:
            kind = "small CNN" if self.space.kind == "image" else "MLP"
            return f"TPE trial 0: a known-good {kind} to start from ({described})"
        best = self.best
        so_far = f"best so far {best[0]:.4f} ({best[1]})" if best else "no result yet"
        finished = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        phase = "random start-up sample" if finished < self._n_startup else "TPE sample"
        return f"TPE trial {number} ({phase}); {so_far}; sampled {described}"

    def _value(self, outcome: Outcome) -> float | None:
        """The score to tell, or None when the candidate has none (failed)."""
        if outcome.status != "passed" or outcome.mean is None or not math.isfinite(outcome.mean):
            return None
        return float(outcome.mean)

    def _tell(self, ref: str, outcome: Outcome) -> None:
        trial = self._pending.pop(ref)
        self._done.add(ref)
        trial.set_user_attr("candidate", outcome.candidate_id)
        if not self._reported.get(ref):  # no epochs were reported live: use the curve
            for epoch, value in enumerate(outcome.val_curve, start=1):
                if math.isfinite(value):
                    trial.report(value, epoch)
        value = self._value(outcome)
        if ref in self._pruned or outcome.pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
        elif value is None:
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, value)

    def _rebuild(self, outcome: Outcome) -> None:
        """Add a trial recorded by an earlier run of this study (resume)."""
        ref, params = outcome.proposal.ref, dict(outcome.proposal.params)
        try:
            number = int(ref.removeprefix(self._prefix))
            dists = {name: self.space.distributions[name] for name in params}
        except (ValueError, KeyError):
            return  # not a point of this space: nothing to learn from it
        value = self._value(outcome)
        curve = {i: v for i, v in enumerate(outcome.val_curve, start=1) if math.isfinite(v)}
        state = TrialState.COMPLETE if value is not None else TrialState.FAIL
        if outcome.pruned:
            state, value = TrialState.PRUNED, None
        self.study.add_trial(create_trial(state=state, value=value, params=params,
                                          distributions=dists, intermediate_values=curve,
                                          user_attrs={"ref": ref,
                                                      "candidate": outcome.candidate_id}))
        self._done.add(ref)
        self._next = max(self._next, number + 1)

    def _sync(self, history: Sequence[Outcome]) -> None:
        """Tell every recorded outcome not yet known, in trial order (resume-safe)."""
        fresh = [o for o in history
                 if o.proposal.ref.startswith(self._prefix) and o.proposal.ref not in self._done]
        for outcome in sorted(fresh, key=lambda o: _trial_number(o.proposal.ref)):
            self.observe(outcome)


def _trial_number(ref: str) -> int:
    """The trial number at the end of a ref ('optuna:offline:7' -> 7)."""
    tail = ref.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else -1
