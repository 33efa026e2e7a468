"""Learning dynamics on synthetic curves whose story is known."""

from __future__ import annotations

import re

import msgspec
import pytest

from evaluator.dynamics import Dynamics, analyse, insights, seed_dynamics
from sandbox_image.protocol import EpochStats


def _curve(train_loss: list[float], val_loss: list[float], train_acc: list[float], val_acc: list[float]) -> list[EpochStats]:
    return [
        EpochStats(epoch=i + 1, train_loss=tl, val_loss=vl, train_acc=ta, val_acc=va, seconds=0.1)
        for i, (tl, vl, ta, va) in enumerate(zip(train_loss, val_loss, train_acc, val_acc))
    ]


def _overfitting(onset: int = 12, epochs: int = 20, noise: float = 0.0) -> list[EpochStats]:
    """Val loss falls until ``onset`` then rises; train loss falls throughout."""
    train_loss = [2.0 * 0.85**e for e in range(epochs)]
    val_loss = [
        1.0 / (e + 1) + 0.3 + noise * (-1) ** e if e < onset else 1.0 / onset + 0.3 + 0.04 * (e - onset + 1)
        for e in range(epochs)
    ]
    train_acc = [min(0.5 + 0.04 * e, 1.0) for e in range(epochs)]
    val_acc = [min(0.5 + 0.03 * e, 0.85) if e < onset else 0.85 - 0.005 * (e - onset) for e in range(epochs)]
    return _curve(train_loss, val_loss, train_acc, val_acc)


def _still_improving(epochs: int = 10) -> list[EpochStats]:
    loss = [1.0 * 0.8**e for e in range(epochs)]
    acc = [0.5 + 0.04 * e for e in range(epochs)]
    return _curve(loss, [v * 1.1 for v in loss], acc, [a - 0.01 for a in acc])


def test_overfitting_onset_is_found_at_the_right_epoch() -> None:
    d = seed_dynamics(_overfitting(onset=12))
    assert d.overfit_onset == 12 and d.best_epoch == 12 and d.epochs == 20
    assert not d.still_improving
    assert d.gap_at_best == pytest.approx((0.5 + 0.04 * 11) - 0.83)
    assert d.gap_final == pytest.approx(1.0 - (0.85 - 0.005 * 7))


def test_overfitting_advice_uses_the_median_onset() -> None:
    report = analyse({0: _overfitting(onset=12), 1: _overfitting(onset=11), 2: _overfitting(onset=14)})
    assert any(line.startswith("overfits after epoch 12:") and "weight decay" in line for line in report.insights)
    assert not any("train longer" in line for line in report.insights)


def test_noise_before_the_best_epoch_is_not_overfitting() -> None:
    d = seed_dynamics(_overfitting(onset=19, epochs=20, noise=0.002))
    assert d.overfit_onset is None


def test_one_bad_epoch_after_the_best_is_not_overfitting() -> None:
    curve = _still_improving(10)
    bump = msgspec.structs.replace(curve[-1], val_loss=curve[-2].val_loss * 1.5)
    d = seed_dynamics([*curve[:-1], bump])
    assert d.overfit_onset is None and d.best_epoch == 9


def test_still_improving_says_train_longer() -> None:
    d = seed_dynamics(_still_improving())
    assert d.still_improving and d.best_epoch == 10 and d.overfit_onset is None
    assert "still improving at the last epoch: train longer" in insights([d])


def test_convergence_epoch_is_within_one_percent_of_the_best_accuracy() -> None:
    acc = [0.5, 0.8, 0.895, 0.9, 0.9]
    curve = _curve([1.0, 0.8, 0.6, 0.5, 0.45], [1.0, 0.8, 0.7, 0.69, 0.689], acc, acc)
    assert seed_dynamics(curve).convergence_epoch == 3  # 0.895 >= 0.99 * 0.9


def test_plateau_is_reported() -> None:
    val = [1.0, 0.7, 0.6, 0.6, 0.601, 0.6, 0.5995, 0.45, 0.44, 0.44]
    curve = _curve([v - 0.1 for v in val], val, [0.9] * 10, [0.85] * 10)
    d = seed_dynamics(curve)
    assert d.plateaus == ((3, 7),)  # the last two flat epochs are too short a run


def test_plateau_advice_when_val_loss_stalls() -> None:
    val = [1.0, 0.7, 0.6] + [0.6] * 7
    d = seed_dynamics(_curve([v - 0.1 for v in val], val, [0.95] * 10, [0.9] * 10))
    assert d.plateaus == ((3, 10),)
    assert any("plateaus from about epoch 3" in line for line in insights([d]))


def test_large_gap_and_underfitting_advice() -> None:
    wide = _curve([0.5, 0.2, 0.1], [0.9, 0.8, 0.85], [0.8, 0.95, 0.99], [0.7, 0.75, 0.74])
    assert any("large generalisation gap" in line for line in insights([seed_dynamics(wide)]))
    weak = _curve([2.0, 1.9, 1.9], [2.0, 1.95, 1.96], [0.3, 0.35, 0.36], [0.3, 0.34, 0.34])
    assert any("underfits" in line for line in insights([seed_dynamics(weak)]))


def test_seeds_that_disagree_are_flagged() -> None:
    high, low = _still_improving(), [msgspec.structs.replace(s, val_acc=s.val_acc - 0.2) for s in _still_improving()]
    assert any("seeds disagree" in line for line in insights([seed_dynamics(high), seed_dynamics(low)]))


def test_dynamics_serialise_and_tolerate_missing_curves() -> None:
    report = analyse({0: _overfitting(), 1: []})
    assert list(report.per_seed) == [0]
    assert msgspec.json.decode(msgspec.json.encode(report), type=Dynamics) == report
    assert analyse({}).insights == ("no learning curves were reported",)
    with pytest.raises(ValueError):
        seed_dynamics([])


def test_the_kept_epoch_is_the_workers_and_only_one_of_the_curves_epochs() -> None:
    # the epoch is the worker's word (its recipe's rule is tested in test_recipe*), recorded only when it
    # names one of the seed's epochs
    report = analyse({0: _overfitting(), 1: _overfitting(), 2: _overfitting(), 3: _overfitting()},
                     kept={0: 12, 1: 20, 2: 21, 3: 0})
    assert [d.kept_epoch for d in report.per_seed.values()] == [12, 20, None, None]  # 21 and 0 are not epochs
    assert analyse({0: _overfitting()}).per_seed[0].kept_epoch is None  # not reported: not made up
    # a record stored before the field existed reads with none
    old = re.sub(rb',"kept_epoch":(\d+|null)', b"", msgspec.json.encode(report))
    assert b"kept_epoch" not in old
    assert msgspec.json.decode(old, type=Dynamics).per_seed[0].kept_epoch is None
