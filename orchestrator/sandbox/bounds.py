"""Bounds on every value a worker sends, checked before the host uses any of it.

The worker runs the candidate's code in its own process, and that code can replace
the worker's functions: every decoded message is hostile. msgspec has already
checked the types; here each value is held to what this job can honestly produce:

- counts are integers in ``0..2**53`` (exact in a float, fit SQLite and JSON);
- every float the host uses is finite, accuracies lie in ``[0, 1]``, losses and
  seconds are not negative;
- an epoch lies in ``1..epochs asked``, a seed is one the job asked for, and no seed
  has more curve entries or Progress messages than the epochs asked;
- a Batches message names the epoch its seed is training (one past its last Progress)
  and a batch within it, and they come at most ``BATCHES_BURST`` plus one a second;
- ``output_shape`` is exactly ``(check_batch, num_classes)``.

A value out of bounds raises ``ProtocolViolation``: the candidate is recorded as a
``protocol_violation`` and the value is never stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from orchestrator.exceptions import ProtocolViolation
from sandbox_image.protocol import (
    BATCHES_EVERY_S,
    MAX_DIMS,
    Batches,
    CheckReport,
    Done,
    EpochStats,
    Job,
    Predictions,
    Progress,
    Ready,
)

#: The largest count the host accepts (exact as a float; fits SQLite's and JSON's integers).
MAX_COUNT = 2**53


#: Bytes a job may send beyond its logits and curves (CheckReport, Failure, Done, framing).
BASE_BYTE_BUDGET = 1 << 20


#: Batches messages a job may send at once, beyond one per ``BATCHES_MIN_INTERVAL_S`` of its time.
BATCHES_BURST = 10
BATCHES_MIN_INTERVAL_S = 1.0
#: Bytes allowed for one Batches message (an honest one takes about 60).
_BATCHES_BYTES = 256


def byte_budget(job: Job, n_test: int | None, timeout_s: float = 0.0) -> int:
    """All the bytes an honest worker sends for ``job``: float64 logits and full curves per seed,
    a Batches message every ``BATCHES_EVERY_S`` of ``timeout_s``, and slack."""
    if job.train is None:
        return BASE_BYTE_BUDGET
    epochs, seeds = job.train.epochs, len(job.train.seeds)
    logits = (n_test or 0) * job.num_classes * 8
    batches = (int(max(timeout_s, 0.0) / BATCHES_EVERY_S) + 1) * _BATCHES_BYTES
    return BASE_BYTE_BUDGET + batches + seeds * (logits + epochs * 2 * 512)  # each epoch: a Progress and a curve entry


def check_count(value: int, what: str) -> int:
    """``value`` if it is an int in ``0..MAX_COUNT``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ProtocolViolation(f"{what} = {_show(value)} is not a count in 0..2**53")
    return value


def check_float(value: float, what: str, *, low: float = 0.0, high: float = math.inf) -> float:
    """``value`` if it is finite and within ``[low, high]``."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ProtocolViolation(f"{what} = {_show(value)} is not a finite number in [{low:g}, {high:g}]")
    return float(value)


def check_ready(ready: Ready, *, device: str) -> None:
    """The worker sees exactly the GPUs it was given: none for cpu, one for cuda."""
    expected = 1 if device == "cuda" else 0
    if ready.cuda_devices != expected:
        hint = (" The host's default Docker runtime may be `nvidia`, which passes every GPU to every "
                "container: the sandbox names its runtime and sets NVIDIA_VISIBLE_DEVICES=void for cpu "
                "jobs; check `docker info` and the runtime given with --runtime."
                if expected == 0 else " Check the GPU ids given with --gpus.")
        raise ProtocolViolation(f"the sandbox worker sees {_show(ready.cuda_devices)} CUDA device(s) for a "
                                f"{device} job, which was given {expected}.{hint}")


def check_report(report: CheckReport, job: Job) -> None:
    """Parameter counts, the exact output shape, and the timings."""
    check_count(report.params, "params")
    check_count(report.trainable_params, "trainable_params")
    if report.trainable_params > report.params:
        raise ProtocolViolation(f"trainable_params {report.trainable_params} > params {report.params}")
    expected = (job.check_batch, job.num_classes)
    if tuple(report.output_shape) != expected:
        raise ProtocolViolation(f"output_shape {_show(report.output_shape)} is not the {expected} asked")
    check_float(report.forward_seconds, "forward_seconds")
    check_float(report.import_seconds, "import_seconds")
    if report.flops is not None:
        check_count(report.flops, "flops")


def check_epoch_stats(stats: EpochStats, epochs: int, what: str) -> None:
    """One epoch's numbers: epoch within the plan, finite losses and seconds, accuracies in [0, 1]."""
    if isinstance(stats.epoch, bool) or not 1 <= stats.epoch <= epochs:
        raise ProtocolViolation(f"{what}: epoch {_show(stats.epoch)} is outside 1..{epochs} asked")
    for name in ("train_loss", "val_loss", "seconds", "lr"):
        check_float(getattr(stats, name), f"{what}: {name}")
    for name in ("train_acc", "val_acc"):
        check_float(getattr(stats, name), f"{what}: {name}", high=1.0)


def check_progress(msg: Progress, job: Job, seen: dict[int, int]) -> None:
    """A Progress of an asked seed, within the epochs asked; ``seen`` counts per seed."""
    seeds, epochs = _plan(job)
    _check_seed(msg.seed, seeds, "Progress")
    seen[msg.seed] = seen.get(msg.seed, 0) + 1
    if seen[msg.seed] > epochs:
        raise ProtocolViolation(f"more than {epochs} Progress messages for seed {msg.seed} ({epochs} epochs asked)")
    if msg.epochs != epochs:
        raise ProtocolViolation(f"Progress says {_show(msg.epochs)} epochs; {epochs} were asked")
    check_epoch_stats(msg.stats, epochs, f"seed {msg.seed} progress")


def check_batches(msg: Batches, job: Job, progress_seen: dict[int, int], sent: int, elapsed_s: float) -> None:
    """Where an asked seed is: training or validating the epoch after its last Progress, or (phase
    "predict") predicting after its last epoch, a batch within it; ``sent`` (this one included)
    within the burst plus one per second of ``elapsed_s``."""
    seeds, epochs = _plan(job)
    _check_seed(msg.seed, seeds, "Batches")
    if msg.epochs != epochs:
        raise ProtocolViolation(f"Batches says {_show(msg.epochs)} epochs; {epochs} were asked")
    done = progress_seen.get(msg.seed, 0)
    if msg.phase == "predict":  # after training, which ended at the last epoch it reported
        if done < 1 or isinstance(msg.epoch, bool) or msg.epoch != done:
            raise ProtocolViolation(f"Batches predicting for seed {msg.seed} after epoch {_show(msg.epoch)}; "
                                    f"its last epoch reported is {done}")
        if isinstance(msg.planned, bool) or msg.planned != 0:
            raise ProtocolViolation(f"Batches predicting says training goes to epoch {_show(msg.planned)}")
    else:
        running = done + 1
        if running > epochs:
            raise ProtocolViolation(f"Batches for seed {msg.seed} after its {epochs} epochs")
        if isinstance(msg.epoch, bool) or msg.epoch != running:
            raise ProtocolViolation(f"Batches for seed {msg.seed} says epoch {_show(msg.epoch)}; "
                                    f"it is training epoch {running} of {epochs}")
        if isinstance(msg.planned, bool) or not (msg.planned == 0 or running <= msg.planned <= epochs):
            raise ProtocolViolation(f"Batches says training goes to epoch {_show(msg.planned)}; it is training "
                                    f"epoch {running} of the {epochs} asked")
    check_count(msg.steps, "Batches steps")
    check_count(msg.step, "Batches step")
    if not 1 <= msg.step <= msg.steps:
        raise ProtocolViolation(f"Batches says batch {msg.step} of {msg.steps}")
    allowed = BATCHES_BURST + max(elapsed_s, 0.0) / BATCHES_MIN_INTERVAL_S
    if sent > allowed:
        raise ProtocolViolation(f"{sent} Batches messages in {elapsed_s:.1f} s: more than {BATCHES_BURST} "
                                f"plus one a second (an honest worker sends one every {BATCHES_EVERY_S:g} s)")


def check_predictions(msg: Predictions, job: Job) -> None:
    """An asked seed's predictions: curves no longer than the epochs asked, finite numbers."""
    seeds, epochs = _plan(job)
    _check_seed(msg.seed, seeds, "Predictions")
    if len(msg.shape) > MAX_DIMS:
        raise ProtocolViolation(f"logits shape has {len(msg.shape)} dimensions")
    for dim in msg.shape:
        check_count(dim, "a logits dimension")
    if len(msg.curves) > epochs:
        raise ProtocolViolation(f"seed {msg.seed} sent {len(msg.curves)} curve entries for {epochs} epochs asked")
    for stats in msg.curves:
        check_epoch_stats(stats, epochs, f"seed {msg.seed} curve")
    if isinstance(msg.best_epoch, bool) or not 0 <= msg.best_epoch <= epochs:
        raise ProtocolViolation(f"best_epoch {_show(msg.best_epoch)} is outside 0..{epochs}")
    check_float(msg.seconds, "predictions seconds")


def check_done(msg: Done) -> None:
    """Done's one number."""
    check_float(msg.seconds, "done seconds")


def _plan(job: Job) -> tuple[Iterable[int], int]:
    if job.train is None:
        raise ProtocolViolation("training messages for a job that did not ask to train")
    return job.train.seeds, job.train.epochs


def _check_seed(seed: int, seeds: Iterable[int], what: str) -> None:
    if seed not in tuple(seeds):
        raise ProtocolViolation(f"{what} for seed {_show(seed)}, which was not asked for")


def _show(value: object, limit: int = 60) -> str:
    """A short repr of a hostile value for an error message (never the whole of it)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for str()
        return f"<{type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"
