"""Search spaces of the offline planner: a point of Optuna parameters -> layer config.

Two spaces, both sized to the dataset: a conv net (plain or residual stages, each
followed by pooling while the map is at least 4x4, so 8x8 digits get at most two
pooling stages) for (C, H, W) inputs and an MLP for (F,) tables. Every parameter
name maps to one fixed distribution, so a study can be rebuilt from recorded
``Proposal.params`` alone.
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
    DatasetFacts,
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

_OPTIMIZER = CategoricalDistribution(("adamw", "adam", "sgd"))
_TRAIN = {
    "optimizer": _OPTIMIZER,
    "lr": FloatDistribution(1e-4, 1e-2, log=True),  # adam and adamw
    "lr_sgd": FloatDistribution(1e-3, 0.3, log=True),  # sgd with momentum wants more
    "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
    "act": CategoricalDistribution(("relu", "gelu")),
}


@dataclass(frozen=True)
class SearchSpace:
    """Named distributions plus a known-good first point for one dataset."""

    kind: str  # "image" | "tabular"
    distributions: dict[str, BaseDistribution]
    first: Params
    facts: DatasetFacts
    max_stages: int = 0

    def sample(self, trial: optuna.Trial) -> Params:
        """Draw one point from ``trial``; conditional parameters only where active."""
        draw = _Drawer(trial, self.distributions)
        if self.kind == "image":
            _draw_image(draw)
        else:
            _draw_tabular(draw)
        _draw_train(draw)
        return draw.params

    def build(self, params: Params) -> tuple[ModelConfig, dict[str, Any]]:
        """The layer config and TrainSpec fields a point stands for."""
        try:
            config = (_build_image(params, self.facts) if self.kind == "image"
                      else _build_tabular(params))
            return config, _train_fields(params)
        except (KeyError, TypeError) as exc:
            raise InvalidConfig(f"search point {params!r} lacks or mistypes {exc}") from exc

    def describe(self, params: Params) -> str:
        """One line naming the sampled choices, for a rationale."""
        lr = params.get("lr", params.get("lr_sgd"))
        train = (f"{params['optimizer']} lr {lr:.2g} wd {params['weight_decay']:.1g} "
                 f"batch {params['batch_size']} epochs {params['epochs']}")
        if self.kind == "image":
            model = (f"{params['stages']} {params['block']} stage(s) from {params['width']} "
                     f"channels, {params['convs']} conv(s) each, {params['pool']}pool, "
                     f"{params['head']} head")
        else:
            model = (f"MLP {params['depth']} x {params['width']} ({params['taper']}), "
                     f"batchnorm {params['norm']}")
        return f"{model}, {params['act']}, dropout {params['dropout']:.2f}; {train}"


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
    draw("stages"), draw("width"), draw("convs")
    if draw("block") == "plain":
        draw("norm")
    draw("pool"), draw("head"), draw("hidden"), draw("act"), draw("dropout")


def _draw_tabular(draw: _Drawer) -> None:
    draw("depth"), draw("width"), draw("taper"), draw("norm"), draw("act"), draw("dropout")


def _draw_train(draw: _Drawer) -> None:
    draw("lr_sgd" if draw("optimizer") == "sgd" else "lr")
    draw("weight_decay"), draw("batch_size"), draw("epochs")


# ----------------------------------------------------------------- building configs


def _activation(name: Any) -> Layer:
    return GELU() if name == "gelu" else ReLU()


def _build_image(params: Params, facts: DatasetFacts) -> ModelConfig:
    """Conv stages, each pooled while the map is >= 4x4, then a head."""
    _, h, w = facts.input_shape
    width, layers = int(params["width"]), []
    plain = params["block"] == "plain"
    pool = MaxPool if params["pool"] == "max" else AvgPool
    for stage in range(int(params["stages"])):
        channels = min(width * 2 ** stage, 256)
        if plain:
            for _ in range(int(params["convs"])):
                layers += [Conv2d(out_channels=channels)]
                layers += [BatchNorm()] if params["norm"] else []
                layers += [_activation(params["act"])]
        else:
            layers += [Residual(channels=channels, blocks=int(params["convs"]))]
        if min(h, w) >= 4:  # keep at least a 2x2 map
            layers.append(pool(kernel=2))
            h, w = h // 2, w // 2
    layers.append(GlobalAvgPool() if params["head"] == "gap" else Flatten())
    if int(params["hidden"]):
        layers += [Linear(out_features=int(params["hidden"])), _activation(params["act"])]
    if float(params["dropout"]) > 0:
        layers.append(Dropout(p=round(float(params["dropout"]), 3)))
    name = f"cnn-{params['block']}-{params['stages']}x{width}"
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


def _train_fields(params: Params) -> dict[str, Any]:
    sgd = params["optimizer"] == "sgd"
    return {"optimizer": params["optimizer"], "lr": float(params["lr_sgd" if sgd else "lr"]),
            "weight_decay": float(params["weight_decay"]), "batch_size": int(params["batch_size"]),
            "epochs": int(params["epochs"])}


# ----------------------------------------------------------------- sizing to the data


def epoch_range(facts: DatasetFacts) -> tuple[int, int]:
    """Epochs worth searching: many for small data, few where an epoch is expensive."""
    if facts.is_tabular:
        return (30, 150) if facts.n_train <= 2000 else (10, 60)
    if facts.n_train <= 5000:
        return (10, 40)
    return (5, 20) if facts.n_train <= 20000 else (3, 12)


def _batch_choices(facts: DatasetFacts, options: tuple[int, ...]) -> tuple[int, ...]:
    """Batch sizes that leave at least four steps per epoch (always at least one choice)."""
    fitting = tuple(b for b in options if b * 4 <= max(facts.n_train, 1))
    return fitting or options[:1]


def max_stages(height: int, width: int) -> int:
    """Conv stages worth stacking: one per halving down to a 2x2 map, 1..4."""
    return max(1, min(4, int(math.log2(max(min(height, width), 1))) - 1))


def _first_epochs(lo: int, hi: int) -> int:
    return lo + (hi - lo) // 3


def image_space(facts: DatasetFacts, epochs: tuple[int, int] | None = None) -> SearchSpace:
    """The conv-net space for (C, H, W) inputs of ``facts``."""
    _, h, w = facts.input_shape
    lo, hi = epochs or epoch_range(facts)
    stages = max_stages(h, w)
    batches = _batch_choices(facts, (32, 64, 128, 256))
    # a flatten head on a big map would need a huge Linear; big images get global pooling only
    heads = ("flatten", "gap") if min(h, w) <= 32 else ("gap",)
    dists: dict[str, BaseDistribution] = {
        **_TRAIN,
        "stages": IntDistribution(1, stages),
        "width": CategoricalDistribution((16, 32, 64)),
        "convs": IntDistribution(1, 2),
        "block": CategoricalDistribution(("plain", "residual")),
        "norm": CategoricalDistribution((True, False)),
        "pool": CategoricalDistribution(("max", "avg")),
        "head": CategoricalDistribution(heads),
        "hidden": CategoricalDistribution((0, 64, 128, 256)),
        "batch_size": CategoricalDistribution(batches),
        "epochs": IntDistribution(lo, hi),
    }
    first: Params = {
        "stages": min(2, stages), "width": 32, "convs": 1, "block": "plain", "norm": True,
        "pool": "max", "head": heads[0], "hidden": 128, "act": "relu", "dropout": 0.25,
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4,
        "batch_size": 64 if 64 in batches else batches[-1], "epochs": _first_epochs(lo, hi),
    }
    return SearchSpace("image", dists, first, facts, max_stages=stages)


def tabular_space(facts: DatasetFacts, epochs: tuple[int, int] | None = None) -> SearchSpace:
    """The MLP space for (F,) inputs of ``facts``."""
    lo, hi = epochs or epoch_range(facts)
    batches = _batch_choices(facts, (16, 32, 64, 128, 256))
    dists: dict[str, BaseDistribution] = {
        **_TRAIN,
        "depth": IntDistribution(1, 4),
        "width": CategoricalDistribution((32, 64, 128, 256, 512)),
        "taper": CategoricalDistribution(("constant", "halve")),
        "norm": CategoricalDistribution((True, False)),
        "batch_size": CategoricalDistribution(batches),
        "epochs": IntDistribution(lo, hi),
    }
    first: Params = {
        "depth": 2, "width": 128, "taper": "constant", "norm": True, "act": "relu",
        "dropout": 0.1, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4,
        "batch_size": 32 if 32 in batches else batches[0], "epochs": _first_epochs(lo, hi),
    }
    return SearchSpace("tabular", dists, first, facts)


def space_for(facts: DatasetFacts, epochs: tuple[int, int] | None = None) -> SearchSpace:
    """The space that fits the dataset's input shape."""
    if facts.is_image:
        return image_space(facts, epochs)
    if facts.is_tabular:
        return tabular_space(facts, epochs)
    raise InvalidConfig(f"dataset {facts.name!r} has input shape {facts.input_shape}; the "
                        "offline planner handles (C, H, W) images and (F,) tables")
