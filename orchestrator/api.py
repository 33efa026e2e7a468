"""The Python API: what the command line does, called from Python, under the seed's names.

Render a layer config to source and save it::

    from orchestrator import ModelConfig, assemble_model_code, save_model_code

    cfg = ModelConfig(class_name="SmallCNN", input_shape=(1, 8, 8), layers=[
        {"type": "Conv2d", "in_channels": 1, "out_channels": 8, "kernel_size": 3},
        {"type": "ReLU"},
        {"type": "MaxPool2d", "kernel_size": 2},
        {"type": "Flatten"},
        {"type": "Linear", "out_features": 10},
    ])
    save_model_code("small_cnn.py", assemble_model_code(cfg), overwrite=False)

``ModelConfig`` takes the seed's form: ``class_name``, ``input_shape`` (no batch
dimension) and ``layers``, each a dict with a torch-style ``type``. It is normalised
to the typed config of ``orchestrator.planning.types`` (see :func:`normalize_config`):
the last layer must be the classifier ``Linear`` (its ``out_features`` is the class
count) and every ``in_channels``/``in_features``/``num_features`` given must match what
the layer before it produces. What cannot be normalised is a ``UsageError`` naming
the layer's index, the problem and what is accepted.

Then, through the hardened sandbox (Docker; nothing of a model is imported here):
:func:`summarize_model` (parameters, output shape, and per-layer shapes for a config),
:func:`check_model` (``researcher check``, optionally training and scoring) and
:func:`run` (``researcher run``, returning a :class:`RunResult`). LLM access is set
with :class:`LLMSettings`.
"""

from __future__ import annotations

import json
import os
import tempfile
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from orchestrator.exceptions import UsageError
from orchestrator.planning.seed import (
    LayerShape,
    ModelConfig,
    NormalizedConfig,
    as_seed_config,
    assemble_model_code,
    normalize_config,
)

__all__ = [
    "AssembleResult",
    "BestCandidate",
    "LLMSettings",
    "LayerShape",
    "MetricValue",
    "ModelConfig",
    "ModelFileExists",
    "ModelSummary",
    "NormalizedConfig",
    "RunResult",
    "assemble_from_config",
    "assemble_model_code",
    "check_model",
    "normalize_config",
    "run",
    "run_result",
    "save_model_code",
    "summarize_model",
]

StrPath = str | PathLike[str]


class ModelFileExists(UsageError, FileExistsError):
    """``save_model_code(..., overwrite=False)`` found a file already there."""


# ----------------------------------------------------------------------- LLM settings


@dataclass(frozen=True)
class LLMSettings:
    """An OpenAI-compatible endpoint and how to call it, under the seed's names.

    ``http_timeout`` is seconds per HTTP request (300 by default, as the seed documents);
    ``max_retries`` retries after the first attempt on 429, 5xx, refused connections and
    timeouts, waiting ``retry_backoff * 2**n`` seconds (with jitter, capped; a server's
    ``Retry-After`` wins) before retry ``n``. ``api_key`` is sent, never stored or shown.
    """

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    http_timeout: float = 300.0
    max_retries: int = 4
    retry_backoff: float = 0.5  # RetryPolicy's base_s

    def __post_init__(self) -> None:
        from orchestrator.llm.client import chat_url

        problems = []
        if not isinstance(self.model, str) or not self.model:
            problems.append("model must be a non-empty model name")
        if not self.http_timeout > 0:
            problems.append(f"http_timeout must be > 0 seconds, got {self.http_timeout!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            problems.append(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if not self.retry_backoff >= 0:
            problems.append(f"retry_backoff must be >= 0 seconds, got {self.retry_backoff!r}")
        if problems:
            raise UsageError("LLMSettings: " + "; ".join(problems))
        chat_url(self.base_url)  # a UsageError (redacted) for a URL that cannot work

    @classmethod
    def of(cls, value: LLMSettings | Mapping[str, Any] | None) -> LLMSettings | None:
        """``value`` as LLMSettings: as is, from a dict of its fields (the seed's ``llm_kwargs``), or None."""
        if value is None or isinstance(value, LLMSettings):
            return value
        if not isinstance(value, Mapping):
            raise UsageError(f"LLM settings must be LLMSettings or a dict, got {type(value).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise UsageError(f"unknown LLM setting(s) {unknown}; accepted: {', '.join(sorted(known))}")
        return cls(**value)

    def retry_policy(self):
        """The client's ``RetryPolicy`` for these settings."""
        from orchestrator.llm.retry import RetryPolicy

        return RetryPolicy(max_retries=self.max_retries, base_s=self.retry_backoff)

    def client(self, *, recorder=None):
        """An ``LLMClient`` with these settings (close it, or use it as a context manager)."""
        from orchestrator.llm.client import LLMClient

        return LLMClient(self.base_url, self.model, self.api_key, timeout=float(self.http_timeout),
                         retry=self.retry_policy(), recorder=recorder)


def save_model_code(path: StrPath, src: str, overwrite: bool = True) -> Path:
    """Write ``src`` to ``path`` (parents made); ``overwrite=False`` refuses an existing file."""
    target = Path(path)
    if not overwrite and target.exists():
        raise ModelFileExists(f"{target} already exists and overwrite=False; pass overwrite=True to replace it "
                              "or choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:  # made between the check and the open
        raise ModelFileExists(f"{target} already exists and overwrite=False") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(src)
    return target


@dataclass(frozen=True)
class AssembleResult:
    """What ``assemble_from_config`` wrote: the path, how (``"deterministic"`` or ``"llm"``) and the source."""

    path: Path
    via: str
    source: str
    class_name: str
    attempts: int = 0  # LLM replies used (0 for the deterministic assembler)
    llm_error: str = ""  # why the LLM's source was not used, when use_llm fell back


_LLM_TASK = ("Write the PyTorch model for this layer config. Keep the layers in this order with these "
             "settings; the last Linear is the classifier. Name the class {name}.\n"
             "Input shape (without the batch dimension): {shape}; classes: {k}.\nLayers (JSON): {layers}")


def assemble_from_config(cfg: ModelConfig | Mapping[str, Any], path: StrPath, use_llm: bool = False,
                         llm_kwargs: LLMSettings | Mapping[str, Any] | None = None, *,
                         overwrite: bool = True, correction_rounds: int = 2) -> AssembleResult:
    """Render ``cfg`` and save it at ``path``; with ``use_llm`` an LLM writes the source instead.

    The config is normalised first (a UsageError for what cannot be). With ``use_llm`` the
    LLM planner's source mode is asked (its prompt, structured output and tolerant
    extraction), shown the config, and told what was wrong with an unusable reply up to
    ``correction_rounds`` times; if the LLM is down or never gives usable source, the
    deterministic assembler's source is saved and ``llm_error`` says why. ``llm_kwargs``
    is an :class:`LLMSettings` or a dict of its fields. The LLM's source is only parsed
    here, never imported: put it through :func:`summarize_model` or :func:`check_model`.
    """
    norm = normalize_config(cfg)
    source = assemble_model_code(cfg)
    via, attempts, error, class_name = "deterministic", 0, "", norm.class_name
    if use_llm:
        settings = LLMSettings.of(llm_kwargs)
        if settings is None:
            raise UsageError("use_llm=True needs llm_kwargs, e.g. {'base_url': 'http://127.0.0.1:11434/v1', "
                             "'model': 'qwen2.5-coder'}")
        seed = as_seed_config(cfg)
        try:
            source, class_name, attempts = _llm_source(settings, norm, seed.layers, correction_rounds)
            via = "llm"
        except Exception as exc:  # noqa: BLE001 - any LLM trouble falls back to the assembler
            from orchestrator.llm.errors import LLMError
            from orchestrator.planning.types import InvalidConfig

            if not isinstance(exc, (LLMError, InvalidConfig)):
                raise
            error = f"{type(exc).__name__}: {exc}"
    written = save_model_code(path, source, overwrite=overwrite)
    return AssembleResult(written, via, source, class_name, attempts, error)


def _llm_source(settings: LLMSettings, norm: NormalizedConfig, layers: Sequence[Mapping[str, Any]],
                correction_rounds: int) -> tuple[str, str, int]:
    """(source, class name, replies used) from the LLM in the planner's source mode."""
    from orchestrator.llm import prompts
    from orchestrator.llm.errors import LLMBadResponse
    from orchestrator.llm.records import ChatMessage
    from orchestrator.planning.llm import LLMAssembler
    from orchestrator.planning.types import PlannerFacts, InvalidConfig

    facts = PlannerFacts(name=norm.class_name, input_shape=norm.input_shape, num_classes=norm.num_classes)
    assembler = LLMAssembler(facts, mode="source")
    task = _LLM_TASK.format(name=norm.class_name, shape=norm.input_shape, k=norm.num_classes,
                            layers=json.dumps([dict(layer) for layer in layers]))
    messages = [ChatMessage("system", assembler.system_prompt()), ChatMessage("user", task)]
    problem = ""
    with settings.client() as client:
        for attempt in range(1, correction_rounds + 2):
            result = client.chat(messages, schema=assembler.schema, schema_name="candidate", temperature=0.0,
                                 max_tokens=2048, purpose="assemble")
            try:
                proposal, _ = assembler.build(result.text)
            except (LLMBadResponse, InvalidConfig) as exc:
                problem = str(exc)
                messages = [*messages, *prompts.correction_message(result.text, problem)]
                continue
            return proposal.source or "", proposal.class_name, attempt
    raise LLMBadResponse(f"no usable source after {correction_rounds + 1} replies; last problem: {problem}")


# ----------------------------------------------------------------------- through the sandbox


def _default_sandbox(*, timeout_s: float):
    from orchestrator.sandbox.config import DEFAULT_IMAGE, SandboxConfig, validate

    return validate(SandboxConfig(image=DEFAULT_IMAGE, cpus=float(os.cpu_count() or 1), timeout_s=timeout_s))


def check_model(path: StrPath, *, class_name: str = "Net", input_shape: tuple[int, ...] | None = None,
                num_classes: int | None = None, dataset: str | None = None, data_dir: str | None = None,
                train: bool = False, epochs: int = 10, seeds: int = 1, batch_size: int = 64, lr: float = 1e-3,
                optimizer: str = "adamw", out: StrPath | None = None, sandbox=None,
                backend_factory: Callable[[], Any] | None = None):
    """``researcher check`` as a function; returns its ``CheckOutcome`` (a failing model is data, not an error).

    ``outcome.result.failure`` is None or a ``Failure``; ``outcome.result.check`` has ``params``
    and ``output_shape``; with ``train=True`` (which needs ``dataset`` or ``data_dir``)
    ``outcome.scores.metrics[name]`` has ``mean``, ``ci95_low``, ``ci95_high``, ``per_seed``,
    scored here from the sandbox's logits. ``sandbox`` is a ``SandboxConfig`` (default: every
    core, 2g, 120 s, 600 s when training); sandboxes come straight from Docker unless
    ``backend_factory`` says otherwise. Like ``orchestrator.testing.check_model`` without
    testcontainers.
    """
    import dataclasses

    from orchestrator.check import check_request, default_check_config, run_check
    from orchestrator.cli import docker_backend_factory
    from orchestrator.sandbox.config import validate

    request = check_request(path, class_name=class_name, input_shape=input_shape, num_classes=num_classes,
                            dataset=dataset, data_dir=data_dir, train=train, epochs=epochs, seeds=seeds,
                            batch_size=batch_size, lr=lr, optimizer=optimizer, out=out)
    config = validate(sandbox) if sandbox is not None else default_check_config(train=train)
    if dataset:
        from evaluator.download import ensure

        request = dataclasses.replace(request, data_dir=ensure(dataset, data_dir))
    return run_check(request, backend_factory or docker_backend_factory(config.image), config, progress=False)


@dataclass(frozen=True)
class ModelSummary:
    """A model file as the sandbox saw it, with per-layer shapes when it was rendered from a config.

    ``params``, ``output_shape`` and ``flops`` (forward FLOPs per example) come from the
    sandbox's import and forward passes of the code; ``layers`` come from the config (the
    trusted side's shape inference, the assembler's), so they are empty for a file given
    without its config.
    """

    path: Path
    class_name: str
    input_shape: tuple[int, ...] | None
    params: int | None  # None when the model failed
    output_shape: tuple[int, ...] | None  # with the batch dimension, e.g. (2, 10)
    layers: tuple[LayerShape, ...] = ()
    failure: Any = None  # sandbox_image.protocol.Failure, or None when it passed
    flops: int | None = None  # forward FLOPs per example, counted in the sandbox (None: failed or not counted)

    @property
    def ok(self) -> bool:
        """True when the model imported, built and ran a forward pass in the sandbox."""
        return self.failure is None


def summarize_model(model: StrPath | ModelConfig | Mapping[str, Any], *, class_name: str | None = None,
                    input_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
                    dataset: str | None = None, config: ModelConfig | Mapping[str, Any] | None = None,
                    sandbox=None, backend_factory: Callable[[], Any] | None = None) -> ModelSummary:
    """Parameters and output shape of a model file (or a config, rendered first), through the sandbox.

    ``model`` is a path, or a seed config (then the input shape, class count and class name
    are the config's). For a path give ``input_shape`` and ``num_classes`` (or ``dataset``),
    and the ``config`` it was rendered from to get per-layer shapes. A model that fails is
    returned with ``failure`` set, never raised.
    """
    if isinstance(model, (ModelConfig, Mapping)):
        config = model
    norm = normalize_config(config) if config is not None else None
    if norm is not None:
        class_name = class_name or norm.class_name
        input_shape = input_shape or norm.input_shape
        num_classes = num_classes or norm.num_classes
    class_name = class_name or "Net"
    with tempfile.TemporaryDirectory(prefix="researcher-summary-") as tmp:
        if isinstance(model, (ModelConfig, Mapping)):
            path = save_model_code(Path(tmp) / "model.py", assemble_model_code(model))
        else:
            path = Path(model)
        outcome = check_model(path, class_name=class_name, input_shape=input_shape, num_classes=num_classes,
                              dataset=dataset, sandbox=sandbox, backend_factory=backend_factory)
    result = outcome.result
    check = result.check if result.failure is None else None
    return ModelSummary(
        path=Path(model) if not isinstance(model, (ModelConfig, Mapping)) else Path("<config>"),
        class_name=class_name, input_shape=tuple(outcome.request.input_shape or ()) or None,
        params=check.params if check else None, flops=check.flops if check else None,
        output_shape=tuple(check.output_shape) if check else None,
        layers=norm.layer_shapes if norm is not None else (), failure=result.failure)


# ----------------------------------------------------------------------- research runs


@dataclass(frozen=True)
class MetricValue:
    """A metric's mean over seeds with its Student-t 95% interval (None from one seed)."""

    mean: float
    ci95_low: float | None
    ci95_high: float | None
    n_seeds: int


@dataclass(frozen=True)
class BestCandidate:
    """The run's best candidate: chosen on the selection split; the test split is reported only."""

    id: str
    params: int | None
    selection: MetricValue | None
    test: MetricValue | None
    source_path: Path  # best_model.py of the run
    flops: int | None = None  # forward FLOPs per example, counted in the sandbox
    final_of: str | None = None  # when it is a final training: the candidate whose design it retrained


@dataclass(frozen=True)
class RunResult:
    """What a research run ended with (the registry under ``run_dir`` has everything else)."""

    run_dir: Path
    status: str  # finished, interrupted or failed
    stop_reason: str
    metric: str
    n_candidates: int  # finished ones, passed or failed
    n_passed: int
    n_failed: int
    best: BestCandidate | None
    report: Path  # report.html


def _metric_value(summary) -> MetricValue | None:
    if summary is None:
        return None
    return MetricValue(float(summary.mean), summary.ci95_low, summary.ci95_high, len(summary.per_seed))


def run_result(run_dir: StrPath) -> RunResult:
    """The typed summary of a run directory (finished, interrupted or still running)."""
    from orchestrator.registry import Registry

    with Registry.open(run_dir, readonly=True) as registry:
        info = registry.run_info()
        metric = registry.settings.metric
        records = [r for r in registry.candidates() if r.status in ("passed", "failed")]
        best = registry.best()
        paths = registry.paths
    chosen = None
    if best is not None:
        chosen = BestCandidate(id=best.id, params=best.params, flops=best.flops, final_of=best.final_of,
                               selection=_metric_value(best.selection_summary(metric)),
                               test=_metric_value(best.summary(metric)), source_path=paths.best_model)
    return RunResult(run_dir=paths.root, status=info.status, stop_reason=info.message, metric=metric,
                     n_candidates=len(records), n_passed=sum(r.status == "passed" for r in records),
                     n_failed=sum(r.status == "failed" for r in records), best=chosen, report=paths.report_html)


def _run_settings(goal: str | None, *, dataset: str | None, data_dir: str | None, target: str | None,
                  name: str, max_candidates: int | None, time_budget_s: float | None, seeds: int, parallel: int,
                  search_seed: int, llm: LLMSettings | None, llm_mode: str, device: str, runtime: str, keep: bool):
    """RunSettings, through the very function that builds them from `researcher run`'s flags."""
    from orchestrator.research import DEFAULT_GOAL, dataset_choice, run_target, settings_from_args

    args = types.SimpleNamespace(
        goal=goal or DEFAULT_GOAL, dataset=dataset, data_dir=data_dir, name=name, max_candidates=max_candidates,
        time_budget=time_budget_s, seeds=seeds, parallel=parallel, search_seed=search_seed,
        llm_base_url=llm.base_url if llm else None, llm_model=llm.model if llm else None, llm_mode=llm_mode,
        llm_timeout=llm.http_timeout if llm else 120.0, llm_max_retries=llm.max_retries if llm else 4,
        llm_retry_backoff=llm.retry_backoff if llm else 0.5, device=device, runtime=runtime, keep=keep)
    choice = dataset_choice(args)
    return settings_from_args(args, run_target(target, args, choice), dataset=choice), choice


def run(goal: str | None = None, *, dataset: str | None = None, data_dir: str | None = None,
        target: str | None = None, name: str | None = None, runs_dir: StrPath = "runs",
        max_candidates: int | None = 10, time_budget_s: float | None = 1800.0, seeds: int = 3,
        parallel: int = 1, search_seed: int = 0, llm: LLMSettings | Mapping[str, Any] | None = None,
        llm_mode: str = "config", keep: bool = False, sandbox=None,
        backend_factory: Callable[[], Any] | None = None) -> RunResult:
    """``researcher run`` from Python: research toward ``goal`` and return the run's :class:`RunResult`.

    The arguments are the command's flags (``time_budget_s`` is ``--time-budget``,
    ``target`` is ``--target`` such as ``"accuracy=0.98"``); without ``llm`` the offline
    planner searches. ``sandbox`` is a ``SandboxConfig`` (default: the command's, 900 s
    per candidate, the cores shared between ``parallel`` sandboxes). The run directory,
    its registry and reports are written under ``runs_dir`` as by the command; progress
    goes to the terminal. Ctrl-C ends the run cleanly (``researcher resume`` continues it)
    and is re-raised.
    """
    from orchestrator.cli import docker_backend_factory
    from orchestrator.registry.files import utc_stamp
    from orchestrator.research import Secrets, check_runs_dir, sandbox_for_run, start_run, with_sandbox
    from orchestrator.sandbox.config import validate
    from orchestrator.sandbox.gpus import bound_parallel

    import msgspec

    llm_settings = LLMSettings.of(llm)
    root = Path(runs_dir)
    check_runs_dir(root)
    if not name:
        name, suffix = f"run_{utc_stamp()}", 1
        while (root / name).exists():
            suffix += 1
            name = f"run_{utc_stamp()}_{suffix}"
    config = validate(sandbox) if sandbox is not None else _default_sandbox(timeout_s=900.0)
    settings, choice = _run_settings(goal, dataset=dataset, data_dir=data_dir, target=target, name=name,
                                     max_candidates=max_candidates, time_budget_s=time_budget_s, seeds=seeds,
                                     parallel=parallel, search_seed=search_seed, llm=llm_settings,
                                     llm_mode=llm_mode, device=config.device, runtime=config.container_runtime,
                                     keep=keep)
    bounded, _ = bound_parallel(settings.parallel, device=config.device, cores=os.cpu_count() or 1,
                                gpus=config.gpus, cpus=config.cpus if sandbox is not None else None)
    settings = msgspec.structs.replace(settings, parallel=bounded)
    config = sandbox_for_run(config, settings.parallel, cpus_given=sandbox is not None)
    settings = with_sandbox(settings, config)
    from evaluator.download import ensure

    settings = msgspec.structs.replace(settings, data_dir=ensure(settings.dataset, settings.data_dir))
    secrets = Secrets(llm_settings.api_key if llm_settings else None,
                      llm_base_url=llm_settings.base_url if llm_settings else None)
    start_run(settings, root=root, config=config, secrets=secrets,
              backend_factory=backend_factory or docker_backend_factory(config.image))
    return run_result(root / name)
