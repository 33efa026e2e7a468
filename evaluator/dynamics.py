"""Learning dynamics from per-seed epoch curves, with plain-language advice.

The curves come from inside the sandbox, so they are diagnostics: they steer
the search and the report, never the headline score. Epochs are numbered from 1
as in ``EpochStats``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import msgspec

from sandbox_image.protocol import EpochStats

#: Convergence: first epoch whose val accuracy is within this fraction of the best.
CONVERGED_WITHIN = 0.01
#: Overfitting: val loss above its best by more than this fraction ...
OVERFIT_RISE = 0.02
#: ... for at least this many epochs after the best one, while train loss falls.
OVERFIT_EPOCHS = 2
#: Plateau: at least this many epochs in a row whose val loss moves less than ``PLATEAU_CHANGE``.
PLATEAU_EPOCHS = 3
PLATEAU_CHANGE = 0.005
#: Generalisation gap (train acc - val acc) above which regularisation is suggested.
LARGE_GAP = 0.10
#: Best train accuracy below which, with a small gap, the model looks underfit.
UNDERFIT_ACC = 0.80
#: Spread of best val accuracy over seeds above which the seeds are said to disagree.
SEED_SPREAD = 0.02


class SeedDynamics(msgspec.Struct, frozen=True, kw_only=True):
    """What the curves of one seed say."""

    epochs: int
    best_epoch: int  # lowest val loss
    best_val_loss: float
    best_val_acc: float  # at the best epoch
    convergence_epoch: int  # first epoch within 1% of the highest val accuracy
    gap_at_best: float  # train acc - val acc
    gap_final: float
    overfit_onset: int | None  # the epoch after which val loss rose while train loss fell
    plateaus: tuple[tuple[int, int], ...]  # (first, last) epochs of flat val loss
    still_improving: bool  # val loss improved over the last epochs
    # the epoch whose weights made the predictions, as the worker reported it (the recipe keeps the
    # highest val accuracy, or the last epoch on train + val); None when not reported or not in the curve
    kept_epoch: int | None = None


class Dynamics(msgspec.Struct, frozen=True, kw_only=True):
    """Dynamics of every seed and the advice drawn from them."""

    per_seed: dict[int, SeedDynamics]
    insights: tuple[str, ...]


def seed_dynamics(curve: Sequence[EpochStats], kept: int | None = None) -> SeedDynamics:
    """Best epoch, convergence, gaps, overfitting onset and plateaus of one seed's curve; ``kept``
    is the epoch whose weights the worker kept (recorded when it is one of the curve's epochs)."""
    if not curve:
        raise ValueError("no epochs to analyse")
    val_loss = [s.val_loss for s in curve]
    best = min(range(len(curve)), key=val_loss.__getitem__)
    top_acc = max(s.val_acc for s in curve)
    converged = next(i for i, s in enumerate(curve) if s.val_acc >= top_acc * (1 - CONVERGED_WITHIN))
    return SeedDynamics(
        epochs=len(curve),
        best_epoch=curve[best].epoch,
        best_val_loss=curve[best].val_loss,
        best_val_acc=curve[best].val_acc,
        convergence_epoch=curve[converged].epoch,
        gap_at_best=curve[best].train_acc - curve[best].val_acc,
        gap_final=curve[-1].train_acc - curve[-1].val_acc,
        overfit_onset=_overfit_onset(curve, best),
        plateaus=_plateaus(curve),
        still_improving=_still_improving(val_loss),
        kept_epoch=kept if kept is not None and any(s.epoch == kept for s in curve) else None,
    )


def analyse(curves: Mapping[int, Sequence[EpochStats]], kept: Mapping[int, int] | None = None) -> Dynamics:
    """Dynamics of every seed's curve and a few plain-language insights; ``kept`` is each seed's
    kept epoch as the worker reported it (``Predictions.best_epoch``)."""
    kept = kept or {}
    per_seed = {seed: seed_dynamics(c, kept.get(seed)) for seed, c in sorted(curves.items()) if c}
    return Dynamics(per_seed=per_seed, insights=insights(list(per_seed.values())))


def insights(seeds: Sequence[SeedDynamics]) -> tuple[str, ...]:
    """Short advice that holds for most seeds (a majority vote, median epochs)."""
    if not seeds:
        return ("no learning curves were reported",)
    out: list[str] = []
    for check in (_overfitting, _still_training, _gap_or_underfit, _plateau, _seed_spread, _convergence):
        line = check(seeds, out)
        if line:
            out.append(line)
    return tuple(out)


def _majority(seeds: Sequence[SeedDynamics]) -> int:
    return len(seeds) // 2 + 1


def _overfitting(seeds: Sequence[SeedDynamics], _: list[str]) -> str | None:
    onsets = [s.overfit_onset for s in seeds if s.overfit_onset is not None]
    if len(onsets) < _majority(seeds):
        return None
    epoch = int(statistics.median(onsets))
    return f"overfits after epoch {epoch}: consider dropout, weight decay or fewer epochs"


def _still_training(seeds: Sequence[SeedDynamics], _: list[str]) -> str | None:
    if sum(s.still_improving for s in seeds) < _majority(seeds):
        return None
    return "still improving at the last epoch: train longer"


def _gap_or_underfit(seeds: Sequence[SeedDynamics], said: list[str]) -> str | None:
    gap = statistics.median(s.gap_at_best for s in seeds)
    if gap > LARGE_GAP:
        return (f"large generalisation gap (train accuracy {gap:.0%} above val at the best epoch): "
                "regularise (dropout, weight decay, augmentation) or use a smaller model")
    train_acc = statistics.median(s.best_val_acc + s.gap_at_best for s in seeds)
    if train_acc < UNDERFIT_ACC and not said:
        return (f"train accuracy only {train_acc:.0%} with a small gap: the model underfits; "
                "try more capacity or another learning rate")
    return None


def _plateau(seeds: Sequence[SeedDynamics], said: list[str]) -> str | None:
    starts = [s.plateaus[0][0] for s in seeds if s.plateaus]
    if len(starts) < _majority(seeds) or any(s.still_improving for s in seeds):
        return None
    first = int(statistics.median(starts))
    return (f"validation loss plateaus from about epoch {first}: a learning-rate schedule "
            "or a lower learning rate may help")


def _seed_spread(seeds: Sequence[SeedDynamics], _: list[str]) -> str | None:
    if len(seeds) < 2:
        return None
    spread = statistics.stdev(s.best_val_acc for s in seeds)
    if spread <= SEED_SPREAD:
        return None
    return f"seeds disagree (val accuracy std {spread:.1%}): compare means over seeds, not single runs"


def _convergence(seeds: Sequence[SeedDynamics], _: list[str]) -> str | None:
    epoch = int(statistics.median(s.convergence_epoch for s in seeds))
    return f"reaches 99% of its best val accuracy by epoch {epoch}"


# ------------------------------------------------------------------ internals


def _overfit_onset(curve: Sequence[EpochStats], best: int) -> int | None:
    """The best epoch, when val loss then stays >2% above it for >=2 epochs while train loss falls."""
    after = curve[best + 1 :]
    risen = [s for s in after if s.val_loss > curve[best].val_loss * (1 + OVERFIT_RISE)]
    if len(risen) < OVERFIT_EPOCHS or after[-1].train_loss >= curve[best].train_loss:
        return None
    return curve[best].epoch


def _plateaus(curve: Sequence[EpochStats]) -> tuple[tuple[int, int], ...]:
    """Runs of >= PLATEAU_EPOCHS epochs whose val loss changes < 0.5% from the epoch before."""
    spans, start = [], None
    for i in range(1, len(curve) + 1):
        flat = i < len(curve) and _rel_change(curve[i - 1].val_loss, curve[i].val_loss) < PLATEAU_CHANGE
        if flat and start is None:
            start = i - 1
        elif not flat and start is not None:
            if i - start >= PLATEAU_EPOCHS:
                spans.append((curve[start].epoch, curve[i - 1].epoch))
            start = None
    return tuple(spans)


def _still_improving(val_loss: Sequence[float]) -> bool:
    """Val loss at its lowest in the last epoch and still falling by more than the plateau tolerance."""
    if len(val_loss) < 2:
        return True
    last, before = val_loss[-1], min(val_loss[:-1])
    return last < before and _rel_change(before, last) >= PLATEAU_CHANGE


def _rel_change(a: float, b: float) -> float:
    return abs(b - a) / max(abs(a), 1e-12)
