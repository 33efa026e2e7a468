"""The training recipe: one seed of one candidate, from arrays to test logits.

This module runs INSIDE the untrusted sandbox (and in host tests), so it imports
only torch, numpy, the standard library and ``sandbox_image.protocol``. The host
never trusts what it reports: the curves are diagnostics, the test logits are
scored on the trusted side against labels the sandbox never sees.

Epochs are numbered from 1. The weights with the lowest validation loss are
restored before the test logits are predicted, with or without early stopping.

Determinism: every random source is seeded, the shuffling has its own
generator and deterministic kernels are requested on CPU, so a seed gives
identical logits on CPU for the same thread count; on CUDA results are close but
not bit-identical.

Start-up cost: ``torch.optim``'s method wrappers and ``torch.use_deterministic_algorithms``
import ``torch._dynamo``/``torch._inductor`` on first use (2 s of CPU here, as much
as ``import torch`` itself) only for the sake of ``torch.compile``. Nothing here
compiles, so the optimisers are used through subclasses that call the undecorated
methods (``_compile_free``; the update math is torch's own) and the deterministic
flag is set without touching inductor's copy of it until inductor is loaded
(``_set_deterministic``). ``warm_up()`` pays the remaining one-time costs (first
autograd pass and optimiser step) before a worker reports ``Ready``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sandbox_image.protocol import DataSpec, EpochStats, TrainSpec

OPTIMIZERS = ("adamw", "adam", "sgd")

#: Validation and prediction batches: twice the training batch (no activations kept), capped.
_EVAL_BATCH_MAX = 1024
#: On CUDA the loss is checked every this many steps (each check syncs the device).
_CUDA_CHECK_EVERY = 32
#: Datasets above this size stay in host memory and move to the GPU batch by batch.
_MAX_DEVICE_BYTES = 4 * 1024**3


class NonFiniteLoss(ArithmeticError):
    """A loss (or a prediction) became NaN or infinite."""


@dataclass(frozen=True)
class TrainData:
    """The arrays a candidate sees: labelled train/val splits and unlabelled test inputs."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray


@dataclass(frozen=True)
class SeedResult:
    """What one seed produced: test logits (n_test, C) float32 and its curves."""

    logits: np.ndarray
    curves: tuple[EpochStats, ...]
    best_epoch: int
    stopped_early: bool
    seconds: float


def load_arrays(spec: DataSpec) -> TrainData:
    """Memory-map the ``.npy`` files named by ``spec`` (no pickle, read-only)."""
    root = Path(spec.root)

    def load(name: str) -> np.ndarray:
        return np.load(root / name, mmap_mode="r", allow_pickle=False)

    return TrainData(
        train_x=load(spec.train_x),
        train_y=load(spec.train_y),
        val_x=load(spec.val_x),
        val_y=load(spec.val_y),
        test_x=load(spec.test_x),
    )


def train_seed(
    make_model: Callable[[], nn.Module],
    data: TrainData,
    spec: TrainSpec,
    *,
    seed: int,
    device: str = "cpu",
    on_epoch: Callable[[EpochStats], None] | None = None,
    deadline: float | None = None,
) -> SeedResult:
    """Train one seed with early stopping on val loss and predict the test inputs."""
    started = time.monotonic()
    dev = torch.device(device)
    with _determinism(dev):
        _seed_everything(seed)
        model = make_model().to(dev)  # after seeding, so the init is reproducible
        tensors = _Tensors.build(data, dev)
        loop = _Loop(model, tensors, spec, dev, seed)
        curves, best_epoch, stopped_early = loop.run(on_epoch, deadline)
        logits = _predict(model, tensors.test_x, dev, loop.eval_batch)
    return SeedResult(
        logits=logits,
        curves=tuple(curves),
        best_epoch=best_epoch,
        stopped_early=stopped_early,
        seconds=time.monotonic() - started,
    )


def make_optimizer(params: Iterator[nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    """The optimiser ``spec`` names, with its learning rate and weight decay."""
    name = spec.optimizer.lower()
    if name == "adamw":
        return _compile_free(torch.optim.AdamW)(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if name == "adam":
        return _compile_free(torch.optim.Adam)(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if name == "sgd":
        return _compile_free(torch.optim.SGD)(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    raise ValueError(f"unknown optimizer {spec.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")


#: Optimizer methods torch wraps in ``torch._disable_dynamo`` (a pass-through outside torch.compile).
_DYNAMO_DISABLED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


@functools.cache
def _compile_free(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``cls`` whose methods skip the torch.compile wrappers (see the module note).

    ``inspect.unwrap`` follows the ``functools.wraps`` chain to torch's own
    methods; ``step`` runs under the grad mode its wrapper would set. Should a
    torch release stop wrapping, the plain methods are used (only slower to start).
    """
    step = inspect.unwrap(cls.step)
    namespace = {name: inspect.unwrap(getattr(cls, name)) for name in _DYNAMO_DISABLED}

    def compile_free_step(self, closure=None):
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
            return step(self, closure)

    namespace["step"] = functools.wraps(step)(compile_free_step)
    return type(cls.__name__, (cls,), namespace)


def warm_up() -> None:
    """Pay torch's one-time costs (first autograd pass and optimiser step) before timing starts.

    Where a GPU is visible (a ``--device cuda`` sandbox) this also creates the CUDA
    context and the cuDNN/cuBLAS handles and loads the autocast kernels, which
    otherwise land in the first job's training time.
    """
    layer = nn.Linear(4, 2)
    optimizer = make_optimizer(layer.parameters(), TrainSpec())
    nn.functional.cross_entropy(layer(torch.zeros(2, 4)), torch.zeros(2, dtype=torch.long)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _set_deterministic(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if torch.cuda.is_available():
        _warm_up_cuda(torch.device("cuda"))


def _warm_up_cuda(device: torch.device) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)).to(device)
    optimizer = make_optimizer(model.parameters(), TrainSpec())
    x, y = torch.zeros(2, 1, 8, 8, device=device), torch.zeros(2, dtype=torch.long, device=device)
    for amp in (False, True):
        autocast, scaler = _amp(device, amp)
        with autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)


# ------------------------------------------------------------------ internals


@contextlib.contextmanager
def _determinism(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CPU; restore the caller's global setting afterwards."""
    if device.type != "cpu":
        # CUDA determinism needs CUBLAS_WORKSPACE_CONFIG and slower kernels; not promised.
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # warn_only: a model using an op without a deterministic kernel still trains.
    _set_deterministic(True, warn_only=True)
    try:
        yield
    finally:
        _set_deterministic(previous, warn_only=warn_only)


def _set_deterministic(mode: bool, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms`` without importing inductor only to set its flag.

    The public function also sets ``torch._inductor.config.deterministic``, which
    matters only to compiled code and costs the import of inductor and dynamo.
    Once inductor is loaded (a model compiled), the public function is used.
    """
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


@dataclass(frozen=True)
class _Tensors:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor

    @classmethod
    def build(cls, data: TrainData, device: torch.device) -> _Tensors:
        """Copy each (possibly memory-mapped, read-only) array once, onto the device if it fits."""
        arrays = (data.train_x, data.train_y, data.val_x, data.val_y, data.test_x)
        total = sum(int(a.nbytes) for a in arrays)
        target = device if total <= _MAX_DEVICE_BYTES else torch.device("cpu")

        def tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            # np.array copies: torch.from_numpy on a read-only mmap would warn.
            return torch.from_numpy(np.array(array)).to(dtype=dtype, device=target)

        return cls(
            train_x=tensor(data.train_x, torch.float32),
            train_y=tensor(data.train_y, torch.int64),
            val_x=tensor(data.val_x, torch.float32),
            val_y=tensor(data.val_y, torch.int64),
            test_x=tensor(data.test_x, torch.float32),
        )


class _Loop:
    """The epoch loop of one seed: optimiser, AMP, early stopping, best weights."""

    def __init__(
        self, model: nn.Module, t: _Tensors, spec: TrainSpec, device: torch.device, seed: int
    ) -> None:
        if spec.epochs < 1 or spec.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {spec.epochs}, {spec.batch_size}")
        self.model, self.t, self.spec, self.device = model, t, spec, device
        self.optimizer = make_optimizer(model.parameters(), spec)
        self.generator = torch.Generator().manual_seed(seed)
        self.autocast, self.scaler = _amp(device, spec.amp)
        self.eval_batch = min(_EVAL_BATCH_MAX, 2 * spec.batch_size)

    def run(
        self, on_epoch: Callable[[EpochStats], None] | None, deadline: float | None
    ) -> tuple[list[EpochStats], int, bool]:
        """Train until the epoch budget, patience or deadline runs out; keep the best weights."""
        curves: list[EpochStats] = []
        best_loss, best_epoch, best_state, stale = math.inf, 0, None, 0
        stopped_early = False
        for epoch in range(1, self.spec.epochs + 1):
            stats = self._epoch(epoch)
            curves.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
            if stats.val_loss < best_loss:
                best_loss, best_epoch, stale = stats.val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            else:
                stale += 1
            if self.spec.patience > 0 and stale >= self.spec.patience and epoch < self.spec.epochs:
                stopped_early = True
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return curves, best_epoch, stopped_early

    def _epoch(self, epoch: int) -> EpochStats:
        started = time.monotonic()
        train_loss, train_acc = self._train_epoch()
        val_loss, val_acc = _evaluate(self.model, self.t.val_x, self.t.val_y, self.device, self.eval_batch)
        if not math.isfinite(val_loss):
            raise NonFiniteLoss(f"validation loss is {val_loss} at epoch {epoch}")
        return EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            seconds=time.monotonic() - started,
            lr=float(self.optimizer.param_groups[0]["lr"]),
        )

    def _train_epoch(self) -> tuple[float, float]:
        self.model.train()
        x, y, size = self.t.train_x, self.t.train_y, self.spec.batch_size
        n = x.shape[0]
        # A last batch of one sample would break BatchNorm in training mode: leave it out
        # (the reshuffle gives that sample a place in the next epoch).
        used = n - 1 if n > 1 and n % size == 1 else n
        order = torch.randperm(n, generator=self.generator)[:used].to(x.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        for step, start in enumerate(range(0, used, size), start=1):
            idx = order[start : start + size]
            xb, yb = _to(x[idx], self.device), _to(y[idx], self.device)
            loss, logits = self._step(xb, yb)
            loss_sum += loss.detach() * yb.shape[0]
            correct += (logits.detach().argmax(dim=1) == yb).sum()
            if self.device.type == "cpu" or step % _CUDA_CHECK_EVERY == 0:
                _check_finite(loss_sum, "training loss")
        _check_finite(loss_sum, "training loss")
        return float(loss_sum) / used, float(correct) / used

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.model(xb)
        loss = F.cross_entropy(logits.float(), yb)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss, logits


def _amp(
    device: torch.device, enabled: bool
) -> tuple[Callable[[], contextlib.AbstractContextManager[None]], torch.amp.GradScaler | None]:
    """bf16 autocast where the GPU has it, else fp16 with a loss scaler; nothing on CPU."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext, None
    if torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16), None
    return lambda: torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t if t.device == device else t.to(device, non_blocking=True)


def _check_finite(value: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(value)):
        raise NonFiniteLoss(f"{what} is {float(value)}")


@torch.no_grad()
def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``x``, in eval mode, in float32, in batches."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for start in range(0, x.shape[0], batch):
        xb, yb = _to(x[start : start + batch], device), _to(y[start : start + batch], device)
        logits = model(xb).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(dim=1) == yb).sum()
    n = max(int(x.shape[0]), 1)
    return float(loss_sum) / n, float(correct) / n


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch: int) -> np.ndarray:
    """Test logits (n_test, C) as float32, in eval mode, without autocast, in batches."""
    model.eval()
    parts = [model(_to(x[i : i + batch], device)).float().cpu() for i in range(0, x.shape[0], batch)]
    out = torch.cat(parts).numpy()
    if not np.isfinite(out).all():
        raise NonFiniteLoss("the test logits contain NaN or infinite values")
    return np.ascontiguousarray(out, dtype=np.float32)
