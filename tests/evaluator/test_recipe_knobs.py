"""The recipe's knobs (schedules, Nesterov, label smoothing, TTA, best weights, truncation), on CPU."""

from __future__ import annotations

import math
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from torch import nn

from evaluator.prepare import PreparedData
from evaluator.recipe import (
    TrainData,
    effective_patience,
    lr_at,
    make_optimizer,
    momentum_at,
    train_seed,
)
from orchestrator.planning.types import InvalidConfig, parse_train_spec
from sandbox_image.protocol import DataSpec, EpochStats, Job, Predictions, TrainSpec
from tests.fresh import compiler_stack_after


# _one_thread and digits: tests/evaluator/conftest.py


def _tiny(n: int = 96, seed: int = 0) -> TrainData:
    """Random 1x8x8 images in 3 classes: enough to drive the loop, nothing to learn."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, n)
    return TrainData(x, y, x[:32], y[:32], x[:40])


def _linear_image_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


# ------------------------------------------------------------------ schedules


def _lrs(spec: TrainSpec, total: int, per_epoch: int) -> list[float]:
    return [lr_at(spec, s, total, per_epoch) for s in range(total)]


def test_constant_is_flat_and_warms_up_linearly() -> None:
    assert _lrs(TrainSpec(lr=0.1), 20, 10) == [0.1] * 20
    lrs = _lrs(TrainSpec(lr=0.1, warmup_epochs=0.5), 20, 10)  # 5 warm-up steps
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1]) and lrs[5:] == [0.1] * 15


def test_cosine_warms_up_peaks_and_decays_to_zero() -> None:
    spec = TrainSpec(lr=0.1, schedule="cosine", warmup_epochs=1.0)
    lrs = _lrs(spec, 100, 10)  # 10 warm-up steps, then 90 of cosine
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1) == max(lrs)  # start, peak
    assert lrs[10] == pytest.approx(0.1) and lrs[55] == pytest.approx(0.05)  # half-way down
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-3 * 0.1 + 1e-4  # end near 0
    assert _lrs(TrainSpec(lr=0.1, schedule="cosine"), 10, 5)[0] == pytest.approx(0.1)  # no warm-up


@pytest.mark.parametrize("total", [7, 100, 391])
def test_onecycle_is_torchs_onecyclelr_lr_and_momentum(total: int) -> None:
    spec = TrainSpec(lr=0.2, schedule="onecycle", optimizer="sgd")
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=total)
    for step in range(total):
        group = opt.param_groups[0]
        assert lr_at(spec, step, total, 10) == pytest.approx(group["lr"], rel=1e-12, abs=1e-15)
        assert momentum_at(spec, step, total) == pytest.approx(group["momentum"], rel=1e-12)
        opt.step()
        sched.step()
    lrs = _lrs(spec, 100, 10)
    assert lrs[0] == pytest.approx(0.2 / 25) and lrs[29] == pytest.approx(0.2) == max(lrs)  # start, peak
    assert lrs[-1] == pytest.approx(0.2 / 25 / 1e4)  # end


def test_the_schedule_reaches_the_optimiser_per_batch() -> None:
    spec = TrainSpec(epochs=4, batch_size=16, lr=0.05, schedule="onecycle", optimizer="sgd", nesterov=True)
    result = train_seed(_linear_image_model, _tiny(96), spec, seed=0)  # 6 steps per epoch, 24 in all
    assert [s.lr for s in result.curves] == pytest.approx([lr_at(spec, 6 * e - 1, 24, 6) for e in (1, 2, 3, 4)])


def test_patience_defaults_do_not_cut_a_schedule_short() -> None:
    assert effective_patience(TrainSpec()) == 5
    assert effective_patience(TrainSpec(schedule="cosine")) == 0
    assert effective_patience(TrainSpec(schedule="onecycle")) == 0
    assert effective_patience(TrainSpec(schedule="onecycle", patience=3)) == 3


# ------------------------------------------------------------------ optimiser and loss


def test_nesterov_is_passed_to_sgd_and_updates_like_torch() -> None:
    spec = TrainSpec(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    torch.manual_seed(0)
    ours_model, stock_model = nn.Linear(5, 3), nn.Linear(5, 3)
    stock_model.load_state_dict(ours_model.state_dict())
    ours = make_optimizer(ours_model.parameters(), spec)
    theirs = torch.optim.SGD(stock_model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    assert ours.defaults["nesterov"] is True
    assert make_optimizer(nn.Linear(2, 2).parameters(), TrainSpec(optimizer="sgd")).defaults["nesterov"] is False
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for _ in range(4):
        for model, opt in ((ours_model, ours), (stock_model, theirs)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ours_model.parameters(), stock_model.parameters()))
    with pytest.raises(ValueError, match="nesterov applies to optimizer sgd only"):
        make_optimizer(nn.Linear(2, 2).parameters(), TrainSpec(optimizer="adamw", nesterov=True))


class _Confident(nn.Module):
    """Always predicts class 0 with logit 10 (a parameter keeps the optimiser busy, at no effect)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 3)
        logits[:, 0] = 10.0
        return logits + 0.0 * self.unused


def test_label_smoothing_reaches_the_training_loss_only() -> None:
    x = np.zeros((64, 4), dtype=np.float32)
    y = np.zeros(64, dtype=np.int64)
    data = TrainData(x, y, x[:16], y[:16], x[:8])
    plain = train_seed(_Confident, data, TrainSpec(epochs=1), seed=0).curves[0]
    smooth = train_seed(_Confident, data, TrainSpec(epochs=1, label_smoothing=0.1), seed=0).curves[0]
    logits, target = torch.tensor([[10.0, 0.0, 0.0]]), torch.tensor([0])
    expected = float(nn.functional.cross_entropy(logits, target, label_smoothing=0.1))
    assert plain.train_loss == pytest.approx(float(nn.functional.cross_entropy(logits, target)), rel=1e-4)
    assert smooth.train_loss == pytest.approx(expected, rel=1e-4) and expected > 0.5
    assert smooth.val_loss == pytest.approx(plain.val_loss) and plain.val_loss < 1e-3  # validation: plain CE


# ------------------------------------------------------------------ predictions


class _Asymmetric(nn.Module):
    """A linear read-out of the image: its logits change when the image is mirrored."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


@pytest.mark.parametrize("hflip_ok", [True, False])
def test_tta_averages_the_logits_of_each_image_and_its_mirror(hflip_ok: bool) -> None:
    built: list[nn.Module] = []

    def make() -> nn.Module:
        built.append(_Asymmetric())
        return built[-1]

    data = _tiny()
    result = train_seed(make, data, TrainSpec(epochs=1, tta_flip=True, hflip_ok=hflip_ok), seed=0)
    x = torch.from_numpy(data.test_x)
    with torch.no_grad():
        plain, mirrored = built[0](x), built[0](x.flip(-1))
    expected = (plain + mirrored) / 2 if hflip_ok else plain  # never a flip the dataset forbids
    np.testing.assert_allclose(result.logits, expected.numpy(), rtol=1e-6, atol=1e-6)
    assert not np.allclose(plain.numpy(), mirrored.numpy())


def test_a_schedule_runs_to_the_end_and_returns_the_best_weights(digits: PreparedData) -> None:
    """Val labels shifted by one: the better the net learns the train set, the worse val gets."""
    x, y = digits.train_x[:400], digits.train_y[:400]
    data = TrainData(x, y, x, (y + 1) % 10, x)
    spec = TrainSpec(epochs=6, lr=0.05, schedule="cosine", optimizer="sgd", nesterov=True)
    result = train_seed(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data, spec, seed=0)
    assert len(result.curves) == 6 and not result.stopped_early and not result.truncated
    best = result.curves[result.best_epoch - 1]
    assert result.best_epoch < 6 and (best.val_acc, -best.val_loss) == max(
        (s.val_acc, -s.val_loss) for s in result.curves)
    last = result.curves[-1]
    assert (last.val_acc, -last.val_loss) < (best.val_acc, -best.val_loss)
    logits, val_y = torch.from_numpy(result.logits), torch.from_numpy(data.val_y)
    assert float(nn.functional.cross_entropy(logits, val_y)) == pytest.approx(best.val_loss, rel=1e-4)
    assert float((logits.argmax(1) == val_y).float().mean()) == pytest.approx(best.val_acc)


def test_fit_val_trains_on_train_and_val_and_keeps_the_last_weights(digits: PreparedData) -> None:
    """Val labels shifted by one, as above: only fit_val learns them, and nothing stops early."""
    x, y = digits.train_x[:400], digits.train_y[:400]
    data = TrainData(x[:200], y[:200], x[200:], (y[200:] + 1) % 10, x[200:])
    spec = TrainSpec(epochs=6, lr=0.05, optimizer="sgd", patience=1, fit_val=True)
    assert effective_patience(spec) == 0
    result = train_seed(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data, spec, seed=0)
    assert len(result.curves) == 6 and not result.stopped_early and result.best_epoch == 6
    logits, shifted = torch.from_numpy(result.logits), torch.from_numpy(data.val_y)
    last = result.curves[-1]
    assert float((logits.argmax(1) == shifted).float().mean()) == pytest.approx(last.val_acc)  # the last weights
    assert last.val_acc > 0.5  # it learnt the val labels: val was in its training data
    plain = train_seed(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data,
                       msgspec.structs.replace(spec, fit_val=False, patience=0), seed=0)
    assert max(s.val_acc for s in plain.curves) < 0.2  # without it, val is never trained on


class _Slow(nn.Module):
    """Sleeps 5 ms per training batch, so a deadline falls inside an epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(0.005)
        return self.lin(x.flatten(1))


class _SlowEverywhere(_Slow):
    """Sleeps 5 ms per batch, evaluation batches too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.005)
        return self.lin(x.flatten(1))


def test_a_deadline_cuts_training_keeps_the_best_weights_and_says_so() -> None:
    seen: list[EpochStats] = []
    spec = TrainSpec(epochs=50, batch_size=8, schedule="onecycle", optimizer="sgd", lr=0.05)
    started = time.monotonic()
    reported: list[tuple[int, int, int, int, str]] = []
    result = train_seed(_Slow, _tiny(96), spec, seed=0, deadline=started + 0.3, on_epoch=seen.append,
                        on_batch=lambda *where: reported.append(where))
    assert result.truncated and not result.stopped_early
    assert 1 <= len(result.curves) < 50 and tuple(seen) == result.curves
    # every training batch is reported with the epochs training goes to: 50 asked, then what the deadline fits
    batches = [b[:4] for b in reported if b[4] == "train"]
    assert batches[0] == (1, 1, 12, 50) and all(b[2] == 12 for b in batches)
    planned = [b[3] for b in batches]
    assert planned == sorted(planned, reverse=True) and planned[-1] < 50
    assert all(epoch <= plan for epoch, _, _, plan in batches)
    # each epoch's validation (32 examples, batches of 16), then the prediction of 40 test inputs after the last
    trained = len(result.curves)
    assert [b[:3] for b in reported if b[4] == "val"] == [(e, s, 2) for e in range(1, trained + 1) for s in (1, 2)]
    assert [b for b in reported if b[4] == "predict"] == [(trained, s, 3, 0, "predict") for s in (1, 2, 3)]
    assert reported[-3:] == [(trained, s, 3, 0, "predict") for s in (1, 2, 3)]
    assert time.monotonic() - started < 5  # about 0.3 s; generous for a shared machine
    assert result.logits.shape == (40, 3) and np.isfinite(result.logits).all()
    assert 1 <= result.best_epoch <= len(result.curves)


def test_the_worker_splits_the_budget_over_seeds_and_reports_truncation(tmp_path: Path) -> None:
    from sandbox_image.worker import train_all

    data = _tiny(96)
    for name, array in (("train_x", data.train_x), ("train_y", data.train_y), ("val_x", data.val_x),
                        ("val_y", data.val_y), ("test_x", data.test_x)):
        np.save(tmp_path / f"{name}.npy", array)
    spec = TrainSpec(epochs=200, batch_size=8, seeds=(0, 1), time_budget_s=0.6)
    job = Job(job_id="t", source="", class_name="Net", input_shape=(1, 8, 8), num_classes=3, train=spec,
              data=DataSpec(root=str(tmp_path)))
    sent: list[msgspec.Struct] = []
    started = time.monotonic()
    train_all(_Slow, job, sent.append)
    predictions = [m for m in sent if isinstance(m, Predictions)]
    assert [p.seed for p in predictions] == [0, 1] and all(p.truncated for p in predictions)
    assert all(p.shape == (40, 3) and 1 <= len(p.curves) < 200 for p in predictions)
    assert time.monotonic() - started < 6  # about 0.6 s; both seeds got a share


def test_the_worker_says_where_a_long_epoch_is_and_the_host_accepts_it(tmp_path: Path, monkeypatch) -> None:
    """Batches at most every BATCHES_EVERY_S inside an epoch, its validation and the prediction (never
    at a phase's last batch, which what follows covers); the host's own bounds accept the real
    worker's sequence."""
    from orchestrator.sandbox import bounds
    from sandbox_image import worker
    from sandbox_image.protocol import Batches, Progress

    data = _tiny(96)
    for name, array in (("train_x", data.train_x), ("train_y", data.train_y), ("val_x", data.val_x),
                        ("val_y", data.val_y), ("test_x", data.test_x)):
        np.save(tmp_path / f"{name}.npy", array)
    job = Job(job_id="t", source="", class_name="Net", input_shape=(1, 8, 8), num_classes=3,
              train=TrainSpec(epochs=3, batch_size=8, seeds=(0, 1)), data=DataSpec(root=str(tmp_path)))
    steps = -(-len(data.train_y) // 8)
    sent: list[msgspec.Struct] = []
    monkeypatch.setattr(worker, "BATCHES_EVERY_S", 0.004)  # a batch takes 5 ms: one after nearly each
    worker.train_all(_SlowEverywhere, job, sent.append)
    batches = [m for m in sent if isinstance(m, Batches)]
    train = [m for m in batches if m.phase == "train"]
    assert 6 <= len(train) <= 6 * (steps - 1)  # some in each epoch, never at an epoch's last batch
    progress_seen: dict[int, int] = {}
    for count, msg in enumerate(m for m in sent if isinstance(m, (Batches, Progress))):
        if isinstance(msg, Progress):
            bounds.check_progress(msg, job, progress_seen)
        else:
            total = {"train": steps, "val": 2, "predict": 3}[msg.phase]  # val 32 and test 40 in batches of 16
            assert 1 <= msg.step < msg.steps == total
            assert msg.planned == (0 if msg.phase == "predict" else 3)  # no deadline: as asked
            bounds.check_batches(msg, job, progress_seen, count + 1, elapsed_s=3600)
    assert {(m.seed, m.epoch) for m in train} == {(s, e) for s in (0, 1) for e in (1, 2, 3)}
    assert {(m.seed, m.epoch) for m in batches if m.phase == "val"} == {(s, e) for s in (0, 1) for e in (1, 2, 3)}
    assert {(m.seed, m.epoch, m.step) for m in batches if m.phase == "predict"} == {(0, 3, 1), (0, 3, 2),
                                                                                   (1, 3, 1), (1, 3, 2)}

    sent.clear()
    monkeypatch.setattr(worker, "BATCHES_EVERY_S", 3600.0)  # short epochs: nothing between them
    worker.train_all(_Slow, job, sent.append)
    assert not any(isinstance(m, Batches) for m in sent) and sum(isinstance(m, Progress) for m in sent) == 6


# ------------------------------------------------------------------ determinism and CPU no-ops

_FULL = TrainSpec(epochs=3, batch_size=32, lr=0.05, optimizer="sgd", nesterov=True, weight_decay=5e-4,
                  schedule="onecycle", label_smoothing=0.1, augment="crop_flip_erase", hflip_ok=True,
                  tta_flip=True, amp=True, channels_last=True)


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def test_the_full_recipe_is_deterministic_on_cpu(digits: PreparedData) -> None:
    data = digits.train_data()
    a = train_seed(_cnn, data, _FULL, seed=3)
    b = train_seed(_cnn, data, _FULL, seed=3)
    c = train_seed(_cnn, data, _FULL, seed=4)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert not np.array_equal(a.logits, c.logits)
    # bf16 autocast is CUDA-only: on CPU it changes nothing
    off = train_seed(_cnn, data, msgspec.structs.replace(_FULL, amp=False), seed=3)
    np.testing.assert_array_equal(a.logits, off.logits)
    # channels_last is used on CPU too (faster convolutions). Its sums round differently and
    # training amplifies that, so the two nets differ in their logits but not in what they learnt
    nchw = train_seed(_cnn, data, msgspec.structs.replace(_FULL, channels_last=False), seed=3)
    assert not np.array_equal(a.logits, nchw.logits)
    agree = float((a.logits.argmax(1) == nchw.logits.argmax(1)).mean())
    assert agree > 0.9, agree


def test_channels_last_on_cpu_stores_the_weights_channels_last(digits: PreparedData) -> None:
    made: list[nn.Module] = []

    def make() -> nn.Module:
        made.append(_cnn())
        return made[-1]

    spec = msgspec.structs.replace(_FULL, epochs=1)
    train_seed(make, digits.train_data(), spec, seed=0)
    conv = made[0][3].weight  # 16 -> 32 channels (the first conv's single input channel fits both)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    train_seed(make, digits.train_data(), msgspec.structs.replace(spec, channels_last=False), seed=0)
    assert made[1][3].weight.is_contiguous()


def test_the_new_recipe_trains_a_small_cnn_on_digits_in_seconds(digits: PreparedData) -> None:
    """Digits are not flipped (hflip_ok False): crop_flip shifts only, tta_flip is ignored.

    On 8x8 digits a 1-pixel shift is an eighth of the image: zero padding costs less than
    reflect here (about 0.988 against 0.972), and no augmentation does best (about 0.997).
    """
    spec = TrainSpec(epochs=10, batch_size=64, lr=0.1, optimizer="sgd", nesterov=True, weight_decay=5e-4,
                     schedule="onecycle", label_smoothing=0.1, augment="crop_flip", pad_mode="zero",
                     tta_flip=True)
    started = time.monotonic()
    result = train_seed(_cnn, digits.train_data(), spec, seed=0)
    seconds = time.monotonic() - started
    accuracy = float((result.logits.argmax(axis=1) == digits.test_y).mean())
    print(f"digits CNN, new recipe: test accuracy {accuracy:.4f} in {seconds:.2f} s")
    assert accuracy > 0.97 and len(result.curves) == 10
    assert seconds < 60  # a few seconds on one core; generous for a shared machine


def test_training_with_every_knob_never_loads_the_compiler_stack() -> None:
    code = (
        "import sys, numpy as np, torch\n"
        "from torch import nn\n"
        "from evaluator.recipe import TrainData, train_seed, warm_up\n"
        "from sandbox_image.protocol import TrainSpec\n"
        "warm_up()\n"
        "rng = np.random.default_rng(0)\n"
        "x, y = rng.normal(size=(64, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 64)\n"
        "data = TrainData(x, y, x[:16], y[:16], x[:16])\n"
        "make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
        "for opt, sched in (('sgd', 'onecycle'), ('adamw', 'cosine'), ('adam', 'onecycle')):\n"
        "    spec = TrainSpec(epochs=2, optimizer=opt, schedule=sched, nesterov=opt == 'sgd', warmup_epochs=0.5,\n"
        "                     augment='crop_flip_erase', hflip_ok=True, tta_flip=True, label_smoothing=0.1)\n"
        "    train_seed(make, data, spec, seed=0)\n"
    )
    assert compiler_stack_after(code) == ([], [])


def test_unknown_knob_values_are_value_errors_in_the_recipe() -> None:
    for spec, match in ((TrainSpec(schedule="step"), "unknown schedule 'step'"),
                        (TrainSpec(augment="mixup"), "unknown augment 'mixup'"),
                        (TrainSpec(pad_mode="edge"), "unknown pad_mode 'edge'"),
                        (TrainSpec(label_smoothing=1.5), "label_smoothing")):
        with pytest.raises(ValueError, match=match):
            train_seed(_linear_image_model, _tiny(), spec, seed=0)


# ------------------------------------------------------------------ host-side validation


@pytest.mark.parametrize(("fields", "where"), [
    ({"schedule": "step"}, "$.schedule"),
    ({"augment": "mixup"}, "$.augment"),
    ({"pad_mode": "edge"}, "$.pad_mode"),
    ({"crop_px": 9}, "$.crop_px"),
    ({"label_smoothing": 0.5}, "$.label_smoothing"),
    ({"label_smoothing": -0.1}, "$.label_smoothing"),
    ({"warmup_epochs": -1.0}, "$.warmup_epochs"),
    ({"patience": -1}, "$.patience"),
    ({"tta_flip": "yes"}, "$.tta_flip"),
    ({"channels_last": 1}, "$.channels_last"),
    ({"nesterov": True}, "nesterov applies to optimizer sgd only"),
    ({"nesterov": True, "optimizer": "sgd", "momentum": 0.0}, "nesterov needs momentum > 0"),
    ({"warmup_epochs": 10, "epochs": 10}, "warmup_epochs 10 must be below epochs 10"),
    ({"mixup": 0.2}, "unknown field `mixup`"),
])
def test_parse_train_spec_refuses_unknown_and_out_of_range_knobs(fields: dict, where: str) -> None:
    with pytest.raises(InvalidConfig, match="invalid train settings") as info:
        parse_train_spec(fields)
    assert where in str(info.value)


def test_parse_train_spec_keeps_every_knob() -> None:
    recipe = msgspec.structs.replace(_FULL, warmup_epochs=0.0, crop_px=2, pad_mode="zero", patience=4)
    assert parse_train_spec(recipe) == recipe
    assert parse_train_spec(msgspec.json.encode(recipe)) == recipe
    assert parse_train_spec({}) == TrainSpec() and TrainSpec().patience is None
    assert math.isclose(parse_train_spec({"schedule": "cosine", "warmup_epochs": 1.5}).warmup_epochs, 1.5)


@pytest.mark.gpu
def test_cuda_bf16_channels_last_full_recipe(digits: PreparedData) -> None:
    assert torch.cuda.is_available(), "the gpu marker needs a CUDA device"
    built: list[nn.Module] = []

    def make() -> nn.Module:
        built.append(_cnn())
        return built[-1]

    spec = msgspec.structs.replace(_FULL, epochs=10, lr=0.1, augment="crop_flip", pad_mode="zero", hflip_ok=False)
    result = train_seed(make, digits.train_data(), spec, seed=0, device="cuda")
    conv = built[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.dtype == torch.float32
    assert result.logits.dtype == np.float32 and np.isfinite(result.logits).all()
    assert float((result.logits.argmax(axis=1) == digits.test_y).mean()) > 0.95


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_a_deadline_shortens_an_annealing_schedule_so_it_still_anneals(schedule: str) -> None:
    """50 epochs asked, about 10 fit: the schedule is re-planned over those and ends near its
    lowest rate (cut where it stood, it would end at 90% of the peak), and the result says so."""
    seen: list[EpochStats] = []
    spec = TrainSpec(epochs=50, batch_size=8, schedule=schedule, optimizer="sgd", lr=0.05)
    started = time.monotonic()
    result = train_seed(_Slow, _tiny(96), spec, seed=0, deadline=started + 0.8, on_epoch=seen.append)
    assert result.truncated and not result.stopped_early
    assert 2 <= len(result.curves) < 50 and tuple(seen) == result.curves
    assert time.monotonic() - started < 5
    assert result.curves[-1].lr < 0.25 * spec.lr  # annealed
    assert result.curves[0].lr > result.curves[-1].lr


def test_a_constant_schedule_is_only_cut_by_a_deadline() -> None:
    spec = TrainSpec(epochs=50, batch_size=8, schedule="constant", optimizer="sgd", lr=0.05, patience=0)
    result = train_seed(_Slow, _tiny(96), spec, seed=0, deadline=time.monotonic() + 0.4)
    assert result.truncated and 1 <= len(result.curves) < 50
    assert all(s.lr == pytest.approx(0.05) for s in result.curves)
