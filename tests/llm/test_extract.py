"""Tolerant extraction of JSON objects and Python source from model replies."""

from __future__ import annotations

import json
import random
import string

import pytest

from orchestrator.llm import LLMBadResponse, extract_json_object, extract_python
from orchestrator.llm.extract import balanced_objects, strip_trailing_commas

OBJ = {"rationale": "wider {is} better",
       "config": {"layers": [{"type": "linear", "out_features": 64}]},
       "train": {"lr": 0.001, "optimizer": "adamw"}}
SOURCE = "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n    pass\n"


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(OBJ),
        f"```json\n{json.dumps(OBJ, indent=2)}\n```",
        f"Sure! Here it is:\n```\n{json.dumps(OBJ)}\n```\nGood luck.",
        f"I propose {json.dumps(OBJ)} because it is wide.",
        f"Thinking... {{not json}} then {json.dumps(OBJ)}",
        json.dumps(OBJ, indent=1).replace("]", ",]").replace("}\n}", "},\n}"),  # trailing commas
    ],
)
def test_extracts_the_object_however_it_is_wrapped(text: str) -> None:
    assert extract_json_object(text) == OBJ


def test_raw_control_characters_inside_strings_are_accepted() -> None:
    text = '{"rationale": "line one\nline\ttwo", "python": "class A:\n\tpass"}'
    assert extract_json_object(text) == {"rationale": "line one\nline\ttwo",
                                         "python": "class A:\n\tpass"}


def test_truncated_object_is_named_as_such() -> None:
    text = json.dumps(OBJ)[:40]
    with pytest.raises(LLMBadResponse, match="cut off .*max_tokens"):
        extract_json_object(text)


@pytest.mark.parametrize("text", ["", "   ", "I cannot help with that.", "[1, 2, 3]", "{'a': 1}"])
def test_no_object_is_a_clear_error(text: str) -> None:
    with pytest.raises(LLMBadResponse, match="JSON object|empty reply"):
        extract_json_object(text)


def test_random_objects_survive_any_wrapping() -> None:
    rng = random.Random(7)
    alphabet = string.ascii_letters + " {}[],:\"\\\n\t"
    wrappers = ["{}", "```json\n{}\n```", "Answer: {} -- done", "```\n{}```"]
    for _ in range(200):
        obj = {rng.choice("abcdef") + str(i): rng.choice([
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))),
            rng.randint(-5, 5), [rng.random(), None, True], {"k": "}{"}]) for i in range(4)}
        text = rng.choice(wrappers).replace("{}", json.dumps(obj, indent=rng.choice([None, 2])), 1)
        assert extract_json_object(text) == obj


def test_balanced_objects_ignore_braces_in_strings() -> None:
    spans, open_left = balanced_objects('x {"a": "}{"} y {"b": {"c": 1}} z {"d":')
    assert spans == ['{"a": "}{"}', '{"b": {"c": 1}}'] and open_left


def test_strip_trailing_commas_leaves_strings_alone() -> None:
    assert strip_trailing_commas('{"a": ",}", "b": [1, 2, ], }') == '{"a": ",}", "b": [1, 2 ] }'


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"rationale": "x", "python": SOURCE}),
        '{"python": "' + SOURCE.replace('"', '\\"') + '"}',  # raw newlines in the string
        json.dumps({"python": f"```python\n{SOURCE}```"}),
        f"Here is the model:\n```python\n{SOURCE}```\nIt is small.",
        f"```\n{SOURCE}```",
        SOURCE,
    ],
)
def test_extract_python(text: str) -> None:
    assert extract_python(text) == SOURCE


@pytest.mark.parametrize("text", ["", '{"python": ""}', "Use a CNN.", "```python\n```"])
def test_extract_python_without_source_is_a_clear_error(text: str) -> None:
    with pytest.raises(LLMBadResponse, match="Python source"):
        extract_python(text)
