"""Layer configs, train settings and planner messages: strict parsing and bounds."""

from __future__ import annotations

import math

import msgspec
import pytest

from orchestrator.planning.types import (
    Conv2d,
    InvalidConfig,
    Linear,
    ModelConfig,
    Outcome,
    Planner,
    Proposal,
    PruningPlanner,
    ReLU,
    Residual,
    Target,
    model_config_json_schema,
    parse_model_config,
    parse_train_spec,
    should_prune,
)
from sandbox_image.protocol import FailureKind, TrainSpec

GOOD = {"name": "tiny", "layers": [
    {"type": "conv2d", "out_channels": 8, "kernel_size": 3},
    {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "kernel": 2},
    {"type": "residual", "channels": 16, "blocks": 2},
    {"type": "globalavgpool"}, {"type": "dropout", "p": 0.2},
    {"type": "linear", "out_features": 32},
]}


@pytest.mark.parametrize("data", [GOOD, msgspec.json.encode(GOOD),
                                  msgspec.json.encode(GOOD).decode()])
def test_parse_model_config_accepts_dict_bytes_and_str(data: object) -> None:
    config = parse_model_config(data)  # type: ignore[arg-type]
    assert config.name == "tiny"
    assert config.layers[0] == Conv2d(out_channels=8, kernel_size=3)
    assert config.layers[4] == Residual(channels=16, blocks=2)
    assert parse_model_config(config) == config


@pytest.mark.parametrize(("layer", "where"), [
    ({"type": "conv2d", "out_channels": 0}, "out_channels"),
    ({"type": "conv2d", "out_channels": 8, "kernel_size": 50}, "kernel_size"),
    ({"type": "conv2d", "out_channels": 8, "stride": 0}, "stride"),
    ({"type": "linear", "out_features": 100000}, "out_features"),
    ({"type": "dropout", "p": 1.5}, "p"),
    ({"type": "maxpool", "kernel": 0}, "kernel"),
    ({"type": "residual", "channels": 8, "blocks": 99}, "blocks"),
    ({"type": "relu", "inplace": True}, "unknown field `inplace`"),
    ({"type": "transformer"}, "Invalid value 'transformer'"),
    ({"out_channels": 8}, "missing required field `type`"),
    ({"type": "linear", "out_features": "wide"}, "Expected `int`"),
])
def test_parse_model_config_rejects_out_of_bounds_with_the_path(layer: dict, where: str) -> None:
    with pytest.raises(InvalidConfig, match="invalid model config") as info:
        parse_model_config({"layers": [layer]})
    assert where in str(info.value)
    assert "$.layers[0]" in str(info.value) or "layers[0]" in str(info.value)


def test_parse_model_config_rejects_semantic_errors() -> None:
    with pytest.raises(InvalidConfig, match="must be odd"):
        parse_model_config({"layers": [{"type": "residual", "channels": 8, "kernel_size": 4}]})
    with pytest.raises(InvalidConfig, match="exceeds kernel_size // 2"):
        parse_model_config({"layers": [{"type": "conv2d", "out_channels": 8, "padding": 3}]})
    with pytest.raises(InvalidConfig, match="malformed|Expected|JSON"):
        parse_model_config(b"{not json")


def test_hand_built_structs_are_rechecked() -> None:
    with pytest.raises(InvalidConfig, match="out_channels"):
        parse_model_config(ModelConfig(layers=(Conv2d(out_channels=0),)))


def test_json_schema_is_a_tagged_union_with_bounds() -> None:
    schema = model_config_json_schema()
    defs = schema["$defs"]
    assert defs["Conv2d"]["properties"]["kernel_size"]["maximum"] == 11
    assert defs["Conv2d"]["properties"]["out_channels"]["minimum"] == 1
    assert defs["Conv2d"]["additionalProperties"] is False
    layer_items = defs["ModelConfig"]["properties"]["layers"]["items"]
    assert layer_items["discriminator"]["propertyName"] == "type"


@pytest.mark.parametrize(("data", "where"), [
    ({"lr": 10}, "$.lr"), ({"batch_size": 0}, "$.batch_size"), ({"epochs": 0}, "$.epochs"),
    ({"optimizer": "lion"}, "$.optimizer"), ({"seeds": []}, "$.seeds"),
    ({"lr": math.nan}, "$.lr"), ({"time_budget_s": math.inf}, "finite"),
    ({"lr": 1e-3, "warmup": 3}, "warmup"),
])
def test_parse_train_spec_bounds(data: dict, where: str) -> None:
    with pytest.raises(InvalidConfig, match="invalid train settings") as info:
        parse_train_spec(data)
    assert where in str(info.value)


def test_parse_train_spec_gives_a_protocol_trainspec() -> None:
    spec = parse_train_spec({"lr": 0.01, "optimizer": "sgd", "seeds": [0, 1, 2]})
    assert spec == TrainSpec(lr=0.01, optimizer="sgd", seeds=(0, 1, 2))
    assert parse_train_spec(spec) == spec


def test_proposal_needs_exactly_one_of_config_and_source() -> None:
    config = ModelConfig(layers=(Linear(out_features=8), ReLU()))
    with pytest.raises(InvalidConfig, match="exactly one"):
        Proposal()
    with pytest.raises(InvalidConfig, match="exactly one"):
        Proposal(config=config, source="class Net: pass")
    with pytest.raises(InvalidConfig, match="identifier"):
        Proposal(config=config, class_name="my net")
    assert Proposal(source="class Net: pass").config is None


def test_outcome_round_trips_through_json() -> None:
    proposal = Proposal(config=ModelConfig(layers=(ReLU(),)), ref="optuna:x:3",
                        params={"width": 32, "lr": 0.001, "norm": True, "act": "relu"})
    outcome = Outcome(candidate_id="c3", proposal=proposal, status="failed",
                      failure_kind=FailureKind.SHAPE_MISMATCH, failure_message="bad",
                      val_curve=(0.5, 0.6))
    decoded = msgspec.json.decode(msgspec.json.encode(outcome), type=Outcome)
    assert decoded == outcome
    assert decoded.proposal.params["norm"] is True


def test_target_knows_its_direction() -> None:
    acc = Target(metric="accuracy", threshold=0.9)
    assert acc.better(0.91, 0.9) and not acc.better(0.9, 0.91)
    assert acc.better(0.1, None) and not acc.better(None, 0.1)
    assert acc.reached(0.9) and not acc.reached(0.89) and not acc.reached(None)
    assert acc.worst == -math.inf
    ece = Target(metric="calibration_error", threshold=0.05, direction="minimize")
    assert ece.better(0.01, 0.02) and ece.reached(0.04) and ece.worst == math.inf
    assert not Target().reached(1.0)  # no threshold: never "reached"


class _Plain:
    def propose(self, history: object) -> Proposal | None:
        return None

    def observe(self, outcome: Outcome) -> None:
        return None


class _Pruning(_Plain):
    def report_epoch(self, candidate_id: str, epoch: int, value: float, *,
                     proposal: Proposal) -> bool:
        return epoch >= 3


def test_should_prune_only_asks_planners_that_can() -> None:
    proposal = Proposal(source="x")
    assert isinstance(_Plain(), Planner) and not isinstance(_Plain(), PruningPlanner)
    assert should_prune(_Plain(), "c1", 9, 0.1, proposal=proposal) is False
    assert should_prune(_Pruning(), "c1", 3, 0.1, proposal=proposal) is True
    assert should_prune(_Pruning(), "c1", 2, 0.1, proposal=proposal) is False


def test_a_target_takes_its_direction_from_the_metric_whatever_it_is_told() -> None:
    told = msgspec.json.decode(b'{"metric": "calibration_error", "threshold": 0.05, "direction": "maximize"}', type=Target)
    assert told.direction == "minimize" and not told.maximize and told.sign == "<="
    assert told.reached(0.04) and not told.reached(0.06)
    assert told.best([0.3, 0.1, 0.2], float) == 0.1 and told.ranked([0.3, 0.1], float) == [0.1, 0.3]
    accuracy = Target(metric="accuracy", direction="minimize")
    assert accuracy.maximize and accuracy.sign == ">=" and accuracy.best([0.3, 0.9, 0.9], float) == 0.9
    assert Target().best([], float) is None
