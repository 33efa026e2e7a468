"""Rendered source parses, runs, has the inferred shapes and parameter counts, and is stable.

Tests are trusted, so they exec the rendered source here; the orchestrator never does.
"""

from __future__ import annotations

import ast
import random
import re

import pytest
import torch
from torch import nn

from orchestrator.planning.assembler import analyze, render
from orchestrator.planning.offline import OfflinePlanner
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
    Outcome,
    ReLU,
    Residual,
)

SMALL_CNN = ModelConfig(name="cnn-small", layers=(
    Conv2d(out_channels=32), BatchNorm(), ReLU(), MaxPool(),
    Conv2d(out_channels=64), BatchNorm(), ReLU(), MaxPool(),
    Flatten(), Linear(out_features=128), ReLU(), Dropout(p=0.25)))
RESNET = ModelConfig(name="resnet-ish", layers=(
    Conv2d(out_channels=16), BatchNorm(), ReLU(),
    Residual(channels=32, blocks=2, stride=2), Residual(channels=32, kernel_size=5),
    AvgPool(kernel=3, stride=2), GlobalAvgPool(), Linear(out_features=64), GELU()))
MLP = ModelConfig(name="mlp", layers=(
    Linear(out_features=64), BatchNorm(), GELU(), Dropout(p=0.1), Linear(out_features=32), ReLU()))


def build(source: str, class_name: str = "Net") -> nn.Module:
    """Exec rendered source and instantiate its model (trusted test code only)."""
    namespace: dict[str, object] = {"__name__": "rendered_model"}
    exec(compile(source, "<rendered>", "exec"), namespace)  # noqa: S102 - tests are trusted
    model = namespace[class_name]()  # type: ignore[operator]
    assert isinstance(model, nn.Module)
    return model


def check_runs(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> str:
    """Render, parse, exec and run ``config``; assert output shape and parameter count."""
    source = render(config, input_shape=input_shape, num_classes=num_classes)
    ast.parse(source)
    model = build(source)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, *input_shape))
    assert tuple(out.shape) == (3, num_classes)
    predicted = analyze(config, input_shape=input_shape, num_classes=num_classes).params
    assert sum(p.numel() for p in model.parameters()) == predicted
    return source


@pytest.mark.parametrize(("config", "input_shape", "num_classes"), [
    (SMALL_CNN, (1, 8, 8), 10),
    (SMALL_CNN, (1, 28, 28), 10),
    (SMALL_CNN, (3, 32, 32), 100),
    (RESNET, (3, 32, 32), 10),
    (RESNET, (1, 9, 7), 4),
    (MLP, (30,), 2),
    (MLP, (4,), 3),
    (ModelConfig(layers=()), (64,), 10),
    (ModelConfig(layers=()), (1, 8, 8), 10),  # the head flattens by itself
    (ModelConfig(layers=(Conv2d(out_channels=4), Linear(out_features=8))), (2, 5, 5), 3),
    (ModelConfig(layers=(Conv2d(out_channels=4, kernel_size=4, stride=2, padding=0),)),
     (1, 9, 9), 2),
    (ModelConfig(layers=(Flatten(), Flatten(), BatchNorm(), Linear(out_features=5))), (2, 3, 3), 2),
])
def test_rendered_model_runs_with_predicted_shape_and_params(
        config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
    check_runs(config, input_shape, num_classes)


def test_source_is_nanogpt_style_with_shape_comments() -> None:
    source = render(SMALL_CNN, input_shape=(1, 8, 8), num_classes=10)
    assert source.startswith('"""cnn-small: a convolutional network')
    assert "import torch\nimport torch.nn as nn\n" in source
    assert source.count("(nn.Module):") == 1
    assert "self.fc1 = nn.Linear(256, 128)" in source  # 64 channels x 2 x 2 after two pools
    assert "self.head = nn.Linear(128, 10)" in source
    forward = source.split("def forward(self, x):")[1]
    code_lines = [line for line in forward.splitlines() if line.strip().startswith("x = ")]
    assert code_lines and all(re.search(r"# \(B(, \d+)+\)$", line) for line in code_lines)
    assert "x = F.max_pool2d(x, kernel_size=2, stride=2)  # (B, 32, 4, 4)" in forward
    assert "# (B, 256)" in forward


def test_residual_config_adds_one_block_class() -> None:
    source = render(RESNET, input_shape=(3, 32, 32), num_classes=10, class_name="ResNetish")
    assert "class BasicBlock(nn.Module):" in source
    assert "class ResNetish(nn.Module):" in source
    assert "BasicBlock(16, 32, kernel_size=3, stride=2)" in source
    model = build(source, "ResNetish")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def resnet(width: int, stages: int, blocks: int = 2) -> ModelConfig:
    """A ResNet as the offline planner builds it: stem, residual stages, global pool."""
    layers: list[Layer] = [Conv2d(out_channels=width), BatchNorm(), ReLU()]
    layers += [Residual(channels=width * 2 ** i, blocks=blocks, stride=1 if i == 0 else 2)
               for i in range(stages)]
    return ModelConfig(name=f"resnet-{stages}x{blocks}-{width}", layers=(*layers, GlobalAvgPool()))


RESNET18 = resnet(64, 4)  # the CIFAR ResNet-18: 64-128-256-512 channels, two blocks each


@pytest.mark.parametrize(("input_shape", "final_map"), [((3, 32, 32), (512, 4, 4)),
                                                        ((1, 28, 28), (512, 4, 4))])
def test_resnet18_scale_renders_runs_and_counts_like_resnet18(
        input_shape: tuple[int, ...], final_map: tuple[int, ...]) -> None:
    analysis = analyze(RESNET18, input_shape=input_shape, num_classes=10)
    # torchvision-style CIFAR ResNet-18 (3x3 stem, no max pool): 11,173,962 parameters
    expected = 11_173_962 - (3 - input_shape[0]) * 64 * 9
    assert analysis.params == expected
    assert final_map in analysis.shapes
    assert 0.4e9 < analysis.macs < 0.6e9  # ~0.56 GMACs on 32x32
    source = check_runs(RESNET18, input_shape, 10)
    assert source.count("class BasicBlock(nn.Module):") == 1
    assert "self.stage4 = nn.Sequential(\n            BasicBlock(256, 512, kernel_size=3, " \
           "stride=2),\n            BasicBlock(512, 512, kernel_size=3),\n        )" in source
    assert "x = self.stage4(x)" in source and "# (B, 512, 4, 4)" in source


def test_macs_count_convs_and_linears_per_example() -> None:
    config = ModelConfig(layers=(Conv2d(out_channels=4), ReLU(), MaxPool(), Flatten(),
                                 Linear(out_features=8)))
    analysis = analyze(config, input_shape=(2, 6, 6), num_classes=3)
    assert analysis.macs == 2 * 4 * 9 * 36 + (4 * 3 * 3) * 8 + 8 * 3
    block = analyze(ModelConfig(layers=(Residual(channels=8, stride=2),)), input_shape=(4, 8, 8),
                    num_classes=2)
    assert block.macs == (4 * 8 * 9 + 8 * 8 * 9 + 4 * 8) * 16 + 8 * 2 * 16  # head flattens 8x4x4


def test_same_config_gives_byte_identical_source() -> None:
    first = render(RESNET, input_shape=(3, 32, 32), num_classes=10)
    rebuilt = ModelConfig(name=RESNET.name, layers=tuple(RESNET.layers))
    assert render(rebuilt, input_shape=(3, 32, 32), num_classes=10) == first
    as_list = [3, 32, 32]
    assert render(RESNET, input_shape=as_list, num_classes=10) == first  # type: ignore[arg-type]


def test_analysis_lists_the_shape_after_each_line() -> None:
    analysis = analyze(SMALL_CNN, input_shape=(1, 28, 28), num_classes=10)
    assert analysis.shapes[0] == (32, 28, 28)
    assert (64, 7, 7) in analysis.shapes and (3136,) in analysis.shapes
    assert analysis.shapes[-1] == (10,)
    assert analysis.summary.endswith("dropout(0.25) -> linear(10)")


@pytest.mark.parametrize(("config", "input_shape", "message"), [
    (ModelConfig(layers=(MaxPool(), MaxPool(), MaxPool(), MaxPool())), (1, 8, 8),
     r"layers\[3\] maxpool .* cannot apply to a 1x1 map"),
    (ModelConfig(layers=(Conv2d(out_channels=8, kernel_size=7, padding=0),)), (1, 5, 5),
     r"layers\[0\] conv2d .* cannot apply to a 5x5 map"),
    (ModelConfig(layers=(Flatten(), Conv2d(out_channels=8))), (1, 8, 8),
     r"layers\[1\] conv2d needs \(C, H, W\) input"),
    (ModelConfig(layers=(GlobalAvgPool(), MaxPool())), (3, 8, 8),
     r"layers\[1\] maxpool needs \(C, H, W\)"),
    (ModelConfig(layers=(Residual(channels=8),)), (20,), r"layers\[0\] residual needs"),
    (ModelConfig(layers=(ReLU(),)), (8, 8), r"input_shape \(8, 8\) must be"),
    (ModelConfig(layers=(ReLU(),)), (0,), r"positive sizes"),
    (ModelConfig(layers=(Conv2d(out_channels=0),)), (1, 8, 8), r"out_channels"),
    (ModelConfig(layers=(Conv2d(out_channels=1024), Conv2d(out_channels=1024),
                         Flatten(), Linear(out_features=8192))), (3, 32, 32),
     r"parameters, above the limit"),
])
def test_configs_that_cannot_fit_are_refused_clearly(
        config: ModelConfig, input_shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        render(config, input_shape=input_shape, num_classes=10)


@pytest.mark.parametrize("class_name", ["", "my net", "class", "BasicBlock", "torch"])
def test_bad_class_names_are_refused(class_name: str) -> None:
    with pytest.raises(InvalidConfig, match="class_name"):
        render(MLP, input_shape=(4,), num_classes=3, class_name=class_name)


def test_too_few_classes_are_refused() -> None:
    with pytest.raises(InvalidConfig, match="num_classes"):
        render(MLP, input_shape=(4,), num_classes=1)


# ----------------------------------------------------------------- random configs


def random_layer(rng: random.Random, spatial: bool) -> Layer:
    """Any layer spec, spatial ones only while the activation is a map (else half the time)."""
    flat_kinds: list[Layer] = [BatchNorm(), ReLU(), GELU(), Dropout(p=rng.choice((0.0, 0.3))),
                               Linear(out_features=rng.choice((4, 16)))]
    spatial_kinds: list[Layer] = [
        Conv2d(out_channels=rng.choice((3, 8)), kernel_size=rng.choice((1, 2, 3, 5)),
               stride=rng.choice((1, 2)), padding=rng.choice((None, 0))),
        MaxPool(kernel=rng.choice((2, 3)), stride=rng.choice((None, 1))),
        AvgPool(kernel=2), Residual(channels=rng.choice((4, 8)), stride=rng.choice((1, 2))),
        Flatten(), GlobalAvgPool()]
    if spatial or rng.random() < 0.1:  # sometimes a spatial layer after flattening: must fail
        return rng.choice(spatial_kinds + flat_kinds)
    return rng.choice(flat_kinds)


def random_config(rng: random.Random, image: bool) -> ModelConfig:
    layers: list[Layer] = []
    spatial = image
    for _ in range(rng.randint(0, 7)):
        layer = random_layer(rng, spatial)
        spatial = spatial and not isinstance(layer, (Flatten, GlobalAvgPool, Linear))
        layers.append(layer)
    return ModelConfig(layers=tuple(layers), name="random")


@pytest.mark.parametrize("input_shape", [(2, 9, 9), (1, 6, 11), (3, 4, 4), (12,)])
def test_random_configs_render_and_run_or_are_refused(input_shape: tuple[int, ...]) -> None:
    rng = random.Random(hash(input_shape) % 1000)
    ran = refused = 0
    for _ in range(60):
        config = random_config(rng, image=len(input_shape) == 3)
        try:
            analyze(config, input_shape=input_shape, num_classes=5)
        except InvalidConfig as exc:
            assert re.search(r"layers\[\d+\]", str(exc)), str(exc)
            refused += 1
            continue
        check_runs(config, input_shape, 5)
        ran += 1
    assert ran >= 20  # most random stacks fit; the rest were refused with a named layer


def planner_configs(facts: PlannerFacts, n: int) -> list[ModelConfig]:
    """The first ``n`` configs the offline planner proposes for ``facts``."""
    planner = OfflinePlanner(facts, seed=3, n_startup_trials=5)
    history: list[Outcome] = []
    configs = []
    for i in range(n):
        proposal = planner.propose(history)
        assert proposal is not None and proposal.config is not None
        configs.append(proposal.config)
        outcome = Outcome(candidate_id=f"c{i}", proposal=proposal, status="passed",
                          metric="accuracy", mean=0.5 + (i % 4) / 10)
        planner.observe(outcome)
        history.append(outcome)
    return configs


@pytest.mark.parametrize("facts", [
    PlannerFacts(name="digits", input_shape=(1, 8, 8), num_classes=10, n_train=1078),
    PlannerFacts(name="cifar", input_shape=(3, 32, 32), num_classes=10, n_train=45000),
    PlannerFacts(name="odd", input_shape=(1, 5, 3), num_classes=3, n_train=300),
    PlannerFacts(name="wine", input_shape=(13,), num_classes=3, n_train=106),
], ids=lambda f: f.name)
def test_planner_configs_render_and_run(facts: PlannerFacts) -> None:
    for config in planner_configs(facts, 8):
        check_runs(config, facts.input_shape, facts.num_classes)
