"""Coercing model output into a JSON schema's bounds."""

from __future__ import annotations

import math

import pytest

from orchestrator.llm.schema import coerce_to_schema, compact_schema, resolve
from orchestrator.planning.types import model_config_json_schema, parse_model_config

NUM = {"type": "object", "additionalProperties": False, "properties": {
    "n": {"type": "integer", "minimum": 1, "maximum": 10},
    "x": {"type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0},
    "opt": {"enum": ["adam", "sgd"]},
    "flag": {"type": "boolean"},
    "name": {"type": "string", "maxLength": 3},
    "maybe": {"anyOf": [{"type": "integer", "maximum": 5}, {"type": "null"}]},
    "xs": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 2},
}}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"n": 0}, {"n": 1}),
        ({"n": 99.6}, {"n": 10}),
        ({"n": "7"}, {"n": 7}),
        ({"x": 3}, {"x": math.nextafter(1.0, 0.0)}),
        ({"opt": "SGD"}, {"opt": "sgd"}),
        ({"flag": "True"}, {"flag": True}),
        ({"name": "abcdef"}, {"name": "abc"}),
        ({"maybe": None}, {"maybe": None}),
        ({"maybe": 9}, {"maybe": 5}),
        ({"xs": [-1, 2, 3]}, {"xs": [0, 2]}),
        ({"n": float("inf"), "x": "nan", "opt": "rmsprop", "flag": 3, "zzz": 1}, {}),
        ({"n": True}, {}),
    ],
)
def test_values_are_coerced_or_dropped(given: dict, expected: dict) -> None:
    value, notes = coerce_to_schema(given, NUM)
    assert value == expected
    assert bool(notes) == (given != expected)


def test_in_bounds_values_pass_unchanged_without_notes() -> None:
    given = {"n": 3, "x": 0.5, "opt": "adam", "flag": False, "name": "ab", "maybe": 2, "xs": [1]}
    assert coerce_to_schema(given, NUM) == (given, [])


def test_a_coerced_layer_config_passes_strict_validation() -> None:
    schema = compact_schema(model_config_json_schema())
    raw = {"layers": [{"type": "CONV2D", "out_channels": 5000, "padding": "1", "bias": False},
                      {"type": "attention"}, {"type": "maxpool", "kernel": 0, "stride": None},
                      {"type": "dropout", "p": 1.5}, "relu"], "name": "x y"}
    value, notes = coerce_to_schema(raw, schema)
    config = parse_model_config(value)  # would raise InvalidConfig without the coercion
    assert [type(layer).__name__ for layer in config.layers] == ["Conv2d", "MaxPool", "Dropout"]
    assert config.layers[0].out_channels == 1024 and config.layers[2].p == 0.9
    assert len(notes) == 8  # the six fixes, the bare "relu" string and the bad name


def test_compact_schema_drops_prose_but_keeps_constraints() -> None:
    full = model_config_json_schema()
    small = compact_schema(full)
    assert "description" not in str(small) and "discriminator" not in str(small)
    conv = resolve({"$ref": "#/$defs/Conv2d"}, small)
    assert conv["properties"]["out_channels"] == {"type": "integer", "minimum": 1, "maximum": 1024}
    assert "description" in str(full)  # the original is untouched
