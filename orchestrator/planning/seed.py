"""The seed's layer config form, normalised to the typed config the assembler renders.

``ModelConfig`` takes ``class_name``, ``input_shape`` (no batch dimension) and ``layers``,
each a dict with a torch-style ``type`` (``Conv2d``, ``BatchNorm2d``, ``ReLU``, ``MaxPool2d``,
``Flatten``, ``Linear``, ...). ``normalize_config`` maps it onto
``orchestrator.planning.types`` (the last layer is the classifier ``Linear``, whose
``out_features`` is the class count) with the per-layer output shapes; whatever cannot be
normalised is a ``UsageError`` naming the layer's index, the problem and what is accepted.
The Python API (``orchestrator.api``) re-exports these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.exceptions import UsageError



@dataclass
class ModelConfig:
    """The seed's layer config: a class name, the input shape (no batch) and torch-style layers.

    ``layers`` are dicts such as ``{"type": "Conv2d", "in_channels": 3, "out_channels": 8,
    "kernel_size": 3}``; the last one is the classifier ``Linear``. See :func:`normalize_config`
    for what each type accepts.
    """

    class_name: str = "Net"
    input_shape: tuple[int, ...] | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class LayerShape:
    """One layer of a config with the per-example shape it outputs."""

    index: int
    type: str
    output_shape: tuple[int, ...]


@dataclass(frozen=True)
class NormalizedConfig:
    """A seed config as the typed assembler takes it."""

    config: Any  # orchestrator.planning.types.ModelConfig (the hidden layers)
    class_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    layer_shapes: tuple[LayerShape, ...]  # per seed layer, the head included


#: torch-style type -> (accepted keys besides "type", required keys)
_ACCEPTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Conv2d": (("in_channels", "out_channels", "kernel_size", "stride", "padding", "bias"), ("out_channels",)),
    "BatchNorm2d": (("num_features",), ()),
    "BatchNorm1d": (("num_features",), ()),
    "ReLU": (("inplace",), ()),
    "GELU": ((), ()),
    "MaxPool2d": (("kernel_size", "stride", "padding"), ("kernel_size",)),
    "AvgPool2d": (("kernel_size", "stride", "padding"), ("kernel_size",)),
    "Dropout": (("p", "inplace"), ()),
    "Flatten": ((), ()),
    "AdaptiveAvgPool2d": (("output_size",), ("output_size",)),
    "Linear": (("in_features", "out_features", "bias"), ("out_features",)),
}
_TYPES_TEXT = ", ".join(_ACCEPTED)


def _square(index: int, kind: str, key: str, value: Any) -> Any:
    """``3`` for ``3`` or ``(3, 3)``; a UsageError for a non-square window."""
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and value[0] == value[1]:
            return value[0]
        raise UsageError(f"layers[{index}] {kind}: {key}={value!r} is not square; accepted: an integer "
                         "or a pair of equal integers")
    return value


def _typed_layer(index: int, layer: Mapping[str, Any], shape: tuple[int, ...]):
    """The typed layer (or None for a no-op) for one seed layer dict, given its input shape."""
    from orchestrator.planning import types as t

    kind = layer["type"]
    fields = {k: v for k, v in layer.items() if k != "type"}

    def expect(key: str, want: int, what: str) -> None:
        if key in fields and fields[key] != want:
            raise UsageError(f"layers[{index}] {kind}: {key}={fields[key]!r} does not match the previous "
                             f"layer's output {shape} ({what} {want}); use {key}={want} or leave it out")

    if kind == "Conv2d":
        if len(shape) == 3:
            expect("in_channels", shape[0], "channels")
        if fields.get("bias", True) is not True:
            raise UsageError(f"layers[{index}] Conv2d: bias={fields['bias']!r} is not accepted; the assembler "
                             "drops the bias itself before a BatchNorm2d")
        padding = fields.get("padding")
        kernel = _square(index, kind, "kernel_size", fields.get("kernel_size", 3))
        if padding == "same":
            padding = None
        return t.Conv2d(out_channels=fields["out_channels"], kernel_size=kernel,
                        stride=_square(index, kind, "stride", fields.get("stride", 1)),
                        padding=None if padding is None else _square(index, kind, "padding", padding))
    if kind in ("BatchNorm2d", "BatchNorm1d"):
        if (kind == "BatchNorm2d") != (len(shape) == 3):
            raise UsageError(f"layers[{index}] {kind} does not fit its input {shape}; accepted: BatchNorm2d on "
                             "(C, H, W), BatchNorm1d on flat features")
        expect("num_features", shape[0], "features" if len(shape) == 1 else "channels")
        return t.BatchNorm()
    if kind == "ReLU":
        return t.ReLU()
    if kind == "GELU":
        return t.GELU()
    if kind in ("MaxPool2d", "AvgPool2d"):
        if fields.get("padding", 0) != 0:
            raise UsageError(f"layers[{index}] {kind}: padding={fields['padding']!r} is not accepted; "
                             "accepted: padding 0 (or leave it out)")
        kernel = _square(index, kind, "kernel_size", fields["kernel_size"])
        stride = fields.get("stride")
        stride = None if stride is None else _square(index, kind, "stride", stride)
        cls = t.MaxPool if kind == "MaxPool2d" else t.AvgPool
        return cls(kernel=kernel, stride=stride)
    if kind == "Dropout":
        return t.Dropout(p=fields.get("p", 0.5))  # torch's default
    if kind == "Flatten":
        return t.Flatten()
    if kind == "AdaptiveAvgPool2d":
        if _square(index, kind, "output_size", fields["output_size"]) != 1:
            raise UsageError(f"layers[{index}] AdaptiveAvgPool2d: output_size={fields['output_size']!r} is not "
                             "accepted; accepted: 1 or (1, 1) (global average pooling)")
        return t.GlobalAvgPool()
    if kind == "Linear":
        features = shape[0] if len(shape) == 1 else shape[0] * shape[1] * shape[2]
        expect("in_features", features, "features")
        if fields.get("bias", True) is not True:
            raise UsageError(f"layers[{index}] Linear: bias={fields['bias']!r} is not accepted; accepted: "
                             "bias True (or leave it out)")
        return t.Linear(out_features=fields["out_features"])
    raise AssertionError(kind)  # pragma: no cover - _check_keys refused it


def _check_keys(index: int, layer: Any) -> None:
    """A UsageError for a layer that is not a dict of a known type with its keys."""
    if not isinstance(layer, Mapping):
        raise UsageError(f"layers[{index}] is {type(layer).__name__}, not a dict like "
                         "{'type': 'Conv2d', 'out_channels': 8}")
    kind = layer.get("type")
    if kind not in _ACCEPTED:
        hint = next((k for k in _ACCEPTED if isinstance(kind, str) and k.lower() == kind.lower()), None)
        also = f" (did you mean {hint!r}?)" if hint else ""
        raise UsageError(f"layers[{index}]: unknown layer type {kind!r}{also}; accepted: {_TYPES_TEXT}")
    accepted, required = _ACCEPTED[kind]
    unknown = sorted(set(layer) - {"type", *accepted})
    if unknown:
        raise UsageError(f"layers[{index}] {kind}: unknown field(s) {', '.join(unknown)}; accepted: "
                         f"{', '.join(accepted) or 'none'}")
    missing = [key for key in required if key not in layer]
    if missing:
        raise UsageError(f"layers[{index}] {kind}: missing {', '.join(missing)}; accepted: {', '.join(accepted)}")


def _step_shape(index: int, layer, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape after ``layer``, from the assembler's own shape inference."""
    from collections import Counter

    from orchestrator.planning.assembler import lower_one  # the one place shapes are inferred

    steps = lower_one(index, layer, shape, Counter(), None)  # the next layer only decides a conv's bias
    return steps[-1].shape if steps else shape


def as_seed_config(cfg: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    if isinstance(cfg, ModelConfig):
        return cfg
    if isinstance(cfg, Mapping):
        unknown = sorted(set(cfg) - {"class_name", "input_shape", "layers"})
        if unknown:
            raise UsageError(f"unknown config field(s) {unknown}; accepted: class_name, input_shape, layers")
        return ModelConfig(class_name=cfg.get("class_name", "Net"), input_shape=cfg.get("input_shape"),
                           layers=list(cfg.get("layers") or []))
    raise UsageError(f"a config is a ModelConfig or a dict with class_name, input_shape and layers, "
                     f"not {type(cfg).__name__}")


def normalize_config(cfg: ModelConfig | Mapping[str, Any]) -> NormalizedConfig:
    """The seed's config as the typed assembler takes it; UsageError for what cannot be normalised.

    Accepted layer types and fields (anything else is refused, naming the layer's index):
    ``Conv2d`` (in_channels, out_channels, kernel_size=3, stride=1, padding: a number or
    "same"; left out, it is ``kernel_size // 2``, which keeps the size for odd kernels),
    ``BatchNorm2d``/``BatchNorm1d`` (num_features), ``ReLU``, ``GELU``, ``MaxPool2d``/``AvgPool2d``
    (kernel_size, stride = kernel_size, padding 0), ``Dropout`` (p = 0.5, torch's default),
    ``Flatten``, ``AdaptiveAvgPool2d`` (output_size 1) and ``Linear`` (in_features, out_features).
    Windows may be an integer or a pair of equal integers. The last layer must be a ``Linear``:
    it is the classifier head and its ``out_features`` is the number of classes.
    """
    from orchestrator.planning.types import InvalidConfig

    seed = as_seed_config(cfg)
    name = seed.class_name
    if not isinstance(name, str) or not name.isidentifier():
        raise UsageError(f"class_name {name!r} must be a Python identifier, e.g. 'SmallCNN'")
    if seed.input_shape is None:
        raise UsageError("input_shape is needed (without the batch dimension): (C, H, W) for images, "
                         "(features,) for tables, e.g. input_shape=(1, 8, 8)")
    try:
        shape = tuple(int(d) for d in seed.input_shape)
    except (TypeError, ValueError):
        raise UsageError(f"input_shape {seed.input_shape!r} must be a tuple of positive integers") from None
    if len(shape) not in (1, 3) or any(d < 1 for d in shape):
        raise UsageError(f"input_shape {seed.input_shape!r} must be (C, H, W) for images or (features,) "
                         "for tables, with positive sizes and no batch dimension")
    layers = list(seed.layers)
    if not layers:
        raise UsageError("layers is empty; accepted: a list ending in the classifier, e.g. "
                         "[{'type': 'Flatten'}, {'type': 'Linear', 'out_features': 10}]")
    for index, layer in enumerate(layers):
        _check_keys(index, layer)
    if layers[-1]["type"] != "Linear":
        raise UsageError(f"layers[{len(layers) - 1}] is {layers[-1]['type']}, but the last layer must be the "
                         "classifier: a Linear whose out_features is the number of classes")
    num_classes = layers[-1]["out_features"]
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UsageError(f"layers[{len(layers) - 1}] Linear: out_features={num_classes!r} is the number of "
                         "classes; accepted: an integer >= 2")

    typed, shapes, current = [], [], shape
    for index, layer in enumerate(layers[:-1]):
        try:
            # built, then decoded strictly: the bounds (channels 1..1024, kernel 1..11, ...) with the index
            spec = _bounded(index, layer["type"], _typed_layer(index, layer, current))
            current = _step_shape(index, spec, current)
        except InvalidConfig as exc:
            raise UsageError(f"layers[{index}] {layer['type']}: {_strip_index(exc)}") from exc
        typed.append(spec)
        shapes.append(LayerShape(index, layer["type"], current))
    head = layers[-1]
    features = current[0] if len(current) == 1 else current[0] * current[1] * current[2]
    if "in_features" in head and head["in_features"] != features:
        raise UsageError(f"layers[{len(layers) - 1}] Linear: in_features={head['in_features']!r} does not match "
                         f"the previous layer's output {current} (features {features}); use "
                         f"in_features={features} or leave it out")
    shapes.append(LayerShape(len(layers) - 1, "Linear", (num_classes,)))
    try:
        from orchestrator.planning.assembler import analyze
        from orchestrator.planning.types import parse_model_config

        config = parse_model_config({"name": name, "layers": [_builtins(s) for s in typed]})
        analyze(config, input_shape=shape, num_classes=num_classes)  # the size limit, the whole stack
    except InvalidConfig as exc:
        raise UsageError(str(exc)) from exc
    return NormalizedConfig(config, name, shape, num_classes, tuple(shapes))


def _builtins(spec) -> dict:
    import msgspec

    return msgspec.to_builtins(spec)


def _bounded(index: int, kind: str, spec):
    """``spec`` decoded strictly (types and bounds); UsageError naming the layer otherwise."""
    import msgspec

    from orchestrator.planning.types import Layer, semantic_errors
    from orchestrator.planning.types import ModelConfig as TypedConfig

    try:
        checked = msgspec.convert(_builtins(spec), Layer)
    except msgspec.ValidationError as exc:
        raise UsageError(f"layers[{index}] {kind}: {exc} (channels and features 1..1024/8192, kernel 1..11, "
                         "stride 1..4, padding 0..5, pooling window 1..8, dropout p 0..0.9)") from exc
    errors = semantic_errors(TypedConfig(layers=(checked,)))
    if errors:
        raise UsageError(f"layers[{index}] {kind}: {_strip_index(errors[0])}")
    return checked


def _strip_index(message: object) -> str:
    """An assembler message without its own ``layers[0]`` prefix (we name the index ourselves)."""
    text = str(message)
    if text.startswith("invalid model config: "):
        text = text[len("invalid model config: "):]
    if text.startswith("layers["):
        text = text.split("]", 1)[1].lstrip(" :")
    return text


def assemble_model_code(cfg: ModelConfig | Mapping[str, Any]) -> str:
    """PyTorch source for ``cfg`` from the deterministic assembler (byte-identical for the same config)."""
    from orchestrator.planning.assembler import render
    from orchestrator.planning.types import InvalidConfig

    norm = normalize_config(cfg)
    try:
        return render(norm.config, input_shape=norm.input_shape, num_classes=norm.num_classes,
                      class_name=norm.class_name)
    except InvalidConfig as exc:  # a class name the module needs for itself (BasicBlock, torch, ...)
        raise UsageError(str(exc)) from exc


