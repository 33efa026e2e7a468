"""The training recipe on real data (digits), on CPU, fast."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evaluator.prepare import PreparedData
from evaluator.recipe import NonFiniteLoss, TrainData, load_arrays, train_seed
from sandbox_image.protocol import EpochStats, TrainSpec
from tests.fresh import compiler_stack_after


# _one_thread and digits: tests/evaluator/conftest.py


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10))


def test_mlp_on_digits_learns_in_seconds(digits: PreparedData) -> None:
    seen: list[EpochStats] = []
    result = train_seed(_mlp, digits.train_data(), TrainSpec(epochs=8, lr=3e-3), seed=0, on_epoch=seen.append)
    assert max(s.val_acc for s in result.curves) > 0.9
    assert result.seconds < 10  # about 0.6 s on one core; generous for a shared machine
    assert [s.epoch for s in seen] == list(range(1, 9)) and tuple(seen) == result.curves
    assert all(s.lr == pytest.approx(3e-3) and s.seconds > 0 for s in seen)
    assert result.logits.shape == (450, 10) and result.logits.dtype == np.float32
    assert (result.logits.argmax(axis=1) == digits.test_y).mean() > 0.9


def test_same_seed_same_logits_other_seed_differs(digits: PreparedData) -> None:
    spec = TrainSpec(epochs=2)
    a = train_seed(_mlp, digits.train_data(), spec, seed=7)
    b = train_seed(_mlp, digits.train_data(), spec, seed=7)
    c = train_seed(_mlp, digits.train_data(), spec, seed=8)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert [s.val_loss for s in a.curves] == [s.val_loss for s in b.curves]
    assert not np.array_equal(a.logits, c.logits)


class _NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1)) * torch.tensor(float("nan"))


def test_nan_loss_raises(digits: PreparedData) -> None:
    with pytest.raises(NonFiniteLoss, match="training loss is nan"):
        train_seed(_NaNModel, digits.train_data(), TrainSpec(epochs=3), seed=0)


def _diverging(digits: PreparedData) -> TrainData:
    """Validation labels are the train labels shifted by one: learning the train set hurts val."""
    x, y = digits.train_x[:400], digits.train_y[:400]
    return TrainData(train_x=x, train_y=y, val_x=x, val_y=(y + 1) % 10, test_x=x)


def test_early_stopping_restores_the_best_weights(digits: PreparedData) -> None:
    data = _diverging(digits)
    result = train_seed(_mlp, data, TrainSpec(epochs=30, patience=2, lr=1e-2), seed=0)
    assert result.stopped_early and len(result.curves) == result.best_epoch + 2
    best = result.curves[result.best_epoch - 1]
    # best = highest val accuracy, ties broken by the lower val loss
    assert (best.val_acc, -best.val_loss) == max((s.val_acc, -s.val_loss) for s in result.curves)
    # the test inputs are the val inputs, so the returned logits reproduce the best val loss
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(result.logits), torch.from_numpy(data.val_y))
    assert float(loss) == pytest.approx(best.val_loss, rel=1e-4)
    assert (result.logits.argmax(axis=1) == data.val_y).mean() == pytest.approx(best.val_acc)


def test_patience_zero_runs_every_epoch(digits: PreparedData) -> None:
    result = train_seed(_mlp, _diverging(digits), TrainSpec(epochs=5, patience=0, lr=1e-2), seed=0)
    assert len(result.curves) == 5 and not result.stopped_early and result.best_epoch < 5


def test_a_passed_deadline_stops_after_one_batch(digits: PreparedData) -> None:
    result = train_seed(_mlp, digits.train_data(), TrainSpec(epochs=50), seed=0, deadline=time.monotonic())
    assert len(result.curves) == 1 and not result.stopped_early and result.logits.shape == (450, 10)
    assert result.truncated and result.best_epoch == 1


def test_no_deadline_is_not_truncated(digits: PreparedData) -> None:
    result = train_seed(_mlp, digits.train_data(), TrainSpec(epochs=2), seed=0, deadline=time.monotonic() + 600)
    assert len(result.curves) == 2 and not result.truncated


def test_prediction_is_batched_in_eval_mode_with_the_kept_weights(digits: PreparedData) -> None:
    built: list[nn.Module] = []

    def make() -> nn.Module:
        built.append(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                   nn.Dropout(0.5), nn.Linear(32, 10)))  # fmt: skip
        return built[-1]

    data = TrainData(digits.train_x, digits.train_y, digits.val_x, digits.val_y, digits.train_x)
    result = train_seed(make, data, TrainSpec(epochs=2), seed=0)  # 1144 test rows: two batches
    model = built[0].eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(data.test_x)).numpy()
    np.testing.assert_allclose(result.logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_other_optimizers_train(digits: PreparedData, optimizer: str) -> None:
    spec = TrainSpec(epochs=4, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 3e-3, weight_decay=1e-4)
    result = train_seed(_mlp, digits.train_data(), spec, seed=0)
    assert result.curves[-1].val_acc > 0.8


def test_bad_settings_are_value_errors(digits: PreparedData) -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        train_seed(_mlp, digits.train_data(), TrainSpec(optimizer="lion"), seed=0)
    with pytest.raises(ValueError, match="epochs"):
        train_seed(_mlp, digits.train_data(), TrainSpec(epochs=0), seed=0)


def test_trains_from_read_only_memory_maps(tmp_path: Path, digits: PreparedData) -> None:
    spec = digits.write_sandbox_dir(tmp_path)
    data = load_arrays(spec)
    assert isinstance(data.train_x, np.memmap) and not data.train_x.flags.writeable
    result = train_seed(_mlp, data, TrainSpec(epochs=1), seed=0)  # -W error: no "not writable" warning
    assert result.logits.shape == (len(data.test_x), 10)


def test_deterministic_mode_is_restored(digits: PreparedData) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    train_seed(_mlp, digits.train_data(), TrainSpec(epochs=1), seed=0)
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.gpu
def test_cuda_with_amp(digits: PreparedData) -> None:
    assert torch.cuda.is_available(), "the gpu marker needs a CUDA device"
    result = train_seed(_mlp, digits.train_data(), TrainSpec(epochs=8, lr=3e-3, amp=True), seed=0, device="cuda")
    assert result.logits.dtype == np.float32 and np.isfinite(result.logits).all()
    assert max(s.val_acc for s in result.curves) > 0.9


def test_a_last_batch_of_one_sample_does_not_break_batchnorm(digits: PreparedData) -> None:
    def make() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))

    x, y = digits.train_x[:129], digits.train_y[:129]  # 2 batches of 64 and one of 1
    result = train_seed(make, TrainData(x, y, digits.val_x, digits.val_y, digits.test_x), TrainSpec(epochs=2), seed=0)
    assert len(result.curves) == 2


def test_recipe_imports_only_what_the_sandbox_has() -> None:
    code = (
        "import sys, evaluator.recipe; "
        "bad = ('sklearn', 'scipy', 'torchmetrics', 'torchvision', 'matplotlib', 'orchestrator'); "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(bad)}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_training_never_loads_the_compiler_stack() -> None:
    """torch._dynamo/_inductor cost 2 s of CPU per sandbox start; nothing in the recipe needs them."""
    code = (
        "import sys, numpy as np, torch\n"
        "from torch import nn\n"
        "from evaluator.recipe import TrainData, train_seed, warm_up\n"
        "from sandbox_image.protocol import TrainSpec\n"
        "warm_up()\n"
        "rng = np.random.default_rng(0)\n"
        "x, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 3, 64)\n"
        "data = TrainData(x, y, x[:16], y[:16], x[:16])\n"
        "for opt in ('adamw', 'adam', 'sgd'):\n"
        "    train_seed(lambda: nn.Linear(8, 3), data, TrainSpec(epochs=2, optimizer=opt), seed=0)\n"
        "print(torch.are_deterministic_algorithms_enabled())\n"
    )
    assert compiler_stack_after(code) == ([], ["False"])


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_compile_free_optimizers_update_exactly_like_torch_optim(optimizer: str) -> None:
    from evaluator.recipe import make_optimizer

    stock = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]
    spec = TrainSpec(optimizer=optimizer, lr=0.01, weight_decay=0.01, momentum=0.9)
    torch.manual_seed(0)
    ours_model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    stock_model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    stock_model.load_state_dict(ours_model.state_dict())
    ours = make_optimizer(ours_model.parameters(), spec)
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    theirs = stock(stock_model.parameters(), lr=0.01, weight_decay=0.01, **extra)
    assert isinstance(ours, stock) and type(ours).__name__ == stock.__name__
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for _ in range(5):
        for model, opt in ((ours_model, ours), (stock_model, theirs)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ours_model.parameters(), stock_model.parameters()))
    assert torch.is_grad_enabled()  # the step's no-grad mode does not leak
    ours.load_state_dict(ours.state_dict())  # the other unwrapped methods still work
