"""The training recipe: one seed of one candidate, from arrays to test logits.

This module runs INSIDE the untrusted sandbox (and in host tests), so it imports only
torch, numpy, the standard library, ``evaluator.augment`` and ``sandbox_image.protocol``.
The host never trusts what it reports: the curves are diagnostics, the test logits are
scored on the trusted side against labels the sandbox never sees.

Epochs are numbered from 1. The recipe's knobs are ``TrainSpec`` fields:

- ``augment`` (images only, per batch on the device, ``evaluator.augment``): none, shift,
  crop_flip, crop_flip_erase; a flip happens only where the trusted side set ``hflip_ok``
  for the dataset, otherwise crop_flip only shifts.
- ``schedule`` over the planned epochs, stepped per batch (:func:`lr_at`): constant and
  cosine (both after ``warmup_epochs`` of linear warm-up), onecycle (torch's OneCycleLR
  with ``max_lr = lr`` and its defaults, momentum cycled 0.95 -> 0.85 -> 0.95).
- ``optimizer`` adamw | adam | sgd, ``nesterov`` for sgd; ``label_smoothing`` of the
  training loss (validation loss stays plain cross-entropy, comparable across candidates).
- ``tta_flip``: the test logits are the mean of the logits of each image and its mirror
  (only when ``hflip_ok``).
- On CUDA: ``amp`` autocasts to bf16 where the GPU has it (else fp16 with a loss scaler);
  a no-op on CPU. ``channels_last`` stores images and weights channels-last on every
  device: cuDNN's and oneDNN's convolutions are faster that way (on 2 Xeon cores, 1.1x
  to 1.6x per epoch for the planner's plain CNNs and ResNets, ``scripts/cpu_layout_bench.py``).

Best weights: after every epoch the weights with the best validation accuracy (ties: the
lower validation loss) are kept, and restored before the test logits are predicted. The
headline metric is accuracy, and validation loss can rise while accuracy still improves.
``patience`` counts epochs without such an improvement; by default (None) it is 5 with
the constant schedule and 0, never stop early, with a schedule that must run to its end
to anneal.

``fit_val`` (a final training) trains on train + val: the weights of the last epoch are
kept, nothing stops early, and the val curve, now on trained data, is a diagnostic only.

Truncation: ``deadline`` (the worker's share of ``time_budget_s``) is checked after every
batch; when it passes, the epoch ends there, is validated, the best weights are restored
and the test inputs predicted as usual, and the result says ``truncated``. Before that, a
cosine or OneCycle schedule that the deadline will not let finish is planned again, after
each epoch, over the epochs that fit at the pace so far (``_Loop._epochs_by``): cut at
two-thirds, a OneCycle run would end at a high learning rate, never annealed. The result
says ``truncated`` then too: it trained fewer epochs than asked.

Determinism: every random source is seeded, the shuffling and the augmentation have
their own generators (the batch order does not depend on the augmentation) and
deterministic kernels are requested on CPU, so a seed gives identical logits on CPU
for the same thread count; on CUDA results are close but not bit-identical.

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
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluator.augment import make_augmenter
from sandbox_image.protocol import OPTIMIZERS, SCHEDULES, DataSpec, EpochStats, TrainSpec

#: Early-stopping patience of the constant schedule when ``TrainSpec.patience`` is None.
DEFAULT_PATIENCE = 5
#: torch.optim.lr_scheduler.OneCycleLR's defaults.
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4
ONECYCLE_MOMENTUM = (0.85, 0.95)  # base, max
#: Schedules that anneal over the planned epochs: re-planned to fit a deadline (``_Loop._epochs_by``).
_ANNEALED = frozenset({"cosine", "onecycle"})

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
    truncated: bool = False  # the deadline cut training short


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
    on_batch: Callable[[int, int, int, int, str], None] | None = None,
) -> SeedResult:
    """Train one seed as ``spec`` says, keep the best-validation weights, predict the test inputs.

    ``on_epoch`` gets each finished epoch's stats; ``on_batch(epoch, step, steps, planned, phase)``
    is called after every batch (the caller decides how often to pass it on): ``phase`` "train"
    while ``epoch`` trains, "val" while it is validated, and "predict" while the test inputs are
    predicted after the last epoch (``planned`` 0 then); ``planned`` is the epochs the run now
    goes to: those asked, or fewer where the deadline fits fewer.
    """
    started = time.monotonic()
    dev = torch.device(device)
    with _determinism(dev):
        _seed_everything(seed)
        model = make_model().to(dev)  # after seeding, so the init is reproducible
        tensors = _Tensors.build(data, dev, fit_val=spec.fit_val)
        loop = _Loop(model, tensors, spec, dev, seed)
        run = loop.run(on_epoch, deadline, on_batch)
        last = len(run.curves)
        logits = _predict(model, tensors.test_x, dev, loop.eval_batch, channels_last=loop.channels_last, tta=loop.tta,
                          on_step=None if on_batch is None else
                          lambda step, steps: on_batch(last, step, steps, 0, "predict"))
    return SeedResult(
        logits=logits,
        curves=tuple(run.curves),
        best_epoch=run.best_epoch,
        stopped_early=run.stopped_early,
        seconds=time.monotonic() - started,
        truncated=run.truncated,
    )


def make_optimizer(params: Iterator[nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    """The optimiser ``spec`` names, with its learning rate, weight decay and (sgd) Nesterov momentum."""
    name = spec.optimizer.lower()
    if spec.nesterov and name != "sgd":
        raise ValueError(f"nesterov applies to optimizer sgd only, not {spec.optimizer!r}")
    if name == "adamw":
        return _compile_free(torch.optim.AdamW)(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if name == "adam":
        return _compile_free(torch.optim.Adam)(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if name == "sgd":
        return _compile_free(torch.optim.SGD)(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, nesterov=spec.nesterov
        )
    raise ValueError(f"unknown optimizer {spec.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")


def lr_at(spec: TrainSpec, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total_steps`` under ``spec.schedule``."""
    if spec.schedule == "onecycle":
        return _onecycle(step, total_steps, spec.lr / ONECYCLE_DIV_FACTOR, spec.lr,
                         spec.lr / ONECYCLE_DIV_FACTOR / ONECYCLE_FINAL_DIV_FACTOR)
    if spec.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {spec.schedule!r}; use one of {', '.join(SCHEDULES)}")
    warm = min(round(spec.warmup_epochs * steps_per_epoch), total_steps)
    if step < warm:
        return spec.lr * (step + 1) / warm
    if spec.schedule == "constant":
        return spec.lr
    progress = min((step - warm) / max(total_steps - warm, 1), 1.0)
    return spec.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def momentum_at(spec: TrainSpec, step: int, total_steps: int) -> float | None:
    """OneCycle's cycled momentum (sgd momentum or Adam's beta1) at ``step``; None for other schedules."""
    if spec.schedule != "onecycle":
        return None
    base, top = ONECYCLE_MOMENTUM
    return _onecycle(step, total_steps, top, base, top)


def effective_patience(spec: TrainSpec) -> int:
    """``spec.patience``, or its default: 5 for the constant schedule, 0 (never stop early) otherwise.

    Always 0 with ``fit_val``: the val split is trained on, so it cannot say when to stop.
    """
    if spec.fit_val:
        return 0
    if spec.patience is not None:
        return spec.patience
    return DEFAULT_PATIENCE if spec.schedule == "constant" else 0


def _onecycle(step: int, total_steps: int, start: float, peak: float, end: float) -> float:
    """torch's OneCycleLR (two phases, cosine annealing): start -> peak -> end."""
    peak_step = ONECYCLE_PCT_START * total_steps - 1
    last_step = total_steps - 1
    if step <= peak_step:
        a, b, pct = start, peak, step / peak_step if peak_step > 0 else 1.0
    else:
        a, b, pct = peak, end, min((step - peak_step) / (last_step - peak_step), 1.0)
    return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1.0)


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
    def build(cls, data: TrainData, device: torch.device, *, fit_val: bool = False) -> _Tensors:
        """Copy each (possibly memory-mapped, read-only) array once, onto the device if it fits.

        ``fit_val``: the training tensors are train followed by val.
        """
        train_x, train_y = data.train_x, data.train_y
        if fit_val:
            train_x, train_y = np.concatenate([train_x, data.val_x]), np.concatenate([train_y, data.val_y])
        arrays = (train_x, train_y, data.val_x, data.val_y, data.test_x)
        total = sum(int(a.nbytes) for a in arrays)
        target = device if total <= _MAX_DEVICE_BYTES else torch.device("cpu")

        def tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            # np.array copies: torch.from_numpy on a read-only mmap would warn.
            return torch.from_numpy(np.array(array)).to(dtype=dtype, device=target)

        return cls(
            train_x=tensor(train_x, torch.float32),
            train_y=tensor(train_y, torch.int64),
            val_x=tensor(data.val_x, torch.float32),
            val_y=tensor(data.val_y, torch.int64),
            test_x=tensor(data.test_x, torch.float32),
        )


@dataclass
class _Run:
    """How one seed's training went."""

    curves: list[EpochStats]
    best_epoch: int = 0
    stopped_early: bool = False
    truncated: bool = False


class _Best:
    """The best epoch so far (highest val accuracy, ties to the lower val loss) and its weights."""

    def __init__(self) -> None:
        self.acc, self.loss, self.epoch, self.state = -math.inf, math.inf, 0, None

    def offer(self, stats: EpochStats, model: nn.Module) -> bool:
        """Keep ``model``'s weights when ``stats`` beats the best so far; True if it did."""
        if (stats.val_acc, -stats.val_loss) <= (self.acc, -self.loss):
            return False
        self.acc, self.loss, self.epoch = stats.val_acc, stats.val_loss, stats.epoch
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


class _Loop:
    """The epoch loop of one seed: optimiser, schedule, augmentation, AMP, best weights, deadline."""

    def __init__(
        self, model: nn.Module, t: _Tensors, spec: TrainSpec, device: torch.device, seed: int
    ) -> None:
        if spec.epochs < 1 or spec.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {spec.epochs}, {spec.batch_size}")
        _check_knobs(spec)
        images = t.train_x.dim() == 4
        self.channels_last = spec.channels_last and images
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # before the optimiser sees the parameters
        self.model, self.t, self.spec, self.device = model, t, spec, device
        self.optimizer = make_optimizer(model.parameters(), spec)
        self.generator = torch.Generator().manual_seed(seed)
        self.augment = make_augmenter(spec.augment, tuple(t.train_x.shape[1:]), hflip_ok=spec.hflip_ok,
                                      crop_px=spec.crop_px, pad_mode=spec.pad_mode, seed=seed)
        self.tta = spec.tta_flip and spec.hflip_ok and images
        self.autocast, self.scaler = _amp(device, spec.amp)
        self.eval_batch = min(_EVAL_BATCH_MAX, 2 * spec.batch_size)
        n = t.train_x.shape[0]
        # A last batch of one sample would break BatchNorm in training mode: leave it out
        # (the reshuffle gives that sample a place in the next epoch).
        self.used = n - 1 if n > 1 and n % spec.batch_size == 1 else n
        self.steps_per_epoch = math.ceil(self.used / spec.batch_size)
        self.total_steps = spec.epochs * self.steps_per_epoch
        self.scheduled = spec.schedule != "constant" or spec.warmup_epochs > 0
        self.step = 0
        self.planned = spec.epochs  # the epochs the run goes to: fewer once a deadline re-plans an annealing schedule

    def run(self, on_epoch: Callable[[EpochStats], None] | None, deadline: float | None,
            on_batch: Callable[[int, int, int, int, str], None] | None = None) -> _Run:
        """Train until the epoch budget, patience or deadline runs out; restore the best weights."""
        run, best, stale = _Run(curves=[]), _Best(), 0
        patience, epochs, epoch = effective_patience(self.spec), self.spec.epochs, 0
        while epoch < epochs:
            epoch += 1
            stats, cut = self._epoch(epoch, deadline, on_batch)
            run.curves.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
            stale = 0 if self.spec.fit_val or best.offer(stats, self.model) else stale + 1
            if cut or (epoch < epochs and deadline is not None and time.monotonic() >= deadline):
                run.truncated = True
                break
            if patience > 0 and stale >= patience and epoch < epochs:
                run.stopped_early = True
                break
            fitted = self._epochs_by(deadline, run.curves, epochs)
            if fitted < epochs:  # the schedule is planned over what the deadline leaves: it still anneals
                epochs, run.truncated = fitted, True
                self.total_steps = epochs * self.steps_per_epoch
                self.planned = epochs
        if best.state is not None:
            self.model.load_state_dict(best.state)
        run.best_epoch = len(run.curves) if self.spec.fit_val else best.epoch
        return run

    def _epochs_by(self, deadline: float | None, curves: list[EpochStats], epochs: int) -> int:
        """The epochs an annealing schedule can finish by ``deadline`` at the pace so far (at most ``epochs``).

        The pace is the slower of the mean and the last epoch (validation included), so the
        shortened schedule ends before the deadline rather than being cut at a high rate.
        """
        if deadline is None or self.spec.schedule not in _ANNEALED or not curves:
            return epochs
        per_epoch = max(statistics.fmean(s.seconds for s in curves), curves[-1].seconds)
        if per_epoch <= 0:
            return epochs
        more = math.floor(max(deadline - time.monotonic(), 0.0) / per_epoch)
        return min(epochs, len(curves) + more)

    def _epoch(self, epoch: int, deadline: float | None,
               on_batch: Callable[[int, int, int, int, str], None] | None = None) -> tuple[EpochStats, bool]:
        started = time.monotonic()
        train_loss, train_acc, cut = self._train_epoch(deadline, epoch, on_batch)
        val_loss, val_acc = _evaluate(self.model, self.t.val_x, self.t.val_y, self.device, self.eval_batch,
                                      channels_last=self.channels_last,
                                      on_step=None if on_batch is None else
                                      lambda step, steps: on_batch(epoch, step, steps, self.planned, "val"))
        if not math.isfinite(val_loss):
            raise NonFiniteLoss(f"validation loss is {val_loss} at epoch {epoch}")
        stats = EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            seconds=time.monotonic() - started,
            lr=float(self.optimizer.param_groups[0]["lr"]),
        )
        return stats, cut

    def _train_epoch(self, deadline: float | None, epoch: int = 1,
                     on_batch: Callable[[int, int, int, int, str], None] | None = None) -> tuple[float, float, bool]:
        """Mean training loss and accuracy of the batches run, and whether the deadline cut the epoch."""
        self.model.train()
        x, y, size = self.t.train_x, self.t.train_y, self.spec.batch_size
        order = torch.randperm(x.shape[0], generator=self.generator)[: self.used].to(x.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen, cut = 0, False
        for step, start in enumerate(range(0, self.used, size), start=1):
            idx = order[start : start + size]
            xb, yb = self._inputs(_to(x[idx], self.device)), _to(y[idx], self.device)
            loss, logits = self._step(xb, yb)
            loss_sum += loss.detach() * yb.shape[0]
            correct += (logits.detach().argmax(dim=1) == yb).sum()
            seen += yb.shape[0]
            if self.device.type == "cpu" or step % _CUDA_CHECK_EVERY == 0:
                _check_finite(loss_sum, "training loss")
            if on_batch is not None:
                on_batch(epoch, step, self.steps_per_epoch, self.planned, "train")
            if deadline is not None and seen < self.used and time.monotonic() >= deadline:
                cut = True
                break
        _check_finite(loss_sum, "training loss")
        return float(loss_sum) / seen, float(correct) / seen, cut

    def _inputs(self, xb: torch.Tensor) -> torch.Tensor:
        """A training batch as the model gets it: augmented, and channels-last where asked."""
        if self.augment is not None:
            xb = self.augment(xb)
        return _layout(xb, self.channels_last)

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scheduled:
            self._schedule()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.model(xb)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=self.spec.label_smoothing)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.step += 1
        return loss, logits

    def _schedule(self) -> None:
        """Set the lr (and OneCycle's momentum) of the coming step."""
        lr = lr_at(self.spec, self.step, self.total_steps, self.steps_per_epoch)
        momentum = momentum_at(self.spec, self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if momentum is None:
                continue
            if "betas" in group:
                group["betas"] = (momentum, group["betas"][1])
            elif group.get("momentum", 0.0) > 0:  # plain sgd stays plain
                group["momentum"] = momentum


def _check_knobs(spec: TrainSpec) -> None:
    """ValueError for a knob the recipe does not know (the host's parse_train_spec bounds them first)."""
    if spec.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {spec.schedule!r}; use one of {', '.join(SCHEDULES)}")
    if not 0.0 <= spec.label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {spec.label_smoothing}")
    if not spec.warmup_epochs >= 0.0:
        raise ValueError(f"warmup_epochs must be >= 0, got {spec.warmup_epochs}")
    if spec.patience is not None and spec.patience < 0:
        raise ValueError(f"patience must be >= 0 or None, got {spec.patience}")


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


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
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int,
    *, channels_last: bool = False, on_step: Callable[[int, int], None] | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``x``, in eval mode, in float32, in batches
    (``on_step(step, steps)`` after each)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    steps = math.ceil(x.shape[0] / batch)
    for step, start in enumerate(range(0, x.shape[0], batch), start=1):
        xb, yb = _to(x[start : start + batch], device), _to(y[start : start + batch], device)
        logits = model(_layout(xb, channels_last)).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(dim=1) == yb).sum()
        if on_step is not None:
            on_step(step, steps)
    n = max(int(x.shape[0]), 1)
    return float(loss_sum) / n, float(correct) / n


@torch.no_grad()
def _predict(
    model: nn.Module, x: torch.Tensor, device: torch.device, batch: int,
    *, channels_last: bool = False, tta: bool = False, on_step: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Test logits (n_test, C) as float32, in eval mode, without autocast, in batches
    (``on_step(step, steps)`` after each).

    With ``tta`` each image's logits are the mean of its own and its mirror's.
    """
    model.eval()
    parts = []
    steps = math.ceil(x.shape[0] / batch)
    for step, start in enumerate(range(0, x.shape[0], batch), start=1):
        xb = _layout(_to(x[start : start + batch], device), channels_last)
        logits = model(xb).float()
        if tta:
            logits = (logits + model(_layout(xb.flip(-1), channels_last)).float()) / 2
        parts.append(logits.cpu())
        if on_step is not None:
            on_step(step, steps)
    out = torch.cat(parts).numpy()
    if not np.isfinite(out).all():
        raise NonFiniteLoss("the test logits contain NaN or infinite values")
    return np.ascontiguousarray(out, dtype=np.float32)
