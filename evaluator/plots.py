"""PNG plots: confusion matrix, learning curves, leaderboard.

Figures are built as ``matplotlib.figure.Figure`` objects on their own Agg
canvas, never through ``pyplot``: no global backend switch, no figure registry
that leaks memory in a long run. Files are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sandbox_image.protocol import EpochStats

#: Above this many classes the confusion matrix cells carry no numbers (unreadable).
_ANNOTATE_MAX = 20
_DPI = 110


@dataclass(frozen=True)
class Bar:
    """One leaderboard entry: a label, a mean and its 95% interval (None: no interval or failed)."""

    label: str
    mean: float | None
    low: float | None = None
    high: float | None = None


def plot_confusion(
    confusion: np.ndarray, class_names: Sequence[str], path: str | Path, *, title: str = "Confusion matrix"
) -> Path:
    """Heatmap of a confusion matrix (rows true, columns predicted) with counts in the cells."""
    cm = np.asarray(confusion, dtype=np.float64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix {cm.shape} does not match {n} class names")
    size = min(4 + 0.45 * n, 24)
    fig = _figure((size + 1.5, size))
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="count")
    ax.set(title=title, xlabel="predicted", ylabel="true")
    ticks = np.arange(n)
    font = 9 if n <= _ANNOTATE_MAX else max(3, 9 - n // 15)
    ax.set_xticks(ticks, [str(c) for c in class_names], rotation=45, ha="right", fontsize=font)
    ax.set_yticks(ticks, [str(c) for c in class_names], fontsize=font)
    if n <= _ANNOTATE_MAX:
        _annotate(ax, cm)
    return _save(fig, path)


def _annotate(ax, cm: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """Counts in the cells: whole numbers plain, means over seeds with one decimal, zeros faint."""
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), value in np.ndenumerate(cm):
        text = f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
        colour = "white" if value > threshold else ("lightgrey" if value == 0 else "black")
        ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)


def plot_learning_curves(
    curves: Mapping[int, Sequence[EpochStats]], path: str | Path, *, title: str = "Learning curves",
    kept: Mapping[int, int | None] | None = None, train_note: str = "",
) -> Path:
    """Two panels, loss and accuracy per epoch: train dashed, val solid, a colour per seed, a dot
    on the epoch whose weights were kept (``kept``: per seed, as the worker reported it; seeds
    without one get no dot). ``train_note`` says what makes the train curves differ from val's
    (label smoothing, augmentation), shown in the loss panel's title."""
    if not any(curves.values()):
        raise ValueError("no epochs to plot")
    fig = _figure((11, 4.2))
    loss_ax, acc_ax = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(curves))]
    marked = False
    for colour, (seed, curve) in zip(colours, sorted(curves.items())):
        epochs = [s.epoch for s in curve]
        loss_ax.plot(epochs, [s.train_loss for s in curve], "--", color=colour, label=f"seed {seed} train")
        loss_ax.plot(epochs, [s.val_loss for s in curve], "-", color=colour, label=f"seed {seed} val")
        acc_ax.plot(epochs, [s.train_acc for s in curve], "--", color=colour)
        acc_ax.plot(epochs, [s.val_acc for s in curve], "-", color=colour)
        at = next((s for s in curve if s.epoch == (kept or {}).get(seed)), None)
        if at is not None:
            marked = True
            loss_ax.plot(at.epoch, at.val_loss, "o", color=colour, markersize=5)
            acc_ax.plot(at.epoch, at.val_acc, "o", color=colour, markersize=5)
    if marked:
        loss_ax.plot([], [], "o", color="grey", markersize=5, label="weights kept")
    loss_ax.set(title="loss (cross-entropy" + (f"; train: {train_note}" if train_note else "") + ")",
                xlabel="epoch", ylabel="loss")
    acc_ax.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.legend(fontsize=7, ncol=2 if len(curves) > 3 else 1)
    fig.suptitle(f"{title} (measured in the sandbox; diagnostic)")
    return _save(fig, path)


def plot_leaderboard(
    bars: Sequence[Bar], path: str | Path, *, metric: str = "accuracy", title: str = "Leaderboard"
) -> Path:
    """Horizontal bars of each candidate's mean with 95% interval error bars; failed runs marked."""
    if not bars:
        raise ValueError("no candidates to plot")
    fig = _figure((8, 1.2 + 0.4 * len(bars)))
    ax = fig.add_subplot()
    y = np.arange(len(bars))[::-1]  # first entry on top
    means = np.array([b.mean if b.mean is not None else 0.0 for b in bars])
    ax.barh(y, means, color=["C0" if b.mean is not None else "lightgrey" for b in bars])
    for yi, bar in zip(y, bars):
        if bar.mean is None:
            continue
        if bar.low is not None and bar.high is not None:
            ax.errorbar(bar.mean, yi, xerr=[[bar.mean - bar.low], [bar.high - bar.mean]],
                        fmt="none", ecolor="black", capsize=3)  # fmt: skip
            ax.text(bar.high, yi, f" {bar.mean:.4f}", va="center", fontsize=8)
        else:
            ax.text(bar.mean, yi, f" {bar.mean:.4f}", va="center", fontsize=8)
    ax.set_yticks(y, [b.label for b in bars], fontsize=8)
    ax.set(title=title, xlabel=f"{metric} (mean over seeds, 95% CI)")
    ax.grid(axis="x", alpha=0.3)
    _zoom(ax, [b for b in bars if b.mean is not None])
    for yi, bar in zip(y, bars):
        if bar.mean is None:  # after zooming, so the mark sits at the visible left edge
            ax.text(ax.get_xlim()[0], yi, " failed", va="center", color="dimgrey", fontsize=8)
    return _save(fig, path)


def _zoom(ax, bars: Sequence[Bar]) -> None:  # type: ignore[no-untyped-def]
    """Start the axis near the worst score so close candidates stay distinguishable."""
    if not bars:
        return
    lows = [b.low if b.low is not None else b.mean for b in bars]
    highs = [b.high if b.high is not None else b.mean for b in bars]
    lo, hi = min(v for v in lows if v is not None), max(v for v in highs if v is not None)
    span = max(hi - lo, 0.01)  # one bar, or bars within 0.001, on an axis 0.002 wide read as large gaps
    ax.set_xlim(max(0.0, lo - span) if lo > 0 else lo - span, hi + span * 0.6)
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, target)
    return target


@dataclass(frozen=True)
class Progress:
    """The run's best-so-far after one finished candidate: wall time, the chosen model's figures."""

    seconds: float  # since the run started
    selection: float  # best selection score so far (what chose the model)
    test: float | None  # that model's test score (reported, chose nothing)


def plot_time_to_accuracy(points: Sequence[Progress], path: str | Path, *, metric: str = "accuracy",
                          title: str = "Time to accuracy") -> Path:
    """Best-so-far against wall time: a step line of the selection score and the chosen model's test score."""
    if not points:
        raise ValueError("no finished candidates to plot")
    fig = _figure((8, 3.6))
    ax = fig.add_subplot()
    minutes = [p.seconds / 60 for p in points]
    ax.step(minutes, [p.selection for p in points], where="post", marker="o", markersize=3,
            label=f"best selection {metric} (chooses the model)")
    tests = [(m, p.test) for m, p in zip(minutes, points) if p.test is not None]
    if tests:
        ax.step([m for m, _ in tests], [t for _, t in tests], where="post", marker="s", markersize=3,
                linestyle="--", label=f"test {metric} of that model (reported only)")
    ax.set(title=title, xlabel="wall time since the run started (minutes)", ylabel=metric)
    # From the run's start, and a value axis at least 0.01 tall: one point, or a flat line, drawn on
    # an axis zoomed to 0.002 (with an offset) reads as a large swing.
    ax.set_xlim(0.0, max(minutes) * 1.05 or 1.0)
    values = [p.selection for p in points] + [t for _, t in tests]
    low, high = min(values), max(values)
    half = max(high - low, 0.01) * 0.55
    ax.set_ylim((low + high) / 2 - half, (low + high) / 2 + half)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)
