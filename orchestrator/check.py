"""`researcher check`: evaluate one model file safely, optionally training it.

The file is read and syntax-checked on the host (``ast.parse``, a friendly
early error only), then sent as text to a fresh sandbox. Nothing from the file
is imported here. With ``--train`` the trusted side prepares the dataset, keeps
the test labels, and scores the returned logits itself.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import units
from orchestrator.evaluation import load_prepared
from orchestrator.exceptions import UsageError
from orchestrator.safetext import inert
from orchestrator.sandbox.base import Backend
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.runner import JobResult, new_job_id, run_job
from orchestrator.sandbox.validate import syntax_failure
from orchestrator.training import (
    check_shape_flags, dataset_json, summary_text, train_and_score, training_json, write_outputs,
)
from sandbox_image.protocol import Job, TrainSpec

MAX_SOURCE_BYTES = 1024 * 1024
DATA_DIR_NEEDS_DATASET = ("--data-dir needs --dataset NAME, the format of the data in it "
                          "(e.g. --dataset imagefolder, csv, npz, cifar10 or mnist)")


@dataclass(frozen=True)
class CheckRequest:
    """What the user asked `researcher check` to do."""

    path: Path
    class_name: str = "Net"
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    train: TrainSpec | None = None
    dataset: str | None = None
    data_dir: str | None = None
    out: Path | None = None


def check_request(path, *, class_name: str = "Net", input_shape: tuple[int, ...] | None = None,
                  num_classes: int | None = None, dataset: str | None = None, data_dir: str | None = None,
                  train: bool = False, epochs: int = 10, seeds: int = 1, batch_size: int = 64, lr: float = 1e-3,
                  optimizer: str = "adamw", out=None) -> CheckRequest:
    """The ``CheckRequest`` of ``check_model``'s keyword arguments (the API's and testing's), validated."""
    from orchestrator.planning.types import seeds_from_count

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise UsageError("epochs and batch_size must be >= 1 and lr > 0")
    seed_tuple = seeds_from_count(seeds)
    if (train or out is not None) and not dataset and not data_dir:
        raise UsageError("train=True needs dataset=NAME (e.g. dataset='digits') or data_dir")
    spec = TrainSpec(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seeds=seed_tuple)
    return CheckRequest(path=Path(path), class_name=class_name, input_shape=tuple(input_shape) if input_shape else None,
                        num_classes=num_classes, train=spec if train else None, dataset=dataset, data_dir=data_dir,
                        out=Path(out) if out is not None else None)


def default_check_config(*, train: bool) -> SandboxConfig:
    """The command line's sandbox for a check: every core, 2g, 120 s (600 s when training)."""
    import os

    from orchestrator.sandbox.config import DEFAULT_IMAGE, validate

    return validate(SandboxConfig(image=DEFAULT_IMAGE, cpus=float(os.cpu_count() or 1),
                                  timeout_s=600.0 if train else 120.0))


@dataclass
class CheckOutcome:
    """The result of a check, ready to print or serialise."""

    request: CheckRequest
    result: JobResult
    scores: Any = None  # evaluator Scores when trained
    dynamics: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when the model passed, 1 when it failed."""
        return 0 if self.result.failure is None else 1


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``1,8,8`` into a shape tuple of positive ints."""
    parts = text.split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--input-shape {text!r} must be comma-separated integers, e.g. 1,8,8") from None
    if not shape or any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape {text!r} must have positive dimensions, e.g. 1,8,8")
    return shape


def read_source(path: Path) -> str:
    """Read a model file and check its syntax on the host (not a security check)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read model file {str(path)!r}: {exc.strerror or exc}") from exc
    if len(data) > MAX_SOURCE_BYTES:
        raise UsageError(f"model file {str(path)!r} is {len(data)} bytes; the limit is {MAX_SOURCE_BYTES}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"model file {str(path)!r} is not UTF-8 text: {exc}") from exc


def run_check(request: CheckRequest, backend_factory, config: SandboxConfig, *, progress=None) -> CheckOutcome:
    """Check (and optionally train and score) one model file."""
    if request.data_dir and not request.dataset:  # no format can be derived from a directory
        raise UsageError(DATA_DIR_NEEDS_DATASET)
    source = read_source(request.path)
    job_id = new_job_id()
    failure = syntax_failure(source)
    if failure is not None:
        return CheckOutcome(request, JobResult(job_id=job_id, failure=failure))
    if request.train is not None:
        return _run_training_check(request, source, job_id, backend_factory, config, progress=progress)
    if (request.input_shape is None or request.num_classes is None) and request.dataset:
        request = _shapes_from_dataset(request)
    if request.input_shape is None or request.num_classes is None:
        raise UsageError("give --input-shape and --num-classes (or --dataset NAME, which implies both)")
    job = Job(
        job_id=job_id, source=source, class_name=request.class_name, input_shape=request.input_shape,
        num_classes=request.num_classes, device=config.device, threads=config.threads,
    )
    backend: Backend = backend_factory()
    try:
        result = run_job(backend, job, config)
    finally:
        backend.close()
    return CheckOutcome(request, result)


def _run_training_check(request: CheckRequest, source: str, job_id: str, backend_factory, config: SandboxConfig, *,
                        progress=None) -> CheckOutcome:
    """Train and score ``source`` (``check --train``); write ``--out``'s files when asked."""
    result, scores, dynamics, facts = train_and_score(request, source, job_id, backend_factory, config,
                                                      progress=progress)
    outcome = CheckOutcome(request, result)
    if result.failure is None:
        outcome.scores, outcome.dynamics = scores, dynamics
        outcome.extra.update(training_json(scores, dynamics, facts))
        if request.out is not None:
            outcome.extra["files"] = write_outputs(request.out, scores, result, outcome_json(outcome))
    outcome.extra["dataset"] = dataset_json(facts)
    return outcome


def _shapes_from_dataset(request: CheckRequest) -> CheckRequest:
    """``request`` with the input shape and class count its dataset implies (flags must agree)."""
    import dataclasses

    facts = load_prepared(request.dataset, request.data_dir).facts()
    check_shape_flags(request, facts)
    return dataclasses.replace(request, input_shape=tuple(facts.input_shape), num_classes=facts.num_classes)


def outcome_json(outcome: CheckOutcome) -> dict:
    """The `--json` object: status, failure, params, output_shape, seconds (+ metrics when trained)."""
    result = outcome.result
    failure = result.failure
    data: dict[str, Any] = {
        "status": result.status,
        "failure": None if failure is None else {"stage": failure.stage.value, "kind": failure.kind.value, "message": failure.message},
        "params": result.check.params if result.check else None,
        "flops": result.check.flops if result.check else None,  # forward, per example (None: not counted)
        "output_shape": list(result.check.output_shape) if result.check else None,
        "seconds": round(result.seconds, 3),
        "startup_seconds": round(result.startup_seconds, 3),
        "job_id": result.job_id,
    }
    if failure is not None and failure.traceback:
        data["failure"]["traceback"] = failure.traceback
    if result.exit is not None:
        data["exit"] = {"code": result.exit.exit_code, "oom_killed": result.exit.oom_killed}
    data.update(outcome.extra)
    return data


def print_outcome(outcome: CheckOutcome, *, as_json: bool, stream=None) -> None:
    """Print the outcome for a person, or as one JSON object.

    The failure's message and traceback come from the worker (hostile), the file
    and class names from the user: every piece passes through ``inert`` so no
    terminal escape in them reaches the screen. ``json.dumps`` escapes control
    characters (and, with ``ensure_ascii``, everything beyond ASCII) by itself.
    """
    stream = stream or sys.stdout
    if as_json:
        stream.write(json.dumps(outcome_json(outcome), indent=2) + "\n")
        return
    result = outcome.result
    name = inert(outcome.request.path.name)
    if result.failure is None:
        check = result.check
        stream.write(
            f"PASSED {name}: {inert(outcome.request.class_name)} has {check.params:,} parameters"
            + (f" and {units.flops(check.flops)} per example (forward)" if check.flops is not None else "")
            + f", output {tuple(check.output_shape)}, {result.seconds:.1f} s in the sandbox\n"
        )
    else:
        f = result.failure
        stream.write(f"FAILED {name}: {f.kind.value} at stage {f.stage.value}\n  {inert(f.message)}\n")
        if f.traceback:
            stream.write("  traceback (from the sandbox, trimmed):\n")
            lines = f.traceback.rstrip().splitlines()[-12:]
            stream.write("".join(f"    {inert(line, multiline=True)}\n" for line in lines))
    if outcome.scores is not None:
        # Class names come from the user's data (folder names, CSV headers).
        stream.write(inert(summary_text(outcome.scores, outcome.dynamics, result), multiline=True))
    for path in outcome.extra.get("files", []):
        stream.write(f"  wrote {inert(path)}\n")
