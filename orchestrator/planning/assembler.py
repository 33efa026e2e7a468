"""Render a layer config as clean, nanoGPT-style PyTorch source.

Shapes are inferred here, in plain Python, so every ``in_channels`` and
``in_features`` fits the input and a config that cannot fit (a pool on a 1x1
map, a conv after flatten) is rejected with a message naming the layer. Nothing
is imported from torch to render. The same config, shape and class name always
give byte-identical source. A ``Residual`` stage renders as an ``nn.Sequential``
of ``BasicBlock``s, a helper class added to the module only when a config uses it.

The analysis also counts multiply-accumulates per example (``Analysis.macs``): the
planner's time estimates scale measured epoch times by it.
"""

from __future__ import annotations

import keyword
import textwrap
from collections import Counter
from dataclasses import dataclass

from orchestrator.planning.types import (
    GELU,
    AvgPool,
    BatchNorm,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool,
    InvalidConfig,
    Layer,
    Linear,
    MaxPool,
    ModelConfig,
    ReLU,
    Residual,
    parse_model_config,
)

#: Models above this size are refused by default. ResNet-18 (11.2M) fits with room for a
#: wider head; what a run can afford to train is decided by time, not by this cap (the
#: offline planner estimates each candidate's time from measured epochs).
DEFAULT_MAX_PARAMS = 50_000_000

_RESERVED_NAMES = frozenset({"BasicBlock", "torch", "nn", "F"})

Shape = tuple[int, ...]


@dataclass(frozen=True)
class _Step:
    """One line of ``forward`` (and at most one of ``__init__``) with its output shape."""

    forward: str
    shape: Shape
    init: str | None = None
    params: int = 0
    macs: int = 0  # multiply-accumulates per example


@dataclass(frozen=True)
class Analysis:
    """What the assembler infers about a config for a given input."""

    shapes: tuple[Shape, ...]  # per-example shape after each rendered line, head included
    params: int  # trainable parameters, as torch will count them
    summary: str  # "conv2d(32, k3) -> relu -> ... -> linear(10)"
    macs: int = 0  # multiply-accumulates of one forward pass per example (convs and linears)


# ----------------------------------------------------------------- shape inference


def _conv_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pool along one spatial axis."""
    return (size + 2 * padding - kernel) // stride + 1


def _need_spatial(index: int, layer: Layer, shape: Shape) -> tuple[int, int, int]:
    """The (C, H, W) of ``shape``, or a clear error for a spatial layer on flat features."""
    if len(shape) != 3:
        kind = type(layer).__name__.lower()
        raise InvalidConfig(
            f"layers[{index}] {kind} needs (C, H, W) input but gets {shape} (flat features); "
            "put conv, pooling and residual layers before flatten, linear and globalavgpool")
    c, h, w = shape
    return c, h, w


def _spatial_out(index: int, what: str, shape: Shape, kernel: int, stride: int,
                 padding: int) -> tuple[int, int]:
    """(H, W) after a window op, refusing to shrink below 1x1."""
    _, h, w = shape
    oh, ow = _conv_size(h, kernel, stride, padding), _conv_size(w, kernel, stride, padding)
    if oh < 1 or ow < 1:
        raise InvalidConfig(
            f"layers[{index}] {what} (kernel {kernel}, stride {stride}, padding {padding}) "
            f"cannot apply to a {h}x{w} map (input shape {shape}); use fewer downsampling "
            "layers, a smaller kernel or more padding for this input size")
    return oh, ow


def _conv(index: int, layer: Conv2d, shape: Shape, name: str, bias: bool) -> list[_Step]:
    c, _, _ = _need_spatial(index, layer, shape)
    pad = layer.kernel_size // 2 if layer.padding is None else layer.padding
    oh, ow = _spatial_out(index, "conv2d", shape, layer.kernel_size, layer.stride, pad)
    out = layer.out_channels
    params = c * out * layer.kernel_size ** 2 + (out if bias else 0)
    init = (f"nn.Conv2d({c}, {out}, kernel_size={layer.kernel_size}, stride={layer.stride}, "
            f"padding={pad}{'' if bias else ', bias=False'})")
    macs = c * out * layer.kernel_size ** 2 * oh * ow
    return [_Step(f"x = self.{name}(x)", (out, oh, ow), f"self.{name} = {init}", params, macs)]


def _pool(index: int, layer: MaxPool | AvgPool, shape: Shape) -> list[_Step]:
    c, _, _ = _need_spatial(index, layer, shape)
    stride = layer.kernel if layer.stride is None else layer.stride
    kind = "max" if isinstance(layer, MaxPool) else "avg"
    oh, ow = _spatial_out(index, f"{kind}pool", shape, layer.kernel, stride, 0)
    return [_Step(f"x = F.{kind}_pool2d(x, kernel_size={layer.kernel}, stride={stride})",
                  (c, oh, ow))]


def _block_cost(cin: int, cout: int, kernel: int, stride: int,
                out_hw: tuple[int, int]) -> tuple[int, int]:
    """(parameters, MACs per example) of one BasicBlock as rendered (bias-free convs, BNs)."""
    params = cin * cout * kernel ** 2 + 2 * cout + cout * cout * kernel ** 2 + 2 * cout
    macs = (cin * cout + cout * cout) * kernel ** 2
    if stride != 1 or cin != cout:  # the 1x1 projection shortcut
        params += cin * cout + 2 * cout
        macs += cin * cout
    return params, macs * out_hw[0] * out_hw[1]


def _residual(index: int, layer: Residual, shape: Shape, name: str) -> list[_Step]:
    c, _, _ = _need_spatial(index, layer, shape)
    k, out = layer.kernel_size, layer.channels
    oh, ow = _spatial_out(index, "residual", shape, k, layer.stride, k // 2)
    stride_arg = f", stride={layer.stride}" if layer.stride != 1 else ""
    blocks = [f"BasicBlock({c}, {out}, kernel_size={k}{stride_arg})"]
    blocks += [f"BasicBlock({out}, {out}, kernel_size={k})"] * (layer.blocks - 1)
    init = blocks[0] if len(blocks) == 1 else (
        "nn.Sequential(\n" + "".join(f"    {block},\n" for block in blocks) + ")")
    params, macs = _block_cost(c, out, k, layer.stride, (oh, ow))
    rest = _block_cost(out, out, k, 1, (oh, ow))
    params += (layer.blocks - 1) * rest[0]
    macs += (layer.blocks - 1) * rest[1]
    return [_Step(f"x = self.{name}(x)", (out, oh, ow), f"self.{name} = {init}", params, macs)]


def _flatten(shape: Shape) -> list[_Step]:
    if len(shape) == 1:
        return []  # already flat: nothing to render
    return [_Step("x = torch.flatten(x, 1)", (shape[0] * shape[1] * shape[2],))]


def _linear(shape: Shape, out: int, name: str) -> list[_Step]:
    steps = _flatten(shape)  # a Linear on a feature map flattens it first
    features = steps[-1].shape[0] if steps else shape[0]
    return steps + [_Step(f"x = self.{name}(x)", (out,),
                          f"self.{name} = nn.Linear({features}, {out})", features * out + out,
                          features * out)]


def _batchnorm(shape: Shape, name: str) -> list[_Step]:
    dims = "2d" if len(shape) == 3 else "1d"
    return [_Step(f"x = self.{name}(x)", shape, f"self.{name} = nn.BatchNorm{dims}({shape[0]})",
                  2 * shape[0])]


def lower_one(index: int, layer: Layer, shape: Shape, names: Counter[str],
               next_layer: Layer | None) -> list[_Step]:
    """The rendered steps for one layer spec, given the shape it receives."""
    def name(prefix: str) -> str:
        names[prefix] += 1
        return f"{prefix}{names[prefix]}"

    match layer:
        case Conv2d():
            return _conv(index, layer, shape, name("conv"), not isinstance(next_layer, BatchNorm))
        case BatchNorm():
            return _batchnorm(shape, name("bn"))
        case ReLU():
            return [_Step("x = F.relu(x)", shape)]
        case GELU():
            return [_Step("x = F.gelu(x)", shape)]
        case MaxPool() | AvgPool():
            return _pool(index, layer, shape)
        case Dropout():
            drop = name("drop")
            return [_Step(f"x = self.{drop}(x)", shape, f"self.{drop} = nn.Dropout({layer.p!r})")]
        case Flatten():
            return _flatten(shape)
        case GlobalAvgPool():
            c, _, _ = _need_spatial(index, layer, shape)
            return [_Step("x = x.mean(dim=(2, 3))", (c,))]
        case Linear():
            return _linear(shape, layer.out_features, name("fc"))
        case Residual():
            return _residual(index, layer, shape, name("stage"))
    raise InvalidConfig(f"layers[{index}]: unsupported layer {layer!r}")  # pragma: no cover


def _check_io(input_shape: tuple[int, ...], num_classes: int) -> Shape:
    """Validate the input shape and class count the config is rendered for."""
    shape = tuple(input_shape)
    if len(shape) not in (1, 3) or any(not isinstance(d, int) or d < 1 for d in shape):
        raise InvalidConfig(f"input_shape {input_shape!r} must be (features,) for tables or "
                            "(channels, height, width) for images, with positive sizes")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise InvalidConfig(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return shape


def _lower(config: ModelConfig, input_shape: tuple[int, ...],
           num_classes: int) -> tuple[ModelConfig, list[_Step]]:
    """Validate ``config`` and turn it into rendered steps, ending in the classifier head."""
    config = parse_model_config(config)  # re-checks bounds on hand-built Structs
    shape = _check_io(input_shape, num_classes)
    names: Counter[str] = Counter()
    steps: list[_Step] = []
    layers = config.layers
    for i, layer in enumerate(layers):
        following = layers[i + 1] if i + 1 < len(layers) else None
        new = lower_one(i, layer, shape, names, following)
        steps += new
        shape = new[-1].shape if new else shape
    head = _linear(shape, num_classes, "head")
    return config, steps + head


def _describe(layer: Layer) -> str:
    """A short human name for a layer spec, e.g. 'conv2d(32, k3, s2)'."""
    match layer:
        case Conv2d():
            stride = f", s{layer.stride}" if layer.stride != 1 else ""
            return f"conv2d({layer.out_channels}, k{layer.kernel_size}{stride})"
        case MaxPool() | AvgPool():
            return f"{type(layer).__name__.lower()}({layer.kernel})"
        case Dropout():
            return f"dropout({layer.p:g})"
        case Linear():
            return f"linear({layer.out_features})"
        case Residual():
            stride = f", s{layer.stride}" if layer.stride != 1 else ""
            return f"residual({layer.channels} x{layer.blocks}, k{layer.kernel_size}{stride})"
    return type(layer).__name__.lower()


def _summary(config: ModelConfig, num_classes: int) -> str:
    return " -> ".join([_describe(layer) for layer in config.layers] + [f"linear({num_classes})"])


def analyze(config: ModelConfig, *, input_shape: tuple[int, ...], num_classes: int,
            max_params: int = DEFAULT_MAX_PARAMS) -> Analysis:
    """Infer shapes and parameter count of ``config``; raise InvalidConfig if it cannot fit."""
    config, steps = _lower(config, input_shape, num_classes)
    return _analysis(config, steps, num_classes, max_params)


def _analysis(config: ModelConfig, steps: list[_Step], num_classes: int,
              max_params: int) -> Analysis:
    """Shapes, parameter count and summary of lowered steps, within the size limit."""
    params = sum(step.params for step in steps)
    if params > max_params:
        raise InvalidConfig(f"model {config.name!r} has {params:,} parameters, above the limit "
                            f"of {max_params:,}; use fewer channels or pool before linear layers")
    return Analysis(tuple(step.shape for step in steps), params, _summary(config, num_classes),
                    macs=sum(step.macs for step in steps))


# ----------------------------------------------------------------- source text

_BASIC_BLOCK = '''

class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn plus a shortcut, then relu."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1):
        super().__init__()
        padding = kernel_size // 2
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size, 1, padding, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # a 1x1 projection, so the shortcut has the body's shape
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H_out, W_out)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))
'''


def _shape_comment(shape: Shape) -> str:
    return "# (B, " + ", ".join(str(d) for d in shape) + ")"


def _header(config: ModelConfig, analysis: Analysis, input_shape: Shape, num_classes: int) -> str:
    kind = "convolutional network" if len(input_shape) == 3 else "multilayer perceptron"
    if not config.layers:
        kind = "linear classifier"
    summary = textwrap.fill(analysis.summary, width=88, initial_indent="    ",
                            subsequent_indent="    ", break_on_hyphens=False)
    return (f'"""{config.name}: a {kind} for inputs of shape {input_shape} and {num_classes} '
            f'classes.\n\nRendered from a layer config by the pytorch-researcher assembler:\n\n'
            f'{summary}\n\nParameters: {analysis.params:,}\n"""\n\n'
            "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n")


def _body(class_name: str, config: ModelConfig, steps: list[_Step], input_shape: Shape) -> str:
    inits = [textwrap.indent(step.init, " " * 8) for step in steps if step.init]
    width = max(len(step.forward) for step in steps) + 2
    forward = [f"        {step.forward.ljust(width)}{_shape_comment(step.shape)}" for step in steps]
    signature = f"(B, {', '.join(map(str, input_shape))}) -> (B, {steps[-1].shape[0]})"
    return "\n".join([
        f"\n\nclass {class_name}(nn.Module):",
        f'    """{config.name}: {signature} logits."""',
        "",
        "    def __init__(self):",
        "        super().__init__()",
        *inits,
        "",
        "    def forward(self, x):",
        f"        {_shape_comment(input_shape).replace('# ', '# x: ', 1)}",
        *forward,
        "        return x",
        "",
    ])


def render(config: ModelConfig, *, input_shape: tuple[int, ...], num_classes: int,
           class_name: str = "Net", max_params: int = DEFAULT_MAX_PARAMS) -> str:
    """PyTorch source of one nn.Module named ``class_name`` for ``config``, with a head."""
    if not class_name.isidentifier() or keyword.iskeyword(class_name) \
            or class_name in _RESERVED_NAMES:
        raise InvalidConfig(f"class_name {class_name!r} must be a Python identifier other than "
                            f"{', '.join(sorted(_RESERVED_NAMES))}")
    config, steps = _lower(config, input_shape, num_classes)
    analysis = _analysis(config, steps, num_classes, max_params)
    shape = tuple(input_shape)
    uses_blocks = any(isinstance(layer, Residual) for layer in config.layers)
    return (_header(config, analysis, shape, num_classes)
            + (_BASIC_BLOCK if uses_blocks else "")
            + _body(class_name, config, steps, shape))
