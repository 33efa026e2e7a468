"""Plots write valid PNG files and leave matplotlib's global state alone."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from evaluator import plots
from evaluator.plots import (Bar, Progress, plot_confusion, plot_leaderboard, plot_learning_curves,
                             plot_time_to_accuracy)
from sandbox_image.protocol import EpochStats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()  # checks the PNG chunks and CRCs
    with Image.open(path) as im:
        return im.size


def _curves(seeds: int, epochs: int) -> dict[int, list[EpochStats]]:
    return {
        s: [EpochStats(epoch=e, train_loss=1 / e, val_loss=1.1 / e + 0.01 * s, train_acc=1 - 0.5 / e,
                       val_acc=0.95 - 0.5 / e, seconds=0.2) for e in range(1, epochs + 1)]
        for s in range(seeds)
    }  # fmt: skip


def test_confusion_matrix_png(tmp_path: Path) -> None:
    cm = np.array([[50, 2, 0], [3, 45, 2], [0, 1, 47]])
    out = plot_confusion(cm, ["cat", "dog", "bird"], tmp_path / "plots" / "cm.png")
    width, height = _png_size(out)
    assert out == tmp_path / "plots" / "cm.png" and width > 300 and height > 300
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left behind


def test_confusion_matrix_with_many_classes_and_mean_counts(tmp_path: Path) -> None:
    cm = np.random.default_rng(0).random((40, 40)) * 3  # above the annotation limit
    assert _png_size(plot_confusion(cm, [f"c{i}" for i in range(40)], tmp_path / "big.png"))[0] > 1000
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(cm, ["a"], tmp_path / "bad.png")


def test_learning_curves_png(tmp_path: Path) -> None:
    width, height = _png_size(plot_learning_curves(_curves(3, 12), tmp_path / "lc.png"))
    assert width > 2 * height  # two panels side by side
    with pytest.raises(ValueError):
        plot_learning_curves({0: []}, tmp_path / "empty.png")


def test_leaderboard_png_with_a_failed_candidate(tmp_path: Path) -> None:
    bars = [Bar("cnn", 0.985, 0.98, 0.99), Bar("mlp", 0.97, None, None), Bar("broken", None)]
    assert _png_size(plot_leaderboard(bars, tmp_path / "lb.png", metric="accuracy"))[1] > 100
    with pytest.raises(ValueError):
        plot_leaderboard([], tmp_path / "none.png")


def test_time_to_accuracy_starts_at_the_run_start_on_a_readable_scale(tmp_path: Path, monkeypatch) -> None:
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig.axes[0]) or save(fig, path))
    # one finished candidate after 2.27 minutes: the x axis from 0, a value axis 0.01 tall, no offset
    assert _png_size(plot_time_to_accuracy([Progress(136.3, 0.9303, 0.9283)], tmp_path / "one.png"))[0] > 300
    ax = drawn[-1]
    assert ax.get_xlim()[0] == 0.0 and ax.get_xlim()[1] > 136.3 / 60
    low, high = ax.get_ylim()
    assert low < 0.9283 and high > 0.9303 and high - low == pytest.approx(0.011)
    assert not ax.yaxis.get_major_formatter().get_offset()
    # a real climb keeps its own range
    climb = [Progress(60, 0.80, 0.79), Progress(300, 0.91, None), Progress(900, 0.93, 0.925)]
    plot_time_to_accuracy(climb, tmp_path / "climb.png")
    low, high = drawn[-1].get_ylim()
    assert low < 0.79 < 0.93 < high and high - low < 0.2
    with pytest.raises(ValueError):
        plot_time_to_accuracy([], tmp_path / "none.png")


def _dots(ax) -> list[tuple[float, float]]:  # type: ignore[no-untyped-def]
    return [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines()
            if line.get_marker() == "o" and len(line.get_xdata()) == 1]


def test_the_dot_marks_the_epoch_the_worker_reported_kept(tmp_path: Path, monkeypatch) -> None:
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig.axes) or save(fig, path))

    def stats(epoch, acc, loss):  # type: ignore[no-untyped-def]
        return EpochStats(epoch=epoch, train_loss=0.5, train_acc=0.9, val_loss=loss, val_acc=acc, seconds=1.0)

    curve = [stats(1, 0.80, 0.50), stats(2, 0.86, 0.30), stats(3, 0.85, 0.35), stats(4, 0.88, 0.33)]
    # seed 0 kept epoch 4, seed 1 epoch 2; seed 2 reported none (no dot); seed 3 an epoch not in its curve
    path = plot_learning_curves({0: curve, 1: curve, 2: curve, 3: curve}, tmp_path / "kept.png",
                                kept={0: 4, 1: 2, 2: None, 3: 9}, train_note="label smoothing 0.1")
    assert _png_size(path)[0] > 300
    loss_ax, acc_ax = drawn[-1]
    assert _dots(loss_ax) == [(4, 0.33), (2, 0.30)] and _dots(acc_ax) == [(4, 0.88), (2, 0.86)]
    assert "weights kept" in [t.get_text() for t in loss_ax.get_legend().get_texts()]
    plot_learning_curves({0: curve}, tmp_path / "none.png")  # no kept epochs: no dot, no legend entry for one
    loss_ax, acc_ax = drawn[-1]
    assert _dots(loss_ax) == _dots(acc_ax) == []
    assert "weights kept" not in [t.get_text() for t in loss_ax.get_legend().get_texts()]


def test_no_global_matplotlib_state_changes(tmp_path: Path) -> None:
    backend = matplotlib.get_backend()
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    plot_confusion(np.eye(2), ["a", "b"], tmp_path / "a.png")
    plot_learning_curves(_curves(1, 3), tmp_path / "b.png")
    assert matplotlib.get_backend() == backend
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded
