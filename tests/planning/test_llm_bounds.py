"""The LLM planner gets the offline planner's recipe knobs, and never the run's own settings."""

from __future__ import annotations

import json

import pytest

from orchestrator.planning.llm import LLMAssembler, TrainBounds
from orchestrator.planning.types import PlannerFacts
from sandbox_image.protocol import TrainSpec

FASHION = PlannerFacts(name="fashion_mnist", input_shape=(1, 28, 28), num_classes=10,
                       n_train=54000)
DIGITS = PlannerFacts(name="digits", input_shape=(1, 8, 8), num_classes=10, n_train=1078)
IRIS = PlannerFacts(name="iris", input_shape=(4,), num_classes=3, n_train=90)
RUN_ONLY = {"hflip_ok", "seeds", "time_budget_s"}
KNOBS = {"schedule", "nesterov", "label_smoothing", "warmup_epochs"}


def train_props(facts: PlannerFacts, mode: str = "config") -> dict:
    assembler = LLMAssembler(facts, mode=mode)  # type: ignore[arg-type]
    return assembler.schema["properties"]["train"]["properties"]


@pytest.mark.parametrize("mode", ["config", "source"])
@pytest.mark.parametrize(("facts", "augments", "tta"), [
    (FASHION, ["none", "shift", "crop_flip", "crop_flip_erase"], True),
    (DIGITS, ["none", "shift"], False),
    (IRIS, None, False),
], ids=["fashion", "digits", "iris"])
def test_the_schema_exposes_the_recipe_knobs_the_data_allows(
        mode: str, facts: PlannerFacts, augments: list[str] | None, tta: bool) -> None:
    props = train_props(facts, mode)
    assert KNOBS <= set(props)
    assert props["schedule"]["enum"] == ["constant", "cosine", "onecycle"]
    assert props["nesterov"]["type"] == "boolean" and "sgd" in props["nesterov"]["description"]
    assert (props["label_smoothing"]["minimum"], props["label_smoothing"]["maximum"]) == (0.0, 0.3)
    assert 0 < props["warmup_epochs"]["maximum"] < props["epochs"]["minimum"]
    assert props["lr"]["maximum"] == 0.2  # SGD with OneCycle peaks there
    assert props.get("augment", {}).get("enum") == augments
    assert ("tta_flip" in props) == tta
    assert not RUN_ONLY & set(props)


def test_the_run_settings_are_never_the_llms() -> None:
    assembler = LLMAssembler(FASHION)
    reply = {"rationale": "a resnet", "config": {"layers": [
        {"type": "conv2d", "out_channels": 32}, {"type": "residual", "channels": 64, "stride": 2},
        {"type": "globalavgpool"}]},
        "train": {"epochs": 10, "batch_size": 128, "lr": 0.1, "optimizer": "sgd",
                  "nesterov": True, "schedule": "onecycle", "label_smoothing": 0.1,
                  "augment": "crop_flip", "tta_flip": True, "warmup_epochs": 0,
                  "hflip_ok": True, "seeds": [1, 2], "time_budget_s": 1e9}}
    proposal, notes = assembler.build(json.dumps(reply))
    train = proposal.train
    assert (train.optimizer, train.nesterov, train.schedule) == ("sgd", True, "onecycle")
    assert (train.label_smoothing, train.augment, train.tta_flip) == (0.1, "crop_flip", True)
    assert (train.hflip_ok, train.seeds, train.time_budget_s) == (False, (0,), 0.0)
    assert sum("dropped unknown key" in note for note in notes) == 3


def test_out_of_bounds_knobs_are_clamped_or_dropped() -> None:
    assembler = LLMAssembler(DIGITS)
    reply = {"rationale": "x", "config": {"layers": [{"type": "conv2d", "out_channels": 8}]},
             "train": {"epochs": 20, "batch_size": 64, "lr": 0.001, "optimizer": "adamw",
                       "label_smoothing": 0.9, "augment": "crop_flip", "schedule": "step",
                       "warmup_epochs": 50}}
    proposal, notes = assembler.build(json.dumps(reply))
    train = proposal.train
    assert train.label_smoothing == 0.3 and train.warmup_epochs == 5.0
    assert train.augment == "none" and train.schedule == "constant"  # dropped: the defaults
    assert any("crop_flip" in note for note in notes) and any("step" in note for note in notes)


def test_the_prompt_says_what_the_knobs_do() -> None:
    prompt = LLMAssembler(FASHION).system_prompt()
    assert "nesterov boolean (Nesterov momentum; with optimizer sgd only) = false" in prompt
    assert "augment none|shift|crop_flip|crop_flip_erase (label-preserving" in prompt
    assert "residual: channels" in prompt  # the residual stage layer, in config mode


def test_bounds_without_data_offer_no_augmentation() -> None:
    schema = TrainBounds(epochs=(1, 5)).schema(TrainSpec())
    assert "augment" not in schema["properties"] and "tta_flip" not in schema["properties"]
    assert "warmup_epochs" not in schema["properties"]  # epochs may be 1: no room to warm up
