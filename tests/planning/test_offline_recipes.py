"""The offline planner searches the recipe with the model, within bounds the data allows."""

from __future__ import annotations

import pytest

from orchestrator.planning.offline import OfflinePlanner
from orchestrator.planning.space import augment_choices, max_residual_stages, space_for
from orchestrator.planning.types import (
    SCHEDULES,
    Conv2d,
    PlannerFacts,
    GlobalAvgPool,
    Outcome,
    Proposal,
    Residual,
    Target,
)
from sandbox_image.protocol import TrainSpec

FASHION = PlannerFacts(name="fashion_mnist", input_shape=(1, 28, 28), num_classes=10,
                       n_train=54000, n_val=6000, n_test=10000)
MNIST = PlannerFacts(name="mnist", input_shape=(1, 28, 28), num_classes=10, n_train=54000)
CIFAR = PlannerFacts(name="cifar10", input_shape=(3, 32, 32), num_classes=10, n_train=45000)
DIGITS = PlannerFacts(name="digits", input_shape=(1, 8, 8), num_classes=10, n_train=1078)
WINE = PlannerFacts(name="wine", input_shape=(13,), num_classes=3, n_train=106)
ACCURACY = Target(metric="accuracy", threshold=0.99)
DEFAULTS = TrainSpec(seeds=(3, 4), time_budget_s=99.0)


def proposals(facts: PlannerFacts, n: int, seed: int = 0) -> list[Proposal]:
    """The first ``n`` proposals, each told a score that favours ResNets and SGD."""
    planner = OfflinePlanner(facts, ACCURACY, seed=seed, n_startup_trials=6,
                             train_defaults=DEFAULTS)
    history: list[Outcome] = []
    out = []
    for i in range(n):
        proposal = planner.propose(history)
        assert proposal is not None and proposal.config is not None
        out.append(proposal)
        resnet = any(isinstance(layer, Residual) for layer in proposal.config.layers)
        mean = 0.8 + 0.05 * resnet + 0.03 * (proposal.train.optimizer == "sgd") + i / 1000
        outcome = Outcome(candidate_id=f"c{i}", proposal=proposal, status="passed",
                          metric="accuracy", mean=mean, val_curve=(mean,), seconds=1.0)
        planner.observe(outcome)
        history.append(outcome)
    return out


@pytest.mark.parametrize("facts", [FASHION, MNIST, DIGITS, WINE], ids=lambda f: f.name)
def test_recipe_knobs_stay_within_their_bounds(facts: PlannerFacts) -> None:
    batches = set()
    for proposal in proposals(facts, 30):
        train = proposal.train
        assert train.optimizer in ("adamw", "sgd")
        assert train.nesterov == (train.optimizer == "sgd") and train.momentum == 0.9
        if train.optimizer == "sgd":
            assert 1e-2 <= train.lr <= 0.4 and 1e-5 <= train.weight_decay <= 2e-3
        else:
            assert 3e-4 <= train.lr <= 1e-2 and 1e-5 <= train.weight_decay <= 0.1
        assert train.schedule in SCHEDULES and 0.0 <= train.label_smoothing <= 0.2
        assert 0.0 <= train.warmup_epochs < train.epochs
        assert (train.warmup_epochs > 0) == (train.schedule == "cosine")
        assert train.batch_size * 4 <= facts.n_train
        batches.add(train.batch_size)
        # the run's settings are the loop's: the planner keeps the defaults it was given
        assert (train.seeds, train.time_budget_s, train.hflip_ok) == ((3, 4), 99.0, False)
        assert train.channels_last == facts.is_image
    assert len(batches) > 1 or facts is WINE  # 106 rows leave one batch size of four steps


@pytest.mark.parametrize(("facts", "allowed"), [
    (FASHION, {"none", "shift", "crop_flip", "crop_flip_erase"}),
    (CIFAR, {"none", "shift", "crop_flip", "crop_flip_erase"}),
    (MNIST, {"none", "shift", "crop_flip_erase"}),  # no flips: crop_flip would only shift
    (DIGITS, {"none", "shift"}),  # 8x8: no erasing either
    (WINE, {"none"}),  # tables are never augmented
], ids=lambda v: v.name if isinstance(v, PlannerFacts) else "")
def test_augmentation_is_searched_only_where_the_data_allows_it(
        facts: PlannerFacts, allowed: set[str]) -> None:
    seen = [p.train for p in proposals(facts, 30, seed=1)]
    assert {t.augment for t in seen} <= allowed
    assert len({t.augment for t in seen}) >= min(len(allowed), 2)  # and it is searched
    flips = "crop_flip" in allowed
    assert all(t.tta_flip == (flips and t.augment.startswith("crop_flip")) for t in seen)
    assert set(augment_choices(facts, flips)) == allowed


def test_the_first_trials_are_a_small_cnn_then_the_standard_resnet_recipe() -> None:
    small, standard = proposals(FASHION, 2)
    assert small.config is not None and standard.config is not None
    assert not any(isinstance(layer, Residual) for layer in small.config.layers)
    assert "known-good small CNN" in small.rationale
    # 28x28: three plain stages of two convs from 16 channels, SGD Nesterov + OneCycle, no
    # augmentation (one seed, 15 epochs on train + val: test 0.9345 unaugmented, 0.9290 with crops + flips)
    convs = [layer.out_channels for layer in small.config.layers if isinstance(layer, Conv2d)]
    assert convs == [16, 16, 32, 32, 64, 64]
    assert (small.train.optimizer, small.train.nesterov, small.train.schedule) == ("sgd", True, "onecycle")
    assert small.train.augment == "none" and small.train.label_smoothing == 0.1
    assert [layer.channels for layer in standard.config.layers
            if isinstance(layer, Residual)] == [64, 128, 256]
    assert isinstance(standard.config.layers[-1], GlobalAvgPool)
    train = standard.train
    assert (train.optimizer, train.nesterov, train.lr, train.schedule) == ("sgd", True, 0.2,
                                                                           "onecycle")
    assert (train.label_smoothing, train.weight_decay) == (0.1, 5e-4)
    assert (train.augment, train.pad_mode, train.tta_flip) == ("crop_flip", "reflect", True)
    assert "standard recipe" in standard.rationale


@pytest.mark.parametrize(("facts", "augment", "stages"), [(MNIST, "shift", 3),
                                                          (DIGITS, "none", 3),
                                                          (CIFAR, "crop_flip", 3)],
                         ids=lambda v: v.name if isinstance(v, PlannerFacts) else str(v))
def test_the_standard_resnet_fits_the_data(facts: PlannerFacts, augment: str, stages: int) -> None:
    standard = proposals(facts, 2)[1]
    assert standard.train.augment == augment  # 8x8 digits lose accuracy to shifts
    assert sum(isinstance(layer, Residual) for layer in standard.config.layers) == stages


def test_resnets_up_to_resnet18_scale_are_in_the_space() -> None:
    space = space_for(CIFAR, flips=True)
    assert max_residual_stages(32, 32) == max_residual_stages(28, 28) == 4
    assert max_residual_stages(8, 8) == 3 and max_residual_stages(3, 3) == 2
    point = {**space.starts[1][1], "res_stages": 4, "res_blocks": 2, "width": 64}
    config, _ = space.build(point)
    residual = [layer for layer in config.layers if isinstance(layer, Residual)]
    assert [(r.channels, r.blocks, r.stride) for r in residual] == [
        (64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
    assert isinstance(config.layers[0], Conv2d)
    found = {p.config.name for p in proposals(CIFAR, 40, seed=2)}  # type: ignore[union-attr]
    assert any(name.startswith("resnet-") for name in found)
    assert any(name.startswith("cnn-plain-") for name in found)


def test_epochs_are_the_fidelity_not_a_searched_parameter() -> None:
    planner = OfflinePlanner(FASHION, ACCURACY, epochs=(4, 16), flips=True)
    first = planner.propose([])
    assert first is not None and first.train.epochs == 16 and "epochs" not in first.params
    assert (planner.space.min_epochs, planner.space.max_epochs) == (4, 16)


def test_cheaper_points_shrink_the_model() -> None:
    space = space_for(CIFAR, flips=True)
    point = dict(space.starts[1][1])
    widths = []
    while point is not None:
        config, _ = space.build(point)
        widths.append(config.name)
        point = space.cheaper(point)  # type: ignore[assignment]
    assert widths[:3] == ["resnet-3x1-64", "resnet-3x1-32", "resnet-3x1-16"]
    assert widths[-1] == "resnet-1x1-16"
