"""Search spaces of the offline planner: a point of Optuna parameters -> layer config + recipe.

Two spaces, both sized to the dataset. Images get conv nets of two kinds: plain stages
(conv-[bn]-act, pooled while the map is at least 4x4, so 8x8 digits get at most two
pooling stages) and ResNets (a stem conv, then residual stages of basic blocks whose
first block halves the map, widths doubling up to 512: ResNet-18 at width 64, four
stages of two blocks). Tables get MLPs. The training recipe is searched with the model:
optimizer (SGD with Nesterov momentum or AdamW, each with its own lr and weight-decay
range), schedule, label smoothing, batch size and, for images, the augmentation the
dataset allows (flips only where they preserve labels; none for tables).

Epochs are not a searched parameter: they are the fidelity. Every trial is planned for
the space's ``max_epochs`` and the planner's Hyperband pruner stops weak ones early
(``min_epochs`` is its first rung); budget fitting may plan a trial shorter.

Every parameter name maps to one fixed distribution, so a study can be rebuilt from
recorded ``Proposal.params`` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from orchestrator.planning.types import (
    GELU,
    AvgPool,
    BatchNorm,
    Conv2d,
    PlannerFacts,
    Dropout,
    Flatten,
    GlobalAvgPool,
    InvalidConfig,
    Layer,
    Linear,
    MaxPool,
    ModelConfig,
    ParamValue,
    ReLU,
    Residual,
)

Params = dict[str, ParamValue]

MAX_CHANNELS = 512  # of a residual stage (ResNet-18's last stage)
_PLAIN_MAX_CHANNELS = 256
_WIDTHS = (16, 32, 64)

_RECIPE: dict[str, BaseDistribution] = {
    "optimizer": CategoricalDistribution(("adamw", "sgd")),  # sgd always with nesterov
    "lr": FloatDistribution(3e-4, 1e-2, log=True),  # adamw
    "weight_decay": FloatDistribution(1e-5, 1e-1, log=True),  # adamw (decoupled)
    "lr_sgd": FloatDistribution(1e-2, 0.4, log=True),  # peak lr of sgd (OneCycle's max_lr)
    "wd_sgd": FloatDistribution(1e-5, 2e-3, log=True),
    "schedule": CategoricalDistribution(("constant", "cosine", "onecycle")),
    "label_smoothing": FloatDistribution(0.0, 0.2),
    "dropout": FloatDistribution(0.0, 0.5),
}

_AUGMENT_TEXT = {"none": "no augmentation", "shift": "random shifts",
                 "crop_flip": "random crops + flips", "crop_flip_erase": "crops + flips + erasing"}


def augment_choices(facts: PlannerFacts, flips: bool) -> tuple[str, ...]:
    """Augmentations worth searching: none for tables; flips only where they keep labels.

    Without flips ``crop_flip`` would only shift (the same as ``shift``), so it is left out
    and ``crop_flip_erase`` means shifts + random erasing; erasing is offered from 16 px up.
    """
    if not facts.is_image:
        return ("none",)
    if flips:
        return ("none", "shift", "crop_flip", "crop_flip_erase")
    return ("none", "shift", "crop_flip_erase") if min(facts.input_shape[1:]) >= 16 \
        else ("none", "shift")


@dataclass(frozen=True)
class SearchSpace:
    """Named distributions, known-good first points and the epoch fidelity for one dataset."""

    kind: str  # "image" | "tabular"
    distributions: dict[str, BaseDistribution]
    starts: tuple[tuple[str, Params], ...]  # (label, point): enqueued as the first trials
    facts: PlannerFacts
    min_epochs: int  # shortest useful training: the pruner's first rung, the budget's floor
    max_epochs: int  # what every search trial is planned for
    flips: bool = False  # whether the loop will allow horizontal flips for this dataset

    @property
    def first(self) -> Params:
        """The first start point (a small, safe model)."""
        return self.starts[0][1]

    def sample(self, trial: optuna.Trial) -> Params:
        """Draw one point from ``trial``; conditional parameters only where active."""
        draw = _Drawer(trial, self.distributions)
        if self.kind == "image":
            _draw_image(draw)
        else:
            _draw_tabular(draw)
        _draw_recipe(draw)
        return draw.params

    def build(self, params: Params,
              epochs: int | None = None) -> tuple[ModelConfig, dict[str, Any]]:
        """The layer config and TrainSpec fields a point stands for, trained ``epochs``."""
        try:
            config = (_build_image(params, self.facts) if self.kind == "image"
                      else _build_tabular(params))
            return config, self._train_fields(params, epochs or self.max_epochs)
        except (KeyError, TypeError) as exc:
            raise InvalidConfig(f"search point {params!r} lacks or mistypes {exc}") from exc

    def cheaper(self, params: Params) -> Params | None:
        """The same point with a smaller model (half the width, else fewer blocks), or None."""
        smaller = dict(params)
        width = int(params.get("width", 0))
        widths = sorted(getattr(self.distributions["width"], "choices", ()))
        narrower = [w for w in widths if w < width]
        if narrower:
            smaller["width"] = narrower[-1]
        elif params.get("block") == "residual" and int(params["res_blocks"]) > 1:
            smaller["res_blocks"] = int(params["res_blocks"]) - 1
        elif params.get("block") == "residual" and int(params["res_stages"]) > 1:
            smaller["res_stages"] = int(params["res_stages"]) - 1
        elif params.get("block") == "plain" and int(params["stages"]) > 1:
            smaller["stages"] = int(params["stages"]) - 1
        elif self.kind == "tabular" and int(params["depth"]) > 1:
            smaller["depth"] = int(params["depth"]) - 1
        else:
            return None
        return smaller

    def describe(self, params: Params) -> str:
        """One line naming the sampled choices, for a rationale."""
        sgd = params["optimizer"] == "sgd"
        lr = params["lr_sgd" if sgd else "lr"]
        wd = params["wd_sgd" if sgd else "weight_decay"]
        recipe = (f"{'sgd-nesterov' if sgd else 'adamw'} lr {lr:.2g} wd {wd:.1g} "
                  f"{params['schedule']}, smoothing {params['label_smoothing']:.2f}, "
                  f"batch {params['batch_size']}")
        augment = str(params.get("augment", "none"))
        if self.kind == "tabular":
            model = (f"MLP {params['depth']} x {params['width']} ({params['taper']}), "
                     f"batchnorm {params['norm']}, {params['act']}")
        elif params["block"] == "residual":
            widths = "-".join(str(c) for c in _stage_widths(params))
            model = (f"ResNet: stem {params['width']}, {params['res_stages']} stage(s) of "
                     f"{params['res_blocks']} basic block(s) ({widths} channels)")
        else:
            model = (f"{params['stages']} plain stage(s) from {params['width']} channels, "
                     f"{params['convs']} conv(s) each, {params['pool']}pool, "
                     f"{params['head']} head, {params['act']}")
        if self.kind == "image":
            text = _AUGMENT_TEXT[augment]
            if augment == "crop_flip_erase" and not self.flips:
                text = "shifts + erasing"
            recipe += f", {text}" + (f" ({params['pad_mode']} pad)" if augment != "none" else "")
        return f"{model}, dropout {params['dropout']:.2f}; {recipe}"

    def _train_fields(self, params: Params, epochs: int) -> dict[str, Any]:
        sgd = params["optimizer"] == "sgd"
        schedule = str(params["schedule"])
        augment = str(params.get("augment", "none"))
        fields: dict[str, Any] = {
            "optimizer": params["optimizer"], "nesterov": sgd, "momentum": 0.9,
            "lr": float(params["lr_sgd" if sgd else "lr"]),
            "weight_decay": float(params["wd_sgd" if sgd else "weight_decay"]),
            "batch_size": int(params["batch_size"]), "epochs": int(epochs),
            "schedule": schedule, "label_smoothing": round(float(params["label_smoothing"]), 3),
            # a cosine decay starts after a short linear warm-up (OneCycle has its own)
            "warmup_epochs": round(min(3.0, 0.1 * epochs), 2) if schedule == "cosine" else 0.0,
            "augment": augment,
            "tta_flip": self.flips and augment in ("crop_flip", "crop_flip_erase"),
            "channels_last": self.kind == "image",  # faster convolutions on CPU and CUDA
        }
        if augment != "none":
            fields["pad_mode"] = params["pad_mode"]
        return fields


class _Drawer:
    """Suggest values by name from the space's fixed distributions."""

    def __init__(self, trial: optuna.Trial, distributions: dict[str, BaseDistribution]) -> None:
        self.trial, self.distributions, self.params = trial, distributions, {}

    def __call__(self, name: str) -> Any:
        dist = self.distributions[name]
        if isinstance(dist, CategoricalDistribution):
            value = self.trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            value = self.trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        else:
            assert isinstance(dist, FloatDistribution)
            value = self.trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        self.params[name] = value
        return value


def _draw_image(draw: _Drawer) -> None:
    if draw("block") == "residual":
        draw("res_stages"), draw("res_blocks"), draw("width")
    else:
        draw("stages"), draw("width"), draw("convs"), draw("norm"), draw("pool"), draw("head")
        draw("hidden"), draw("act")
    draw("dropout")
    if draw("augment") != "none":
        draw("pad_mode")


def _draw_tabular(draw: _Drawer) -> None:
    draw("depth"), draw("width"), draw("taper"), draw("norm"), draw("act"), draw("dropout")


def _draw_recipe(draw: _Drawer) -> None:
    if draw("optimizer") == "sgd":
        draw("lr_sgd"), draw("wd_sgd")
    else:
        draw("lr"), draw("weight_decay")
    draw("schedule"), draw("label_smoothing"), draw("batch_size")


# ----------------------------------------------------------------- building configs


def _activation(name: Any) -> Layer:
    return GELU() if name == "gelu" else ReLU()


def _stage_widths(params: Params) -> list[int]:
    width = int(params["width"])
    return [min(width * 2 ** stage, MAX_CHANNELS) for stage in range(int(params["res_stages"]))]


def _build_image(params: Params, facts: PlannerFacts) -> ModelConfig:
    return (_build_resnet(params) if params["block"] == "residual"
            else _build_plain(params, facts))


def _build_resnet(params: Params) -> ModelConfig:
    """Stem conv-bn-relu, residual stages (all but the first halve the map), global pool."""
    width = int(params["width"])
    layers: list[Layer] = [Conv2d(out_channels=width), BatchNorm(), ReLU()]
    for stage, channels in enumerate(_stage_widths(params)):
        layers.append(Residual(channels=channels, blocks=int(params["res_blocks"]),
                               stride=1 if stage == 0 else 2))
    layers.append(GlobalAvgPool())
    if float(params["dropout"]) > 0:
        layers.append(Dropout(p=round(float(params["dropout"]), 3)))
    name = f"resnet-{params['res_stages']}x{params['res_blocks']}-{width}"
    return ModelConfig(layers=tuple(layers), name=name)


def _build_plain(params: Params, facts: PlannerFacts) -> ModelConfig:
    """Conv stages, each pooled while the map is >= 4x4, then a head."""
    _, h, w = facts.input_shape
    width, layers = int(params["width"]), []
    pool = MaxPool if params["pool"] == "max" else AvgPool
    for stage in range(int(params["stages"])):
        channels = min(width * 2 ** stage, _PLAIN_MAX_CHANNELS)
        for _ in range(int(params["convs"])):
            layers += [Conv2d(out_channels=channels)]
            layers += [BatchNorm()] if params["norm"] else []
            layers += [_activation(params["act"])]
        if min(h, w) >= 4:  # keep at least a 2x2 map
            layers.append(pool(kernel=2))
            h, w = h // 2, w // 2
    layers.append(GlobalAvgPool() if params["head"] == "gap" else Flatten())
    if int(params["hidden"]):
        layers += [Linear(out_features=int(params["hidden"])), _activation(params["act"])]
    if float(params["dropout"]) > 0:
        layers.append(Dropout(p=round(float(params["dropout"]), 3)))
    name = f"cnn-plain-{params['stages']}x{width}"
    return ModelConfig(layers=tuple(layers), name=name)


def _build_tabular(params: Params) -> ModelConfig:
    """Linear-[norm]-act-[dropout] blocks, constant width or halving each layer."""
    layers: list[Layer] = []
    width = int(params["width"])
    p = round(float(params["dropout"]), 3)
    for i in range(int(params["depth"])):
        size = width if params["taper"] == "constant" else max(width // 2 ** i, 8)
        layers.append(Linear(out_features=size))
        layers += [BatchNorm()] if params["norm"] else []
        layers.append(_activation(params["act"]))
        layers += [Dropout(p=p)] if p > 0 else []
    name = f"mlp-{params['depth']}x{width}"
    return ModelConfig(layers=tuple(layers), name=name)


# ----------------------------------------------------------------- sizing to the data


def epoch_range(facts: PlannerFacts) -> tuple[int, int]:
    """(Shortest useful, planned) epochs: many for small data, few where an epoch is expensive."""
    if facts.is_tabular:
        return (30, 150) if facts.n_train <= 2000 else (10, 60)
    if facts.n_train <= 5000:
        return (10, 40)
    return (5, 20) if facts.n_train <= 20000 else (3, 12)


def _batch_choices(facts: PlannerFacts, options: tuple[int, ...]) -> tuple[int, ...]:
    """Batch sizes that leave at least four steps per epoch (always at least one choice)."""
    fitting = tuple(b for b in options if b * 4 <= max(facts.n_train, 1))
    return fitting or options[:1]


def _pick(choices: tuple[int, ...], wanted: int) -> int:
    """``wanted`` if offered, else the largest choice below it, else the smallest."""
    below = [c for c in choices if c <= wanted]
    return below[-1] if below else choices[0]


def max_stages(height: int, width: int) -> int:
    """Plain conv stages worth stacking: one per 2x2 pooling down to a 2x2 map, 1..4."""
    return max(1, min(4, int(math.log2(max(min(height, width), 1))) - 1))


def max_residual_stages(height: int, width: int) -> int:
    """Residual stages (the first keeps the size, later ones halve it) ending on >= 2x2, 1..4."""
    size, stages = min(height, width), 1
    while stages < 4 and (size + 1) // 2 >= 2:
        size, stages = (size + 1) // 2, stages + 1
    return stages


def image_space(facts: PlannerFacts, epochs: tuple[int, int] | None = None, *,
                flips: bool = False) -> SearchSpace:
    """The conv-net space (plain and ResNet) for (C, H, W) inputs of ``facts``."""
    _, h, w = facts.input_shape
    lo, hi = epochs or epoch_range(facts)
    plain, residual = max_stages(h, w), max_residual_stages(h, w)
    batches = _batch_choices(facts, (32, 64, 128, 256, 512))
    augments = augment_choices(facts, flips)
    # a flatten head on a big map would need a huge Linear; big images get global pooling only
    heads = ("flatten", "gap") if min(h, w) <= 32 else ("gap",)
    dists: dict[str, BaseDistribution] = {
        **_RECIPE,
        "block": CategoricalDistribution(("plain", "residual")),
        "width": CategoricalDistribution(_WIDTHS),
        "stages": IntDistribution(1, plain),
        "convs": IntDistribution(1, 2),
        "norm": CategoricalDistribution((True, False)),
        "pool": CategoricalDistribution(("max", "avg")),
        "head": CategoricalDistribution(heads),
        "hidden": CategoricalDistribution((0, 64, 128, 256)),
        "act": CategoricalDistribution(("relu", "gelu")),
        "res_stages": IntDistribution(1, residual),
        "res_blocks": IntDistribution(1, 2),
        "augment": CategoricalDistribution(augments),
        "pad_mode": CategoricalDistribution(("reflect", "zero")),
        "batch_size": CategoricalDistribution(batches),
    }
    if min(h, w) >= 16:
        # Three plain stages of two convs from 16 channels, SGD Nesterov with OneCycle: as
        # cheap per epoch as two single-conv stages from 32 (7.3M against 4.2M MACs per
        # image, but 77k parameters against 422k) and better at every epoch on Fashion-MNIST
        # (2 Xeon cores, 12 epochs, one seed: val 0.937 against 0.933). Found by this
        # planner's own search in an hour-long CPU run. Unaugmented: trained 15 epochs on
        # train + val it scored test 0.9345, and 0.9290 with crops + flips (too small a net).
        small_cnn: Params = {
            "block": "plain", "stages": min(3, plain), "width": 16, "convs": 2, "norm": True,
            "pool": "max", "head": heads[0], "hidden": 0, "act": "relu", "dropout": 0.2,
            "augment": "none", "optimizer": "sgd", "lr_sgd": 0.1, "wd_sgd": 5e-4,
            "schedule": "onecycle", "label_smoothing": 0.1, "batch_size": _pick(batches, 256),
        }
    else:  # 8x8 digits: two single-conv stages from 32, AdamW (0.991 test at 40 epochs)
        small_cnn = {
            "block": "plain", "stages": min(2, plain), "width": 32, "convs": 1, "norm": True,
            "pool": "max", "head": heads[0], "hidden": 128, "act": "relu", "dropout": 0.25,
            "augment": "none", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-4,
            "schedule": "cosine", "label_smoothing": 0.0, "batch_size": _pick(batches, 128),
        }
    # The field's standard recipe (issue 10: 0.9327 in 8 epochs on Fashion-MNIST): a 3-stage
    # ResNet, crops + flips where labels allow (tiny images lose from shifts: 8x8 digits went
    # 0.997 -> 0.972), SGD Nesterov, OneCycle to lr 0.2, label smoothing 0.1.
    standard_augment = "crop_flip" if flips else "shift" if min(h, w) >= 16 else "none"
    resnet: Params = {
        "block": "residual", "res_stages": min(3, residual), "res_blocks": 1, "width": 64,
        "dropout": 0.0, "augment": standard_augment, "optimizer": "sgd", "lr_sgd": 0.2,
        "wd_sgd": 5e-4, "schedule": "onecycle", "label_smoothing": 0.1,
        "batch_size": _pick(batches, 256),
    }
    if standard_augment != "none":
        resnet["pad_mode"] = "reflect"
    starts = (("a known-good small CNN", small_cnn),
              ("a ResNet with the field's standard recipe", resnet))
    return SearchSpace("image", dists, starts, facts, lo, hi, flips)


def tabular_space(facts: PlannerFacts, epochs: tuple[int, int] | None = None) -> SearchSpace:
    """The MLP space for (F,) inputs of ``facts`` (no augmentation)."""
    lo, hi = epochs or epoch_range(facts)
    batches = _batch_choices(facts, (16, 32, 64, 128, 256))
    dists: dict[str, BaseDistribution] = {
        **_RECIPE,
        "depth": IntDistribution(1, 4),
        "width": CategoricalDistribution((32, 64, 128, 256, 512)),
        "taper": CategoricalDistribution(("constant", "halve")),
        "norm": CategoricalDistribution((True, False)),
        "act": CategoricalDistribution(("relu", "gelu")),
        "batch_size": CategoricalDistribution(batches),
    }
    mlp: Params = {
        "depth": 2, "width": 128, "taper": "constant", "norm": True, "act": "relu",
        "dropout": 0.1, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4,
        "schedule": "cosine", "label_smoothing": 0.0, "batch_size": _pick(batches, 32),
    }
    return SearchSpace("tabular", dists, (("a known-good MLP", mlp),), facts, lo, hi)


def space_for(facts: PlannerFacts, epochs: tuple[int, int] | None = None, *,
              flips: bool = False) -> SearchSpace:
    """The space that fits the dataset's input shape (``flips``: the dataset allows them)."""
    if facts.is_image:
        return image_space(facts, epochs, flips=flips)
    if facts.is_tabular:
        return tabular_space(facts, epochs)
    raise InvalidConfig(f"dataset {facts.name!r} has input shape {facts.input_shape}; the "
                        "offline planner handles (C, H, W) images and (F,) tables")
