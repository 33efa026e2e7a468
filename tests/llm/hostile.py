"""Hypothesis strategies for what an unlucky or hostile LLM server sends.

Shared by the planner's property tests (``test_hostile_replies.py``) and the run's
(``test_hostile_run.py``). JSON is built as text, since ``json.dumps`` cannot write
most of what a server can: integers past 4300 digits, ``1e999``, lone surrogates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
from hypothesis import strategies as st

from tests.fakes.fake_llm_server import Reply

GOOD_SOURCE = """import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""

# ------------------------------------------------------------------ hostile pieces

#: JSON values as raw text: json.dumps cannot write most of them.
HOSTILE_SCALARS = [
    "9" * 5000, "-" + "9" * 5000, "9" * 4300, "1" + "0" * 400, "1e999", "-1e999", "1e-400",
    "NaN", "Infinity", "-Infinity", "-0", "0", "1.5", "3", "null", "true", "false",
    '""', '"\\ud800"', '"\\udfff\\ud800x"', '"a\\u0000b"', '"\\u001b[2J"', '"ADAM "', '"adamw"',
    '"' + "x" * 1_000_000 + '"', '"20"', '" nan "', '"1e999"', '"conv2d"', '"relu"',
    "[" * 10_000 + "]" * 10_000, '{"a":' * 3000 + "1" + "}" * 3000, "[]", "{}", "[1, 2, 3]",
]
#: Python sources that break ``ast.parse`` in every way it can break.
HOSTILE_SOURCES = [
    "(" * 300 + ")" * 300, "[" * 5000 + "]" * 5000, "-" * 5000 + "1", "f" + "()" * 5000,
    "lambda: " * 3000 + "1", "x = " + "9" * 5000, "1" + "+1" * 30_000, "a" + ".a" * 20_000,
    "-" * 100_000 + "1", "f" + "()" * 50_000,
    "class Net:\n    pass\x00\n", "\x00" * 100, "class Net(nn.Module):\n    x = '\ud800'\n",
    "".join(" " * i + "if 1:\n" for i in range(150)) + " " * 150 + "pass\n",
    "class " + "A" * 100_000 + ":\n    pass\n", "def f(:\n", GOOD_SOURCE, GOOD_SOURCE * 400,
    GOOD_SOURCE.replace("class Net", "class \u202eteN"), "x = 1\n", "",
]
TEXT = st.text(max_size=200)
SCALAR = st.one_of(st.sampled_from(HOSTILE_SCALARS), TEXT.map(json.dumps),
                   st.integers().map(str), st.floats().map(lambda f: json.dumps(f)))


def _obj(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"


def json_value(depth: int = 2) -> st.SearchStrategy[str]:
    """A JSON value as text: hostile scalars, and lists and objects of them."""
    if depth == 0:
        return SCALAR
    inner = json_value(depth - 1)
    return st.one_of(SCALAR, st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
                     st.lists(st.tuples(TEXT, inner), max_size=4).map(_obj))


LAYER = st.lists(st.tuples(st.sampled_from(["type", "out_channels", "kernel_size", "stride", "p",
                                            "padding", "out_features", "channels", "blocks"]),
                           st.one_of(SCALAR, st.sampled_from(['"conv2d"', '"linear"', '"residual"',
                                                              '"maxpool"', '"dropout"']))),
                 max_size=4).map(_obj)
TRAIN = st.lists(st.tuples(st.sampled_from(["epochs", "batch_size", "lr", "optimizer",
                                            "weight_decay", "seeds", "momentum"]), SCALAR),
                 max_size=5).map(_obj)
SOURCE_FIELD = st.one_of(st.sampled_from(HOSTILE_SOURCES).map(json.dumps), SCALAR)


@st.composite
def candidate_object(draw) -> str:
    """A reply object with the planner's keys, each set to something hostile or fine."""
    pairs = []
    for key, value in [("rationale", SCALAR), ("class_name", st.one_of(SCALAR, st.just('"Net"'))),
                       ("python", SOURCE_FIELD), ("train", st.one_of(TRAIN, json_value(1))),
                       ("config", st.one_of(st.lists(LAYER, max_size=4).map(
                           lambda ls: '{"layers": [' + ", ".join(ls) + "]}"), json_value(1))),
                       ("layers", st.lists(LAYER, max_size=3).map(lambda ls: "[" + ", ".join(ls) + "]")),
                       ("extra", json_value(1))]:
        if draw(st.booleans()):
            pairs.append((key, draw(value)))
    return _obj(pairs)


#: A reply both modes accept (config for "config", python for "source"), as JSON fragments.
NEARLY_GOOD = {
    "rationale": '"a small baseline"', "class_name": '"Net"', "python": json.dumps(GOOD_SOURCE),
    "config": '{"layers": [{"type": "linear", "out_features": 32}, {"type": "relu"}]}',
    "train": '{"epochs": 5, "batch_size": 32, "lr": 0.001, "optimizer": "adam"}',
}
TRAIN_KEYS = ["epochs", "batch_size", "lr", "optimizer", "weight_decay"]


@st.composite
def nearly_good_object(draw) -> str:
    """The good reply with a few fields, or a few train settings, made hostile or left out."""
    pieces = dict(NEARLY_GOOD)
    for key in draw(st.lists(st.sampled_from(sorted(pieces)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del pieces[key]
        else:
            pieces[key] = draw(SOURCE_FIELD if key == "python" else SCALAR)
    if "train" in pieces and draw(st.booleans()):
        train = json.loads(NEARLY_GOOD["train"])
        spoilt = draw(st.sets(st.sampled_from(TRAIN_KEYS), min_size=1, max_size=2))
        pieces["train"] = _obj([(k, draw(SCALAR) if k in spoilt else json.dumps(train.get(k)))
                                for k in TRAIN_KEYS])
    return _obj(list(pieces.items()))


def wrap(body: str, how: str) -> str:
    """A reply body as a model might dress it."""
    return {"plain": body, "json_fence": f"Here:\n```json\n{body}\n```\n",
            "python_fence": f"```python\n{body}\n```", "prose": f"I propose {body} - enjoy",
            "cut": body[: len(body) * 2 // 3], "twice": f"{body}\n{body}"}[how]


CONTENT = st.one_of(
    TEXT,
    st.builds(wrap, st.one_of(candidate_object(), json_value(), st.sampled_from(HOSTILE_SOURCES)),
              st.sampled_from(["plain", "json_fence", "python_fence", "prose", "cut", "twice"])),
)
#: Usable, or nearly: so that the properties also cover replies that become proposals.
NEARLY_GOOD_CONTENT = st.builds(wrap, nearly_good_object(),
                                st.sampled_from(["plain", "json_fence", "prose", "twice"]))


@dataclass(frozen=True)
class Answer:
    """What the mock server sends for one request."""

    status: int = 200
    content: str | None = None  # a completion with this content; None = ``raw`` as the body
    raw: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    def response(self) -> httpx.Response:
        """The httpx response (completion JSON written with ``json``: surrogates escaped)."""
        if self.content is None:
            return httpx.Response(self.status, content=self.raw, headers=dict(self.headers))
        body = json.dumps({"choices": [{"message": {"content": self.content},
                                        "finish_reason": "stop"}], "model": "m"})
        return httpx.Response(self.status, content=body.encode(), headers=dict(self.headers))

    def reply(self) -> Reply:
        """The same answer for the scripted fake server (which also escapes surrogates)."""
        if self.content is None:
            return Reply(status=self.status, body=self.raw, headers=self.headers)
        return Reply(self.content, status=self.status, headers=self.headers)


RAW_BODIES = st.sampled_from([
    b"", b"not json", b"{}", b'{"choices": []}', b'{"choices": [{"message": {}}]}',
    b'{"choices": [{"message": {"content": null}}]}', b'{"choices": "x"}',
    b'{"choices": [{"message": {"content": "\\ud800"}}]}', b"\xff\xfe\x00",
    b'{"usage": {"prompt_tokens": ' + b"9" * 5000 + b'}, "choices": [{"message": {"content": "{}"}}]}',
    b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b', "choices": []}',
    b'{"choices": [{"message": {"content": "' + b"y" * 300_000 + b'"}}]}',
])
ANSWER = st.one_of(
    st.builds(Answer, content=NEARLY_GOOD_CONTENT),
    st.builds(Answer, content=CONTENT),
    st.builds(Answer, content=st.none(), raw=RAW_BODIES),
    st.builds(Answer, status=st.sampled_from([400, 401, 404, 422, 429, 500, 503]), content=st.none(),
              raw=st.sampled_from([b"", b'{"error": "schema"}', b"\xff" * 3000]),
              headers=st.sampled_from([(), (("Retry-After", "nan"),), (("Retry-After", "1e999"),),
                                       (("Retry-After", "Mon, 01 Jan 0001 00:00:00 +9999"),)])),
)
