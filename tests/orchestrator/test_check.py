"""`researcher check` without --train: what --dataset implies."""

from pathlib import Path

import pytest

from orchestrator.check import CheckRequest, run_check
from orchestrator.exceptions import UsageError
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.local import SubprocessBackend

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_dataset_implies_input_shape_and_classes_for_a_plain_check():
    outcome = run_check(CheckRequest(path=MODELS / "good_mlp.py", dataset="digits"), SubprocessBackend,
                        SandboxConfig(image="unused", timeout_s=120))
    assert outcome.result.failure is None
    assert outcome.result.check is not None and outcome.result.check.output_shape == (2, 10)


def test_flags_that_contradict_the_dataset_are_usage_errors():
    request = CheckRequest(path=MODELS / "good_mlp.py", dataset="digits", num_classes=3)
    with pytest.raises(UsageError, match="--num-classes 3 does not match dataset 'digits'"):
        run_check(request, SubprocessBackend, SandboxConfig(image="unused", timeout_s=120))


def test_a_data_dir_without_a_dataset_is_a_usage_error(tmp_path, capsys):
    """The directory's format cannot be guessed: the check must not train on digits instead."""
    from orchestrator import cli

    def never(*args, **kwargs):
        raise AssertionError("no sandbox may start")

    for train in ((), ("--train",)):
        code = cli.main(["check", str(MODELS / "good_mlp.py"), *train, "--data-dir", str(tmp_path)])
        assert code == 2
        assert "--data-dir needs --dataset NAME" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--data-dir needs --dataset NAME"):
        run_check(CheckRequest(path=MODELS / "good_mlp.py", data_dir=str(tmp_path)), never,
                  SandboxConfig(image="unused", timeout_s=120))


def test_check_train_progress_moves_inside_a_long_epoch(monkeypatch, capsys):
    """`check --train`'s progress: a line per epoch and, without a terminal, where a long epoch is
    every BATCH_LINE_EVERY_S; on a terminal the bar moves by the batch."""
    from orchestrator import training
    from sandbox_image.protocol import Batches, EpochStats, Progress

    stats = EpochStats(epoch=1, train_loss=0.5, train_acc=0.8, val_loss=0.6, val_acc=0.75, seconds=40.0)
    where = [Batches(seed=0, epoch=2, step=step, steps=400, epochs=3) for step in (100, 200)]
    with training.TrainingProgress(3, 1, enabled=None) as bar:  # no terminal under pytest
        bar.update(Progress(seed=0, stats=stats, epochs=3))
        bar.update(where[0])  # too soon after the epoch's line
        monkeypatch.setattr(training, "BATCH_LINE_EVERY_S", 0.0)
        bar.update(where[1])
        bar.update(Batches(seed=0, epoch=2, step=3, steps=8, epochs=3, phase="val"))
        bar.update(Batches(seed=0, epoch=3, step=20, steps=40, epochs=3, phase="predict"))
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["seed 0 epoch 1/3: loss 0.500/0.600 acc 0.800/0.750", "seed 0 epoch 2/3: batch 200/400",
                     "seed 0 epoch 2/3: validating, batch 3/8", "seed 0: predicting the held-out inputs, batch 20/40"]

    with training.TrainingProgress(3, 1, enabled=True) as bar:
        bar.update(Progress(seed=0, stats=stats, epochs=3))
        bar.update(where[0])
        assert bar._progress.tasks[0].completed == pytest.approx(1.25)  # 1 epoch and 100 of 400 batches
        bar.update(Batches(seed=0, epoch=2, step=3, steps=8, epochs=3, phase="val"))
        task = bar._progress.tasks[0]
        assert task.completed == pytest.approx(1.25) and task.description == "validating"  # no training batch
    assert "1/3" in capsys.readouterr().err  # the bar counts whole epochs
    with training.TrainingProgress(3, 1, enabled=False) as bar:
        bar.update(where[1])
        bar.update(Progress(seed=0, stats=stats, epochs=3))
    assert capsys.readouterr().err == ""  # progress off: nothing at all


def test_check_train_one_seed_prints_and_reports_no_spread():
    """One seed has no standard deviation: the table shows '-' and --json null, never a steady 0.0000."""
    import numpy as np

    from evaluator.dynamics import analyse
    from evaluator.metrics import score_seeds
    from orchestrator import training
    from sandbox_image.protocol import EpochStats

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    logits = {s: rng.normal(size=(90, 3)).astype(np.float32) + 2.0 * np.eye(3, dtype=np.float32)[y] for s in range(2)}
    curves = {0: (EpochStats(epoch=1, train_loss=0.5, train_acc=0.8, val_loss=0.6, val_acc=0.75, seconds=1.0),)}
    for seeds, spread in (((0,), False), ((0, 1), True)):
        scores = score_seeds({s: logits[s] for s in seeds}, y, ("a", "b", "c"))
        acc = training.training_json(scores, analyse(curves), None)["metrics"]["accuracy"]
        assert (acc["std"] is not None) is spread and (acc["ci95"][0] is not None) is spread
        row = next(line for line in training.summary_text(scores, analyse(curves), None).splitlines()
                   if line.strip().startswith("accuracy "))
        assert row.rstrip().endswith(f"{scores.metrics['accuracy'].std:.4f}" if spread else " -"), row


def test_check_train_says_which_epoch_each_seed_kept():
    import numpy as np

    from evaluator.dynamics import analyse
    from evaluator.metrics import score_seeds
    from orchestrator import training
    from tests.registry import factories as f

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 60)
    scores = score_seeds({0: rng.normal(size=(60, 3)).astype(np.float32)}, y, ("a", "b", "c"))
    curves = f.curves(5)
    text = training.summary_text(scores, analyse(curves, kept={0: 5, 1: 3}), None)
    assert "  weights kept: seed 0: epoch 5 of 5, seed 1: epoch 3 of 5 (the highest val accuracy)\n" in text
    assert "weights kept" not in training.summary_text(scores, analyse(curves), None)  # none reported
