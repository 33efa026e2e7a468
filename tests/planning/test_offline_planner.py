"""The offline planner: seeded, resumable, honest about failures, prunes, and searches."""

from __future__ import annotations

import math

import msgspec
import pytest
from optuna.pruners import HyperbandPruner, NopPruner, SuccessiveHalvingPruner
from optuna.trial import TrialState

from orchestrator.exceptions import UsageError
from orchestrator.planning.offline import OfflinePlanner, final_training_of
from orchestrator.planning.types import (
    AvgPool,
    BatchNorm,
    Conv2d,
    PlannerFacts,
    InvalidConfig,
    Linear,
    MaxPool,
    Outcome,
    Planner,
    Proposal,
    PruningPlanner,
    Target,
)
from sandbox_image.protocol import FailureKind

DIGITS = PlannerFacts(name="digits", input_shape=(1, 8, 8), num_classes=10,
                      class_names=tuple("0123456789"), n_train=1078, n_val=269, n_test=450)
FASHION = PlannerFacts(name="fashion", input_shape=(1, 28, 28), num_classes=10,
                       n_train=54000, n_val=6000, n_test=10000)
WINE = PlannerFacts(name="wine", input_shape=(13,), num_classes=3, n_train=106, n_val=36,
                    n_test=36)
ACCURACY = Target(metric="accuracy", threshold=0.99)


def fake_score(proposal: Proposal) -> float:
    """A cheap, deterministic stand-in for training: likes adamw near lr 3e-3, BN, dropout 0.2."""
    assert proposal.config is not None
    train = proposal.train
    score = 0.55 + 0.15 * math.exp(-(math.log10(train.lr) + 2.5) ** 2)
    score += 0.08 * (train.optimizer == "adamw")
    score += 0.05 * any(isinstance(layer, BatchNorm) for layer in proposal.config.layers)
    dropout = float(proposal.params.get("dropout", 0.0))
    score += 0.05 * math.exp(-((dropout - 0.2) * 8) ** 2)
    score += 0.04 * (proposal.params.get("width") == 64)
    return round(score, 6)


def outcome_for(proposal: Proposal, cid: str, *, fail: bool = False) -> Outcome:
    """A passed outcome scored by ``fake_score`` (or a failure) with a rising val curve."""
    if fail:
        return Outcome(candidate_id=cid, proposal=proposal, status="failed",
                       failure_kind=FailureKind.TRAINING_ERROR, failure_message="boom")
    score = fake_score(proposal)
    return Outcome(candidate_id=cid, proposal=proposal, status="passed", metric="accuracy",
                   mean=score, ci95=(score - 0.01, score + 0.01),
                   val_curve=(score - 0.2, score - 0.1, score), params=1000, seconds=1.0)


def run(planner: OfflinePlanner, n: int, history: list[Outcome] | None = None) -> list[Outcome]:
    """Propose and observe ``n`` candidates in order; return the whole history."""
    history = list(history or [])
    for _ in range(n):
        proposal = planner.propose(history)
        assert proposal is not None
        outcome = outcome_for(proposal, f"c{len(history)}")
        planner.observe(outcome)
        history.append(outcome)
    return history


def test_satisfies_the_planner_protocols() -> None:
    planner = OfflinePlanner(DIGITS, ACCURACY, seed=0)
    assert isinstance(planner, Planner) and isinstance(planner, PruningPlanner)


def test_first_proposal_is_a_known_good_small_cnn() -> None:
    proposal = OfflinePlanner(DIGITS, ACCURACY, seed=5).propose([])
    assert proposal is not None and proposal.config is not None
    layers = proposal.config.layers
    assert sum(isinstance(layer, Conv2d) for layer in layers) == 2
    assert sum(isinstance(layer, MaxPool) for layer in layers) == 2
    assert proposal.train.optimizer == "adamw" and proposal.train.lr == pytest.approx(1e-3)
    assert proposal.ref == "optuna:offline:0" and proposal.parent is None
    assert "known-good small CNN" in proposal.rationale


def test_first_tabular_proposal_is_an_mlp() -> None:
    proposal = OfflinePlanner(WINE, ACCURACY, seed=5).propose([])
    assert proposal is not None and proposal.config is not None
    assert all(not isinstance(layer, Conv2d) for layer in proposal.config.layers)
    assert sum(isinstance(layer, Linear) for layer in proposal.config.layers) == 2
    assert proposal.train.batch_size * 4 <= WINE.n_train
    assert "MLP" in proposal.rationale


def test_same_seed_gives_same_first_five_proposals() -> None:
    first = run(OfflinePlanner(DIGITS, ACCURACY, seed=11), 5)
    again = run(OfflinePlanner(DIGITS, ACCURACY, seed=11), 5)
    other = run(OfflinePlanner(DIGITS, ACCURACY, seed=12), 5)
    assert [o.proposal for o in first] == [o.proposal for o in again]
    assert [o.proposal.params for o in first[1:]] != [o.proposal.params for o in other[1:]]


@pytest.mark.parametrize(("facts", "max_pools"), [(DIGITS, 2), (FASHION, 3)])
def test_search_space_is_sized_to_the_input(facts: PlannerFacts, max_pools: int) -> None:
    history = run(OfflinePlanner(facts, ACCURACY, seed=2, n_startup_trials=5), 25)
    pools = [sum(isinstance(layer, (MaxPool, AvgPool))
                 for layer in o.proposal.config.layers)  # type: ignore[union-attr]
             for o in history]
    assert max(pools) == max_pools  # the deepest stack is reached, never exceeded
    epochs = [o.proposal.train.epochs for o in history]
    assert max(epochs) <= (40 if facts is DIGITS else 20)


def test_out_of_order_outcomes_go_to_their_own_trials() -> None:
    planner = OfflinePlanner(DIGITS, ACCURACY, seed=4)
    proposals = [planner.propose([]) for _ in range(4)]
    assert len({p.ref for p in proposals if p}) == 4
    outcomes = [outcome_for(p, f"c{i}") for i, p in enumerate(proposals) if p]
    for outcome in reversed(outcomes):
        planner.observe(outcome)
    planner.observe(outcomes[0])  # a repeated outcome is ignored
    by_ref = {t.user_attrs["ref"]: t for t in planner.study.trials}
    assert len(by_ref) == 4
    for outcome in outcomes:
        trial = by_ref[outcome.proposal.ref]
        assert trial.state == TrialState.COMPLETE and trial.value == outcome.mean
        assert trial.user_attrs["candidate"] == outcome.candidate_id
    best = max(outcomes, key=lambda o: o.mean or 0)
    assert planner.best == (best.mean, best.candidate_id)


def test_failures_are_told_as_fail_never_as_a_score() -> None:
    planner = OfflinePlanner(DIGITS, ACCURACY, seed=4)
    good = planner.propose([])
    bad = planner.propose([])
    nan = planner.propose([])
    assert good and bad and nan
    planner.observe(outcome_for(bad, "c1", fail=True))
    planner.observe(Outcome(candidate_id="c2", proposal=nan, status="passed",
                            metric="accuracy", mean=math.nan))
    assert planner.best is None
    planner.observe(outcome_for(good, "c0"))
    states = {t.user_attrs["ref"]: t.state for t in planner.study.trials}
    assert states == {good.ref: TrialState.COMPLETE, bad.ref: TrialState.FAIL,
                      nan.ref: TrialState.FAIL}
    assert planner.best == (fake_score(good), "c0")
    nxt = planner.propose([])
    assert nxt is not None and f"best so far {fake_score(good):.4f} (c0)" in nxt.rationale


def test_resume_from_history_makes_the_same_next_proposals() -> None:
    uninterrupted = run(OfflinePlanner(DIGITS, ACCURACY, seed=9, n_startup_trials=6), 10)
    # the first run stops after 6; its history goes through the JSON registry and back
    first_part = run(OfflinePlanner(DIGITS, ACCURACY, seed=9, n_startup_trials=6), 6)
    history = msgspec.json.decode(msgspec.json.encode(first_part), type=list[Outcome])
    resumed = OfflinePlanner(DIGITS, ACCURACY, seed=9, n_startup_trials=6)
    continued = run(resumed, 4, history)
    assert [o.proposal for o in continued] == [o.proposal for o in uninterrupted]
    assert continued[6].proposal.ref == "optuna:offline:6"  # trial numbering continues
    best = max(first_part, key=lambda o: o.mean or 0)
    assert f"best so far {best.mean:.4f} ({best.candidate_id})" in continued[6].proposal.rationale


def test_resume_replays_what_hyperband_recorded() -> None:
    def rungs(planner: OfflinePlanner) -> list[dict[str, float]]:
        return [{k: v for k, v in t.system_attrs.items() if k.startswith("completed_rung")}
                for t in planner.study.trials]

    first = OfflinePlanner(FASHION, ACCURACY, seed=0, epochs=(1, 9), flips=True)
    history = run(first, 8)  # curves of 3 epochs: rungs at epochs 1 and 3
    resumed = OfflinePlanner(FASHION, ACCURACY, seed=0, epochs=(1, 9), flips=True)
    assert resumed.propose(history) is not None
    assert rungs(resumed)[:8] == rungs(first) and any(rungs(first))
    assert [t.intermediate_values for t in resumed.study.trials[:8]] == \
        [t.intermediate_values for t in first.study.trials]


def test_resume_rebuilds_failed_and_pruned_trials() -> None:
    planner = OfflinePlanner(DIGITS, ACCURACY, seed=1)
    a, b, c = (planner.propose([]) for _ in range(3))
    assert a and b and c
    history = [outcome_for(a, "c0"), outcome_for(b, "c1", fail=True),
               msgspec.structs.replace(outcome_for(c, "c2"), pruned=True, val_curve=(0.2,))]
    resumed = OfflinePlanner(DIGITS, ACCURACY, seed=1)
    assert resumed.propose(history) is not None
    states = [t.state for t in resumed.study.trials]
    assert states[:3] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED]
    assert resumed.study.trials[2].intermediate_values == {1: 0.2}
    assert resumed._next == 4  # trial number of the next proposal


def rising(top: float, epochs: int = 20) -> tuple[float, ...]:
    """A val curve that climbs to ``top`` at ``epochs``."""
    return tuple(round(top - 0.3 * (1 - e / epochs), 6) for e in range(1, epochs + 1))


def train_live(planner: OfflinePlanner, proposal: Proposal, cid: str,
               curve: tuple[float, ...]) -> int | None:
    """Report ``curve`` epoch by epoch as the loop does; the epoch it was pruned at, or None."""
    for epoch, value in enumerate(curve, start=1):
        if planner.report_epoch(cid, epoch, value, proposal=proposal):
            return epoch
    return None


def test_hyperband_prunes_weak_candidates_at_its_rungs() -> None:
    planner = OfflinePlanner(FASHION, ACCURACY, seed=0, epochs=(2, 18), flips=True)
    assert isinstance(planner.study.pruner, HyperbandPruner)
    history: list[Outcome] = []
    for i in range(6):  # strong trials fill the rungs (the first two are protected starts)
        proposal = planner.propose(history)
        assert proposal is not None and proposal.train.epochs == 18
        curve = rising(0.9 + i / 100, 18)
        assert train_live(planner, proposal, f"c{i}", curve) is None
        outcome = msgspec.structs.replace(outcome_for(proposal, f"c{i}"), mean=curve[-1],
                                          val_curve=curve)
        planner.observe(outcome)
        history.append(outcome)
    stops = []
    for i in range(6, 16):  # weak trials stop at their bracket's first rung: epoch 2 or 6
        weak = planner.propose(history)
        assert weak is not None
        curve = rising(0.4, 18)
        stopped = train_live(planner, weak, f"c{i}", curve)
        stops.append(stopped)
        if stopped is not None:
            assert planner.report_epoch(f"c{i}", stopped + 1, 0.99, proposal=weak) is True
            curve = curve[:stopped]
        planner.observe(msgspec.structs.replace(outcome_for(weak, f"c{i}"), mean=curve[-1],
                                                pruned=stopped is not None, val_curve=curve))
    # three brackets: rungs at 2 and 6, at 6, and none before the last epoch (never pruned)
    assert set(stops) == {2, 6, None}
    pruned = [t for t in planner.study.trials if t.state == TrialState.PRUNED]
    assert len(pruned) == 10 - stops.count(None)
    assert all(max(t.intermediate_values) in (2, 6) for t in pruned)
    strong = planner.propose(history)
    assert strong is not None and train_live(planner, strong, "c14", rising(0.99, 18)) is None
    assert planner.report_epoch("c0", 3, 0.01, proposal=history[0].proposal) is False  # done


def test_start_points_and_early_trials_are_never_pruned() -> None:
    planner = OfflinePlanner(FASHION, ACCURACY, seed=0, epochs=(2, 18), flips=True)
    first, second = planner.propose([]), planner.propose([])
    assert first is not None and second is not None
    assert train_live(planner, first, "c0", rising(0.9, 18)) is None
    assert train_live(planner, second, "c1", rising(0.2, 18)) is None  # a start point
    third = planner.propose([])
    assert third is not None  # fewer than three finished trials: no rung decides yet
    assert train_live(planner, third, "c2", rising(0.1, 18)) is None


def test_a_candidate_is_never_pruned_at_its_last_epoch() -> None:
    planner = OfflinePlanner(FASHION, ACCURACY, seed=0, epochs=(2, 2), flips=True)
    history = run(planner, 5)
    proposal = planner.propose(history)
    assert proposal is not None and proposal.train.epochs == 2
    assert train_live(planner, proposal, "c5", (0.01, 0.01)) is None


@pytest.mark.parametrize(("kind", "pruner"), [("halving", SuccessiveHalvingPruner),
                                              ("none", NopPruner)])
def test_the_pruner_can_be_chosen(kind: str, pruner: type) -> None:
    planner = OfflinePlanner(DIGITS, ACCURACY, pruner=kind)  # type: ignore[arg-type]
    assert isinstance(planner.study.pruner, pruner)


def test_no_pruning_when_the_target_is_minimised() -> None:
    planner = OfflinePlanner(DIGITS, Target(metric="calibration_error", threshold=0.05,
                                            direction="minimize"), seed=0)
    history = run(planner, 5)
    proposal = planner.propose(history)
    assert proposal is not None
    assert not any(planner.report_epoch("c5", e, 0.0, proposal=proposal) for e in range(1, 6))


def test_max_trials_ends_the_search_with_the_final_training() -> None:
    planner = OfflinePlanner(WINE, ACCURACY, seed=0, max_trials=3)
    history = run(planner, 3)
    final = planner.propose(history)
    assert final is not None and final_training_of(final) is not None and planner.stop_reason() == ""
    assert planner.propose(history) is None
    assert planner.stop_reason() == "the search's 3 trials were all proposed"


def test_rejected_samples_are_failed_and_never_proposed() -> None:
    planner = OfflinePlanner(FASHION, ACCURACY, seed=0, max_params=100_000, n_startup_trials=3)
    history = run(planner, 6)
    assert all(o.params == 1000 for o in history)
    rejected = [t for t in planner.study.trials if "rejected" in t.user_attrs]
    assert all(t.state == TrialState.FAIL for t in rejected)
    assert all("parameters, above the limit" in t.user_attrs["rejected"] for t in rejected)


def test_bad_settings_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="epochs range"):
        OfflinePlanner(DIGITS, ACCURACY, epochs=(5, 2))
    with pytest.raises(InvalidConfig, match="handles"):
        OfflinePlanner(PlannerFacts(name="seq", input_shape=(4, 4), num_classes=2), ACCURACY)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_beats_its_random_start(seed: int) -> None:
    history = run(OfflinePlanner(DIGITS, ACCURACY, seed=seed), 30)
    scores = [o.mean or 0.0 for o in history]
    assert max(scores) > max(scores[1:6])  # TPE improves on its first five random samples
    assert sum(scores[20:]) / 10 > sum(scores[1:11]) / 10  # and samples better on average
