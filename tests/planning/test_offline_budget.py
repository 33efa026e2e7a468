"""The offline planner fits the time left, and ends with one longer training of the best design."""

from __future__ import annotations

import math

import msgspec
import pytest

from orchestrator.planning.assembler import analyze
from orchestrator.planning.budget import FINAL_SHARE, SAFETY, EpochTimer, epoch_seeds
from orchestrator.planning.offline import FINAL_OF, OfflinePlanner, final_training_of
from orchestrator.planning.types import PlannerFacts, Outcome, Proposal, Residual, Target
from sandbox_image.protocol import TrainSpec

FASHION = PlannerFacts(name="fashion_mnist", input_shape=(1, 28, 28), num_classes=10,
                       n_train=54000, n_val=6000, n_test=10000)
WINE = PlannerFacts(name="wine", input_shape=(13,), num_classes=3, n_train=106)
ACCURACY = Target(metric="accuracy")


class FakeDevice:
    """Trains a proposal in simulated time: start-up plus seconds proportional to its MACs."""

    def __init__(self, facts: PlannerFacts, seconds_per_gmac: float, startup: float = 2.0) -> None:
        self.facts, self.rate, self.startup = facts, seconds_per_gmac, startup
        self.clock = 0.0

    def seconds(self, proposal: Proposal) -> float:
        assert proposal.config is not None
        macs = analyze(proposal.config, input_shape=self.facts.input_shape,
                       num_classes=self.facts.num_classes).macs
        work = len(proposal.train.seeds) * proposal.train.epochs * macs / 1e9
        if proposal.train.fit_val:  # a final's epochs go over train + val
            work *= (self.facts.n_train + self.facts.n_val) / self.facts.n_train
        return self.startup + self.rate * work

    def train(self, proposal: Proposal, cid: str) -> Outcome:
        """Run ``proposal``; its score favours ResNets, SGD and more epochs (capped)."""
        seconds = self.seconds(proposal)
        self.clock += seconds
        assert proposal.config is not None
        resnet = any(isinstance(layer, Residual) for layer in proposal.config.layers)
        mean = 0.85 + 0.04 * resnet + 0.02 * (proposal.train.optimizer == "sgd")
        mean += 0.03 * min(proposal.train.epochs, 36) / 36
        curve = tuple(mean - 0.1 / e for e in range(1, proposal.train.epochs + 1))
        return Outcome(candidate_id=cid, proposal=proposal, status="passed", metric="accuracy",
                       mean=round(mean, 6), val_curve=curve, seconds=seconds)


def simulate(planner: OfflinePlanner, device: FakeDevice, budget: float, *,
             candidate_s: float | None = None) -> tuple[list[Outcome], list[float | None]]:
    """A run as the loop drives it: set_budget, propose, train, observe, until None."""
    history: list[Outcome] = []
    estimates: list[float | None] = []
    while device.clock < budget:
        left = budget - device.clock
        planner.set_budget(left, candidate_s=candidate_s)
        proposal = planner.propose(history)
        if proposal is None:
            break
        estimate = planner.estimate_seconds(proposal)
        estimates.append(estimate)
        assert estimate is None or estimate <= left, (proposal.rationale, estimate, left)
        if candidate_s is not None:
            assert estimate is None or estimate <= candidate_s
        outcome = device.train(proposal, f"c{len(history)}")
        planner.observe(outcome)
        history.append(outcome)
    return history, estimates


@pytest.mark.parametrize(("rate", "budget", "seeds"), [(30.0, 3600.0, 2), (1.0, 300.0, 1)],
                         ids=["slow-cpu-hour", "fast-gpu-10min"])
def test_a_budgeted_run_fits_its_time_and_ends_with_one_final_training(
        rate: float, budget: float, seeds: int) -> None:
    planner = OfflinePlanner(FASHION, ACCURACY, seed=0, flips=True,
                             train_defaults=TrainSpec(seeds=tuple(range(seeds))))
    device = FakeDevice(FASHION, rate)
    history, estimates = simulate(planner, device, budget)
    assert device.clock <= budget * 1.05  # estimates are padded; the fake device is exact
    finals = [o for o in history if final_training_of(o.proposal)]
    assert len(finals) == 1
    final = finals[0]
    before = history[:history.index(final)]
    best = max((o for o in before), key=lambda o: o.mean or 0.0)
    assert final_training_of(final.proposal) == best.candidate_id == final.proposal.params[FINAL_OF]
    assert final.proposal.config == best.proposal.config
    assert final.proposal.parent == best.candidate_id
    assert final.proposal.train.epochs > best.proposal.train.epochs
    assert final.proposal.train.epochs <= 10 * best.proposal.train.epochs  # final_epochs_factor
    # the final fills its share of the run (what the time left allows of it)
    assert final.seconds >= 0.6 * min(FINAL_SHARE * budget, budget - sum(o.seconds for o in before)) / SAFETY
    assert final.proposal.train.fit_val and not best.proposal.train.fit_val  # on train + val
    assert msgspec.structs.replace(final.proposal.train, epochs=best.proposal.train.epochs, fit_val=False) \
        == best.proposal.train  # the same recipe, longer
    assert final.proposal.rationale.startswith(f"final training of {best.candidate_id}")
    assert final.proposal.ref == "optuna:offline:final"
    assert budget - device.clock < 0.25 * budget  # the time was used
    assert sum(e is None for e in estimates) == 1  # only the very first had nothing to go by


def test_the_per_candidate_cap_bounds_every_proposal() -> None:
    planner = OfflinePlanner(FASHION, ACCURACY, seed=3, flips=True)
    device = FakeDevice(FASHION, 30.0)
    history, _ = simulate(planner, device, 3600.0, candidate_s=300.0)
    assert all(o.seconds <= 300.0 * 1.05 for o in history[1:])
    assert any(o.proposal.train.epochs < 12 or "smaller to fit" in o.proposal.rationale
               for o in history)


def measured(planner: OfflinePlanner, device: FakeDevice, n: int) -> list[Outcome]:
    """``n`` candidates trained without a budget, so that the planner has measurements."""
    history: list[Outcome] = []
    for i in range(n):
        proposal = planner.propose(history)
        assert proposal is not None
        outcome = device.train(proposal, f"c{i}")
        planner.observe(outcome)
        history.append(outcome)
    return history


def test_little_time_left_gives_a_shorter_or_smaller_candidate_or_none() -> None:
    planner = OfflinePlanner(FASHION, ACCURACY, seed=0, flips=True, final_epochs_factor=1.05)
    device = FakeDevice(FASHION, 30.0)
    history = measured(planner, device, 4)
    cut = []
    for left in (200.0, 100.0, 50.0, 25.0, 12.0):
        planner.set_budget(left)
        proposal = planner.propose(history)
        assert proposal is not None and final_training_of(proposal) is None
        estimate = planner.estimate_seconds(proposal)
        assert estimate is not None and estimate <= left
        cut.append(proposal.train.epochs < 12 or "smaller to fit" in proposal.rationale)
        assert ("to fit the time left" in proposal.rationale) == (proposal.train.epochs < 12)
    assert any(cut)
    planner.set_budget(1.0)  # nothing fits, and 1.05x (12 epochs of 12) is no final training
    assert planner.propose(history) is None
    why = planner.stop_reason()  # the run's summary says this rather than "nothing more to propose"
    assert why.startswith("time budget nearly spent: the 1 s left fit no further candidate (the quickest "
                          "design measured needs about "), why
    planner.set_budget(None)  # unlimited again: the search goes on
    assert planner.propose(history) is not None and planner.stop_reason() == ""


def test_nothing_within_one_candidates_limit_stops_the_search_saying_raise_timeout() -> None:
    planner = OfflinePlanner(FASHION, ACCURACY, seed=0, flips=True, final_epochs_factor=1.05)
    history = measured(planner, FakeDevice(FASHION, 30.0), 4)
    planner.set_budget(3000.0, candidate_s=1.0)
    assert planner.propose(history) is None
    assert planner.stop_reason().startswith("no candidate fits the 1 s one candidate may take (the quickest")
    assert planner.stop_reason().endswith("; raise --timeout")


def test_the_final_training_comes_once_when_one_candidate_is_left() -> None:
    planner = OfflinePlanner(WINE, ACCURACY, seed=0)
    device = FakeDevice(WINE, 1000.0)
    history = measured(planner, device, 5)
    planner.set_budget(None, candidates_left=1)
    final = planner.propose(history)
    assert final is not None and final_training_of(final) is not None
    assert planner.final_proposed == final_training_of(final)
    assert final.train.epochs == 3 * 150 and "instead of 150" in final.rationale
    assert final.params["base_epochs"] == 150 and final.params["epochs"] == 450
    again = planner.propose(history)  # the loop may still ask: a search trial, never another final
    assert again is not None and final_training_of(again) is None


def test_a_resumed_run_never_repeats_the_final_training() -> None:
    planner = OfflinePlanner(WINE, ACCURACY, seed=0)
    device = FakeDevice(WINE, 1000.0)
    history = measured(planner, device, 4)
    planner.set_budget(None, candidates_left=1)
    final = planner.propose(history)
    assert final is not None
    history.append(device.train(final, "c4"))
    recorded = msgspec.json.decode(msgspec.json.encode(history), type=list[Outcome])
    resumed = OfflinePlanner(WINE, ACCURACY, seed=0)
    resumed.set_budget(None, candidates_left=1)
    nxt = resumed.propose(recorded)
    assert nxt is not None and final_training_of(nxt) is None
    assert resumed.final_proposed == final_training_of(final)
    assert resumed._next == 5  # the final is no trial; the search continues at trial 4+1


def test_a_pruned_or_failed_candidate_is_never_the_one_retrained() -> None:
    planner = OfflinePlanner(WINE, ACCURACY, seed=0)
    device = FakeDevice(WINE, 1000.0)
    history = measured(planner, device, 3)
    history[0] = msgspec.structs.replace(history[0], mean=0.999, pruned=True)
    history[1] = msgspec.structs.replace(history[1], mean=0.998, status="failed")
    planner.set_budget(None, candidates_left=1)
    final = planner.propose(history)
    assert final is not None and final_training_of(final) == "c2"


def test_without_measurements_there_is_no_estimate() -> None:
    planner = OfflinePlanner(FASHION, ACCURACY, seed=0, flips=True)
    planner.set_budget(5.0)
    first = planner.propose([])
    assert first is not None and first.train.epochs == 12  # nothing to estimate from yet
    assert planner.estimate_seconds(first) is None


# ----------------------------------------------------------------- the epoch timer


def test_epoch_timer_uses_its_prior_until_sizes_differ() -> None:
    assert EpochTimer.for_device("cpu").prior_exponent == 1.0
    assert EpochTimer.for_device("cuda:0").prior_exponent == 0.5
    timer = EpochTimer.for_device("cuda")
    assert timer.per_epoch(10**6) is None and timer.cheapest_per_epoch() is None
    assert timer.overhead() == 0.0
    timer.add("a", 10**6, seconds=20.0, epoch_seeds=10)  # 2 s per epoch, no overhead known
    assert timer.per_epoch(10**6) == pytest.approx(2.0)
    assert timer.per_epoch(100 * 10**6) == pytest.approx(20.0)  # 100x the MACs ^ 0.5


@pytest.mark.parametrize(("overhead", "rate", "exponent"), [(3.0, 1e-6, 1.0), (2.0, 1e-3, 0.5),
                                                            (0.0, 1e-5, 0.8)])
def test_epoch_timer_fits_overhead_rate_and_exponent(overhead: float, rate: float,
                                                     exponent: float) -> None:
    timer = EpochTimer.for_device("cpu")
    for key, (macs, n) in enumerate([(10**6, 10), (10**7, 20), (10**8, 10), (4 * 10**7, 5)]):
        timer.add(str(key), macs, overhead + n * rate * macs ** exponent, n)
    timer.add("bad", 10**6, seconds=math.nan, epoch_seeds=3)  # ignored
    assert len(timer) == 4
    fitted = timer.fit()
    assert fitted is not None
    assert fitted[0] == pytest.approx(overhead, abs=1e-6)
    assert fitted[2] == pytest.approx(exponent)
    assert timer.per_epoch(10**9) == pytest.approx(rate * (10**9) ** exponent)
    assert timer.measured_per_epoch("2") == pytest.approx(rate * (10**8) ** exponent)
    assert timer.measured_per_epoch("missing") is None


def test_a_pruned_candidate_trained_one_seed() -> None:
    assert epoch_seeds(4, 3, pruned=True) == 4
    assert epoch_seeds(4, 3, pruned=False) == 12


def test_runs_default_timeout_leaves_room_for_the_final_trainings_share() -> None:
    from orchestrator.loop import MIN_CANDIDATE_S, SANDBOX_MARGIN_S, SANDBOX_SHARE, default_run_timeout
    from orchestrator.planning.budget import Budget

    assert default_run_timeout(None) == default_run_timeout(1800.0) == 900.0
    assert default_run_timeout(3600.0) == 2039.0  # (0.4 x 1.2 x 3600 + 5) / 0.85
    # An hour on 2 cores (measured): a 12-epoch design at 21.3 s per epoch and seed, 3 seeds, 767 s.
    # Under the old fixed 900 s its final (18 epochs then) could not fit one candidate's cap, and
    # the run ended without one. Now it gets the epochs that fill its share, on train + val.
    budget = Budget(EpochTimer(), seeds=3, final_scale=54000 / 45900)
    budget.measure("c001", 11_000_000, 767.0, 36)
    budget.set(3600.0, max(MIN_CANDIDATE_S, SANDBOX_SHARE * default_run_timeout(3600.0) - SANDBOX_MARGIN_S), None)
    plan = budget.final_plan("c001", 12, 10.0)
    assert plan is not None and plan[0] > 12 and plan[1] is not None
    assert plan[1] <= min(FINAL_SHARE * 3600.0, budget.candidate_s)
    budget.set(3600.0, SANDBOX_SHARE * 900.0 - SANDBOX_MARGIN_S, None)  # a user's explicit --timeout 900 still binds
    short = budget.final_plan("c001", 12, 10.0)
    assert short is None or short[1] <= budget.candidate_s


def test_the_hour_runs_measured_design_gets_its_final_within_one_candidates_cap() -> None:
    """Replays the hour on 2 cores where no final came: the start design took 1083 s for 12
    epochs x 3 seeds (30% of the run), so its shortest final (13 epochs on train + val, padded)
    needed more than the 1440 s one candidate could take under the old default --timeout."""
    from orchestrator.loop import SANDBOX_MARGIN_S, SANDBOX_SHARE, default_run_timeout
    from orchestrator.planning.budget import Budget

    budget = Budget(EpochTimer(), seeds=3, final_scale=54000 / 45900)
    budget.measure("c001", 7_344_000, 1083.3, 36)
    budget.measure("c002", 9_345_920, 841.3, 21)
    old_cap = SANDBOX_SHARE * 1700.0 - SANDBOX_MARGIN_S
    budget.set(3600.0 - 1941.0, old_cap, None)
    assert budget.final_plan("c001", 12, 10.0) is None  # what happened
    budget.set(3600.0 - 1941.0, SANDBOX_SHARE * default_run_timeout(3600.0) - SANDBOX_MARGIN_S, None)
    plan = budget.final_plan("c001", 12, 10.0)
    assert plan is not None and plan[0] >= 13 and plan[1] is not None
    assert plan[1] <= budget.candidate_s


class OverrunningDevice(FakeDevice):
    """A device whose search candidates take 0.8x to 1.5x what their MACs say (seeded): the
    timer's estimates of a new design are that far off; a final is timed by its own design."""

    def __init__(self, facts: PlannerFacts, seconds_per_gmac: float, seed: int) -> None:
        import random

        super().__init__(facts, seconds_per_gmac)
        self.factors = random.Random(seed)
        self.by_design: dict[object, float] = {}

    def seconds(self, proposal: Proposal) -> float:
        factor = self.by_design.setdefault(proposal.config, self.factors.uniform(0.8, 1.5))
        return super().seconds(proposal) * factor


@pytest.mark.parametrize("seed", range(6))
def test_search_candidates_leave_the_final_its_time_with_slack_for_overruns(seed: int) -> None:
    """Every search candidate proposed while the final is still to come leaves more than the
    final's planned time (``FINAL_SLACK`` x it: a candidate may overrun its estimate by the
    difference without costing the final), and each run still ends with exactly one final."""
    planner = OfflinePlanner(FASHION, ACCURACY, seed=seed, flips=True,
                             train_defaults=TrainSpec(seeds=(0, 1, 2)))
    device = OverrunningDevice(FASHION, 30.0, seed)
    history: list[Outcome] = []
    kept = 0
    while device.clock < 3600.0:
        left = 3600.0 - device.clock
        planner.set_budget(left, candidate_s=SANDBOX_CAP_HOUR)
        proposal = planner.propose(history)
        if proposal is None:
            break
        plan = planner._final_plan(planner._best)
        estimate = planner.estimate_seconds(proposal)
        if planner.final_proposed is None and plan is not None and plan[1] is not None \
                and estimate is not None and plan[1] <= left:
            assert left - estimate >= 1.1 * plan[1], (proposal.rationale, left, plan)
            kept += 1
        outcome = device.train(proposal, f"c{len(history)}")
        planner.observe(outcome)
        history.append(outcome)
    assert kept >= 1  # the invariant was checked on real proposals
    finals = [o for o in history if final_training_of(o.proposal)]
    assert len(finals) == 1 and finals[0].proposal.train.epochs > 12


SANDBOX_CAP_HOUR = 0.85 * 2039.0 - 5.0  # one candidate's cap in an hour's run, default --timeout


def test_a_final_that_cannot_fit_one_candidates_limit_is_said_once() -> None:
    """The hour's measured start design under the old cap: the planner says why no final comes,
    naming the design and the flag to raise, once; under the default cap it says nothing."""
    from orchestrator.loop import SANDBOX_MARGIN_S, SANDBOX_SHARE

    def run_with(cap: float, budget: float = 3600.0) -> tuple[OfflinePlanner, list[list[str]]]:
        planner = OfflinePlanner(FASHION, ACCURACY, seed=0, flips=True, train_defaults=TrainSpec(seeds=(0, 1, 2)))
        planner.set_budget(budget, candidate_s=cap)
        first = planner.propose([])
        assert first is not None and first.train.epochs == 12
        said = [planner.take_notices()]  # nothing measured yet
        history = [Outcome(candidate_id="c001", proposal=first, status="passed", metric="accuracy", mean=0.936,
                           val_curve=(0.93,) * 12, seconds=1083.3)]
        planner.observe(history[0])
        for spent in (1083.3, 1500.0):
            planner.set_budget(budget - spent, candidate_s=cap)
            planner.propose(history)
            said.append(planner.take_notices())
        return planner, said

    planner, said = run_with(SANDBOX_CAP_HOUR)
    assert said == [[], [], []] and planner._final_plan(planner._best) is not None
    planner, said = run_with(SANDBOX_SHARE * 1700.0 - SANDBOX_MARGIN_S)  # the old default --timeout
    assert planner._final_plan(planner._best) is None
    assert said[0] == [] and said[2] == []  # once
    assert len(said[1]) == 1
    assert said[1][0].startswith("no final training of the best design so far (c001): even 13 epochs on train + val")
    assert "more than the 1440 s one candidate may take; raise --timeout" in said[1][0]
    # a run too short for the final whatever the limit (10 minutes measured: the start design took
    # 583 s of 600) is not told to raise --timeout
    planner, said = run_with(SANDBOX_SHARE * 900.0 - SANDBOX_MARGIN_S, budget=1600.0)
    assert planner._final_plan(planner._best) is None and said == [[], [], []]


def test_sub_second_estimates_read_under_1_s_never_about_0_s() -> None:
    planner = OfflinePlanner(WINE, ACCURACY, seed=0)
    device = FakeDevice(WINE, 0.5, startup=0.05)  # a small table net trains in a fraction of a second
    history = measured(planner, device, 3)
    planner.set_budget(600.0)
    proposal = planner.propose(history)
    assert proposal is not None
    estimate = planner.estimate_seconds(proposal)
    assert estimate is not None and estimate < 0.5
    assert proposal.rationale.endswith(", under 1 s"), proposal.rationale
    assert "about 0 s" not in proposal.rationale
