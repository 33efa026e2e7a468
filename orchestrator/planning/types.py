"""Typed vocabulary shared by every planner, the assembler and the research loop.

A planner proposes a :class:`Proposal` (a layer config or free source, plus how to
train it); the loop evaluates it and reports an :class:`Outcome`. Layer configs
are frozen, tagged msgspec Structs so that an LLM can emit them as JSON (see
:func:`model_config_json_schema`) and the host can validate them strictly
(see :func:`parse_model_config`): unknown keys, wrong types and out-of-range
values are all rejected with the JSON path of the offending field.

Exceptions::

    ResearcherError
    └── InvalidConfig(ValueError)     a layer config or train spec is out of bounds,
                                      or does not fit the input shape
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol, TypeVar, runtime_checkable

import msgspec
from msgspec import Meta

from evaluator.metrics import direction as metric_direction
from orchestrator.exceptions import ResearcherError
from sandbox_image.protocol import AUGMENTS, OPTIMIZERS, PAD_MODES, SCHEDULES, FailureKind, TrainSpec


class InvalidConfig(ResearcherError, ValueError):
    """A proposed config or train spec is malformed, out of bounds or does not fit."""


# ----------------------------------------------------------------- bounded values

Channels = Annotated[int, Meta(ge=1, le=1024, description="output channels, 1..1024")]
Features = Annotated[int, Meta(ge=1, le=8192, description="output features, 1..8192")]
Kernel = Annotated[int, Meta(ge=1, le=11, description="kernel size, 1..11")]
Stride = Annotated[int, Meta(ge=1, le=4, description="stride, 1..4")]
Padding = Annotated[int, Meta(ge=0, le=5, description="zero padding, 0..5")]
PoolKernel = Annotated[int, Meta(ge=1, le=8, description="pooling window, 1..8")]
Probability = Annotated[float, Meta(ge=0.0, le=0.9, description="drop probability, 0..0.9")]
Blocks = Annotated[int, Meta(ge=1, le=8, description="residual blocks in this stage, 1..8")]

MAX_LAYERS = 64


class _Layer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
             tag_field="type"):
    """Base of every layer spec; the JSON key ``type`` names the layer."""


class Conv2d(_Layer, tag="conv2d"):
    """2-D convolution; ``padding`` None means ``kernel_size // 2`` ("same" for odd kernels)."""

    out_channels: Channels
    kernel_size: Kernel = 3
    stride: Stride = 1
    padding: Padding | None = None


class BatchNorm(_Layer, tag="batchnorm"):
    """Batch normalisation: 2-D on (C, H, W) activations, 1-D on flat features."""


class ReLU(_Layer, tag="relu"):
    """Rectified linear unit."""


class GELU(_Layer, tag="gelu"):
    """Gaussian error linear unit."""


class MaxPool(_Layer, tag="maxpool"):
    """2-D max pooling; ``stride`` None means ``kernel``."""

    kernel: PoolKernel = 2
    stride: Stride | None = None


class AvgPool(_Layer, tag="avgpool"):
    """2-D average pooling; ``stride`` None means ``kernel``."""

    kernel: PoolKernel = 2
    stride: Stride | None = None


class Dropout(_Layer, tag="dropout"):
    """Dropout with probability ``p``."""

    p: Probability = 0.1


class Flatten(_Layer, tag="flatten"):
    """Flatten (C, H, W) to C*H*W features."""


class GlobalAvgPool(_Layer, tag="globalavgpool"):
    """Average over H and W: (C, H, W) -> (C,)."""


class Linear(_Layer, tag="linear"):
    """Fully connected layer (flattens spatial input first)."""

    out_features: Features


class Residual(_Layer, tag="residual"):
    """A stage of ResNet basic blocks (conv-bn-relu-conv-bn + shortcut, relu).

    The first block maps to ``channels`` with ``stride``; the rest keep the shape.
    ``kernel_size`` must be odd so that the shortcut and the body agree in size.
    """

    channels: Channels
    blocks: Blocks = 1
    kernel_size: Kernel = 3
    stride: Stride = 1


Layer = (Conv2d | BatchNorm | ReLU | GELU | MaxPool | AvgPool | Dropout | Flatten
         | GlobalAvgPool | Linear | Residual)

#: Layers that need a (C, H, W) input.
SPATIAL_LAYERS = (Conv2d, MaxPool, AvgPool, GlobalAvgPool, Residual)


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A feed-forward stack of layers; the assembler appends the classifier Linear."""

    layers: Annotated[tuple[Layer, ...], Meta(max_length=MAX_LAYERS)]
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")] = (
        "model")


def model_config_json_schema() -> dict[str, Any]:
    """JSON schema of :class:`ModelConfig`, for LLM structured output."""
    return msgspec.json.schema(ModelConfig)


def semantic_errors(config: ModelConfig) -> list[str]:
    """Checks a schema cannot express (e.g. odd residual kernels)."""
    errors = []
    for i, layer in enumerate(config.layers):
        if isinstance(layer, Residual) and layer.kernel_size % 2 == 0:
            errors.append(f"layers[{i}] residual kernel_size {layer.kernel_size} must be odd "
                          "(1, 3, 5, 7, 9 or 11) so the shortcut matches the block's output")
        if isinstance(layer, Conv2d) and layer.padding is not None \
                and layer.padding > layer.kernel_size // 2:
            errors.append(f"layers[{i}] conv2d padding {layer.padding} exceeds kernel_size // 2 "
                          f"= {layer.kernel_size // 2}; use a smaller padding or leave it out")
    return errors


T = TypeVar("T")


def _decode(data: Any, type_: type[T], what: str, hint: str) -> T:
    """JSON text, a mapping or any Struct, decoded and validated as ``type_``; InvalidConfig else."""
    try:
        if isinstance(data, (bytes, str)):
            return msgspec.json.decode(data, type=type_)
        builtins = msgspec.to_builtins(data) if isinstance(data, msgspec.Struct) else data
        return msgspec.convert(builtins, type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidConfig(f"invalid {what}: {exc}. {hint}") from exc


def parse_model_config(data: bytes | str | Mapping[str, Any] | ModelConfig) -> ModelConfig:
    """Decode, validate and bound a layer config from JSON or a dict; raise InvalidConfig."""
    config = _decode(data, ModelConfig, "model config",
                     "Expected JSON matching model_config_json_schema(), e.g. {\"layers\": "
                     "[{\"type\": \"conv2d\", \"out_channels\": 32}, {\"type\": \"relu\"}]}")
    errors = semantic_errors(config)
    if errors:
        raise InvalidConfig("invalid model config: " + "; ".join(errors))
    return config


# ----------------------------------------------------------------- train settings

#: Most training seeds one candidate may run (``--seeds``, the API, the LLM's train settings).
MAX_SEEDS = 16

#: The one table of TrainSpec's bounds: what a sane run needs of each field (a msgspec
#: constraint, or the choices of a string). ``_BoundedTrainSpec`` is made from it and
#: TrainSpec's own fields and defaults; ``parse_train_spec`` decodes through it.
TRAIN_BOUNDS: dict[str, Any] = {
    "epochs": Meta(ge=1, le=500),
    "batch_size": Meta(ge=1, le=4096),
    "lr": Meta(ge=1e-6, le=1.0),
    "optimizer": OPTIMIZERS,
    "weight_decay": Meta(ge=0.0, le=1.0),
    "momentum": Meta(ge=0.0, lt=1.0),
    "patience": Meta(ge=0, le=500),
    "seeds": Meta(min_length=1, max_length=MAX_SEEDS),
    "time_budget_s": Meta(ge=0.0),
    "augment": AUGMENTS,
    "crop_px": Meta(ge=0, le=8),
    "pad_mode": PAD_MODES,
    "schedule": SCHEDULES,
    "warmup_epochs": Meta(ge=0.0, le=50.0),
    "label_smoothing": Meta(ge=0.0, le=0.3),
}


def _bounded(name: str, tp: Any) -> Any:
    bound = TRAIN_BOUNDS.get(name)
    if bound is None:
        return tp
    if isinstance(bound, tuple):
        return Literal[bound]
    if name == "seeds":
        return Annotated[tuple[Annotated[int, Meta(ge=0)], ...], bound]
    if name == "patience":  # None: the schedule's default
        return Annotated[int, bound] | None
    return Annotated[tp, bound]


#: The fields of TrainSpec with ``TRAIN_BOUNDS`` (a mirror for decoding, not a message).
_BoundedTrainSpec = msgspec.defstruct(
    "_BoundedTrainSpec",
    [(f.name, _bounded(f.name, f.type), f.default) for f in msgspec.structs.fields(TrainSpec)],
    frozen=True, kw_only=True, forbid_unknown_fields=True, module=__name__)


def seeds_from_count(count: int) -> tuple[int, ...]:
    """The seeds ``0..count-1`` of ``--seeds COUNT``; UsageError unless 1 <= count <= MAX_SEEDS."""
    from orchestrator.exceptions import UsageError

    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SEEDS:
        raise UsageError(f"--seeds must be between 1 and {MAX_SEEDS}")
    return tuple(range(count))


_TRAIN_HINT = ("Bounds: epochs 1..500, batch_size 1..4096, lr 1e-6..1, optimizer adamw|adam|sgd, "
               "weight_decay 0..1, momentum 0..<1, patience 0..500 or null, augment "
               "none|shift|crop_flip|crop_flip_erase, crop_px 0..8, pad_mode zero|reflect, schedule "
               "constant|cosine|onecycle, warmup_epochs 0..50 (below epochs), nesterov with sgd "
               "and momentum > 0 only, label_smoothing 0..0.3")


def _train_spec_errors(spec: _BoundedTrainSpec) -> list[str]:
    """Checks between fields, which the schema cannot express."""
    errors = []
    if not all(math.isfinite(v) for v in (spec.lr, spec.weight_decay, spec.momentum,
                                          spec.time_budget_s, spec.warmup_epochs,
                                          spec.label_smoothing)):
        errors.append("values must be finite numbers")
    if spec.nesterov and spec.optimizer != "sgd":
        errors.append(f"nesterov applies to optimizer sgd only, not {spec.optimizer!r}")
    if spec.nesterov and spec.momentum <= 0:
        errors.append("nesterov needs momentum > 0")
    if spec.warmup_epochs > 0 and spec.warmup_epochs >= spec.epochs:
        errors.append(f"warmup_epochs {spec.warmup_epochs:g} must be below epochs {spec.epochs}")
    return errors


def parse_train_spec(data: bytes | str | Mapping[str, Any] | TrainSpec) -> TrainSpec:
    """Decode and bound a TrainSpec (lr 10, batch 0 or an unknown schedule are rejected); raise InvalidConfig.

    ``hflip_ok`` passes through as given: it is the dataset's rule, and the loop sets it
    from the dataset (``evaluator.augment.flips_preserve_labels``) on every job.
    """
    bounded = _decode(data, _BoundedTrainSpec, "train settings", _TRAIN_HINT)
    errors = _train_spec_errors(bounded)
    if errors:
        raise InvalidConfig("invalid train settings: " + "; ".join(errors))
    return msgspec.convert(msgspec.to_builtins(bounded), TrainSpec)


# ----------------------------------------------------------------- planner I/O

ParamValue = int | float | str | bool


class Proposal(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a planner wants evaluated next: a layer config XOR free source, and training.

    ``ref`` is the planner's own key for this proposal and ``params`` the search
    point behind it; the loop stores both and hands them back inside ``Outcome``
    so a planner can match results that arrive out of order, or after a resume.
    """

    config: ModelConfig | None = None
    source: str | None = None
    class_name: str = "Net"
    train: TrainSpec = TrainSpec()
    rationale: str = ""
    parent: str | None = None  # candidate id this proposal repairs or refines
    ref: str = ""
    params: dict[str, ParamValue] = {}

    def __post_init__(self) -> None:
        if (self.config is None) == (self.source is None):
            raise InvalidConfig("a Proposal needs exactly one of config or source")
        if not self.class_name.isidentifier():
            raise InvalidConfig(f"class_name {self.class_name!r} is not a Python identifier")


#: ``Proposal.params`` key of a final training: the id of the candidate it retrains.
FINAL_OF = "final_of"


def final_training_of(proposal: Proposal) -> str | None:
    """The candidate id a final-training proposal retrains, or None for any other proposal."""
    value = proposal.params.get(FINAL_OF)
    return value if isinstance(value, str) and proposal.ref.endswith(":final") else None


def candidate_label(candidate_id: str, final_of: str | None) -> str:
    """A candidate's id as shown, naming the one it retrains when it is a final: ``c007 (final of c003)``."""
    return candidate_id if final_of is None else f"{candidate_id} (final of {final_of})"


Status = Literal["passed", "failed"]


class Outcome(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What happened to one evaluated proposal, as the loop tells the planner."""

    candidate_id: str
    proposal: Proposal
    status: Status
    metric: str | None = None  # name of the headline metric, e.g. "accuracy"
    mean: float | None = None  # mean over seeds on the selection split (a planner never sees a test metric)
    ci95: tuple[float, float] | None = None  # Student-t 95% interval over seeds
    failure_kind: FailureKind | None = None
    failure_message: str | None = None
    val_curve: tuple[float, ...] = ()  # per-epoch val accuracy (mean over seeds); diagnostic
    params: int | None = None  # parameter count from the check report
    seconds: float = 0.0
    pruned: bool = False  # training was stopped because the planner's report_epoch said so
    failure_traceback: str = ""  # trimmed traceback from the sandbox, for repair prompts
    flops: int | None = None  # forward FLOPs per example from the check report


class PlannerFacts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a planner may know about the data (never the test labels): a view of ``DatasetFacts``."""

    name: str
    input_shape: tuple[int, ...]  # one example: (C, H, W) for images, (F,) for tables
    num_classes: int
    class_names: tuple[str, ...] = ()
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0

    @classmethod
    def of(cls, facts: Any) -> PlannerFacts:
        """The planner's view of the prepared data's ``evaluator.prepare.DatasetFacts``: these fields only."""
        return cls(**{name: getattr(facts, name) for name in cls.__struct_fields__})

    @property
    def is_image(self) -> bool:
        """True for (C, H, W) inputs."""
        return len(self.input_shape) == 3

    @property
    def is_tabular(self) -> bool:
        """True for flat (F,) inputs."""
        return len(self.input_shape) == 1


Direction = Literal["maximize", "minimize"]

#: Metrics a target may name, with their direction from the evaluator's one table.
METRIC_DIRECTIONS: dict[str, Direction] = {name: metric_direction(name) for name in (
    "accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "auroc", "average_precision",
    "calibration_error",
)}


class Target(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A goal on one metric: stop once ``metric`` reaches ``threshold`` (aideml-style)."""

    metric: str = "accuracy"
    threshold: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None  # None = no stop value
    direction: Direction = "maximize"  # always the metric's own (set from the evaluator's table)

    def __post_init__(self) -> None:
        # Stored for readers of run.json; the table decides, whatever a file or caller says.
        msgspec.structs.force_setattr(self, "direction", metric_direction(self.metric))

    @property
    def maximize(self) -> bool:
        """True when higher values are better."""
        return self.direction == "maximize"

    @property
    def sign(self) -> str:
        """``>=`` or ``<=``: how a value meets the threshold."""
        return ">=" if self.maximize else "<="

    def ranked(self, items: Iterable[T], value: Callable[[T], float]) -> list[T]:
        """``items`` best first by ``value``."""
        return sorted(items, key=value, reverse=self.maximize)

    def best(self, items: Iterable[T], value: Callable[[T], float]) -> T | None:
        """The best of ``items`` by ``value`` (the first of equals); None when there are none."""
        ranked = self.ranked(items, value)
        return ranked[0] if ranked else None

    def better(self, a: float | None, b: float | None) -> bool:
        """True when value ``a`` is strictly better than ``b``; None is the worst value."""
        if a is None:
            return False
        if b is None:
            return True
        return a > b if self.maximize else a < b

    def reached(self, value: float | None) -> bool:
        """True when ``value`` meets the threshold (never for None or no threshold)."""
        if value is None or self.threshold is None:
            return False
        return value >= self.threshold if self.maximize else value <= self.threshold

    @property
    def worst(self) -> float:
        """Stand-in value for a failed candidate, worse than any real one."""
        return -math.inf if self.maximize else math.inf


@runtime_checkable
class Planner(Protocol):
    """Proposes candidates and learns from their outcomes.

    Outcomes may arrive out of order (candidates are evaluated in parallel), and
    ``history`` holds every outcome recorded so far, including those of a
    previous, interrupted run.
    """

    def propose(self, history: Sequence[Outcome]) -> Proposal | None:
        """Next proposal, or None to stop."""
        ...

    def observe(self, outcome: Outcome) -> None:
        """Learn from one finished candidate."""
        ...


@runtime_checkable
class PruningPlanner(Planner, Protocol):
    """A planner that can stop unpromising candidates between epochs."""

    def report_epoch(self, candidate_id: str, epoch: int, value: float, *,
                     proposal: Proposal) -> bool:
        """Record val accuracy after ``epoch``; True means stop training this candidate."""
        ...


def should_prune(planner: Planner, candidate_id: str, epoch: int, value: float, *,
                 proposal: Proposal) -> bool:
    """Ask ``planner`` whether to prune, where it supports pruning; False otherwise."""
    if isinstance(planner, PruningPlanner):
        return planner.report_epoch(candidate_id, epoch, value, proposal=proposal)
    return False
