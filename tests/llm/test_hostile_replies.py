"""Property tests: whatever an LLM server answers, ``LLMPlanner.propose`` returns, never raises.

Hypothesis draws replies an unlucky or hostile server could send - random text, JSON
with integers of thousands of digits, ``1e999``, ``NaN``, nesting ten thousand deep,
wrong types and non-objects, lone surrogates and null bytes, megabyte strings, Python
nested past the parser's limits, bodies that are not completions at all, HTTP errors -
and drives the real planner, assembler, extraction and client through
``httpx.MockTransport``. Every reply must be recorded, and every unusable one followed
by a correction round or the fallback, with ``last_error`` saying why.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orchestrator.llm import LLMBadResponse, LLMCall, LLMClient, RetryPolicy, extract_json_object
from orchestrator.llm.schema import coerce_to_schema
from orchestrator.planning.llm import LLMAssembler, LLMPlanner
from orchestrator.planning.types import PlannerFacts, InvalidConfig, Outcome, Proposal, Target
from sandbox_image.protocol import FailureKind
from tests.llm.hostile import ANSWER, GOOD_SOURCE, Answer

DIGITS = PlannerFacts(name="digits", input_shape=(1, 8, 8), num_classes=10, n_train=1347,
                      n_val=225, n_test=225)
IRIS = PlannerFacts(name="iris", input_shape=(4,), num_classes=3, n_train=90, n_val=30, n_test=30)
PROFILE = dict(deadline=None, database=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CORRECTION = "That reply cannot be used:"

# ------------------------------------------------------------------ the harness


@dataclass
class Script:
    """A mock server that plays ``answers`` in a loop and counts what it was asked."""

    answers: list[Answer]
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = self.answers[len(self.requests) % len(self.answers)]
        self.requests.append(request)
        return answer.response()


class Flaky:
    """A fallback planner that raises, or has nothing to propose."""

    def __init__(self, how: str) -> None:
        self.how = how

    def propose(self, history) -> Proposal | None:
        if self.how == "raise":
            raise RuntimeError("the fallback broke too")
        return None

    def observe(self, outcome: Outcome) -> None:
        pass


def make_planner(script: Script, calls: list[LLMCall], *, facts: PlannerFacts, mode: str,
                 fallback: object) -> LLMPlanner:
    client = LLMClient("http://llm.test/v1", "m", transport=httpx.MockTransport(script),
                       recorder=calls.append, sleep=lambda s: None,
                       retry=RetryPolicy(max_retries=1, base_s=0.0))
    return LLMPlanner(client, facts, Target(threshold=0.9), "a digits classifier", mode=mode,
                      fallback=fallback, correction_rounds=1)


def user_text(request: httpx.Request) -> str:
    return json.loads(request.content)["messages"][-1]["content"]


def assert_sound(proposal: Proposal, facts: PlannerFacts) -> None:
    """A proposal the loop can store and run: encodable, parsable, in bounds."""
    msgspec.json.encode(proposal)  # no lone surrogate, nothing the registry cannot write
    assert proposal.class_name.isidentifier()
    assert len(proposal.rationale) < 2_000
    if proposal.source is not None:
        classes = [n.name for n in ast.parse(proposal.source).body if isinstance(n, ast.ClassDef)]
        assert proposal.class_name in classes
    assert 1 <= proposal.train.epochs <= 500 and 1e-6 <= proposal.train.lr <= 1.0


def check_round(planner: LLMPlanner, script: Script, calls: list[LLMCall], start: int,
                proposal: Proposal | None) -> None:
    """Every reply of one propose() is recorded, and a bad one is corrected or ends in fallback."""
    asked = script.requests[start:]
    assert len(calls) == len(script.requests), "every HTTP attempt is recorded"
    for call in calls[start:]:
        msgspec.json.encode(call)  # the registry can store it
        assert len(call.response) <= 4 * 1024 * 1024
    if proposal is None:  # only a fallback planner with nothing to propose says so
        event("None from the fallback planner")
        assert planner.last_error
        return
    origin = proposal.params.get("origin")
    event(f"{origin or 'fallback planner'} after {len(asked)} request(s)")
    if origin in ("propose", "repair"):
        assert planner.last_error == ""
        assert proposal.ref.startswith("llm:")
    else:
        assert planner.last_error, "a fallback says why"
        assert proposal.ref.startswith("llm-fallback:") or "LLM failed" in proposal.rationale
    # a 200 answer that was not used is followed by a correction, unless it was the last one
    answered = [i for i, c in enumerate(calls[start:]) if c.status == 200 and not c.error]
    used = answered[-1] if origin in ("propose", "repair") and answered else None
    for i in answered:
        if i == used:
            continue
        later = asked[i + 1:]
        assert not later or CORRECTION in user_text(later[0]) or planner.last_error


@settings(max_examples=150, **PROFILE)
@given(answers=st.lists(ANSWER, min_size=1, max_size=5),
       mode=st.sampled_from(["config", "source"]), facts=st.sampled_from([DIGITS, IRIS]),
       fallback=st.sampled_from([None, "raise", "none"]),
       failure=st.sampled_from(["boom", "\x1b[2J" * 50, "x" * 100_000, "\x00"]))
def test_propose_never_raises_and_records_every_reply(answers, mode, facts, fallback, failure):
    script, calls = Script(answers), []
    planner = make_planner(script, calls, facts=facts, mode=mode,
                           fallback=Flaky(fallback) if fallback else None)
    try:
        first = planner.propose([])
        check_round(planner, script, calls, 0, first)
        if first is None:
            return
        assert_sound(first, facts)
        # the next one is a repair of the first, with a hostile failure message
        start = len(script.requests)
        history = [Outcome(candidate_id="c001", proposal=first, status="failed",
                           failure_kind=FailureKind.FORWARD_ERROR, failure_message=failure,
                           failure_traceback=failure)]
        second = planner.propose(history)
        check_round(planner, script, calls, start, second)
        if second is not None:
            assert_sound(second, facts)
    finally:
        planner.client.close()


# ------------------------------------------------------------------ the crashes measured


def _source_reply(source: str) -> str:
    return json.dumps({"rationale": "r", "class_name": "Net", "python": source,
                       "train": {"epochs": 3, "batch_size": 32, "lr": 0.001, "optimizer": "adam"}})


MEASURED = {
    "int past 4300 digits": '{"rationale": "r", "train": {"epochs": ' + "9" * 5000 + "}}",
    "json nested past the recursion limit": '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
    # under the planner's 100,000-character cap on source, so that ast.parse sees them
    "ast nested past the recursion limit": _source_reply("f" + "()" * 5000),
    "ast parser stack overflow (MemoryError)": _source_reply("lambda: " * 3000 + "1"),
    "null bytes in source": _source_reply("class Net:\n    pass\x00\n"),
    "integer literal past 4300 digits": _source_reply("class Net:\n    x = " + "9" * 5000 + "\n"),
}


@pytest.mark.parametrize("reply", MEASURED.values(), ids=MEASURED.keys())
def test_each_measured_crash_is_a_bad_response(reply: str) -> None:
    assembler = LLMAssembler(DIGITS, mode="source")
    with pytest.raises((LLMBadResponse, InvalidConfig)):
        assembler.build(reply)


@pytest.mark.parametrize("reply", MEASURED.values(), ids=MEASURED.keys())
def test_each_measured_crash_costs_one_correction_then_a_fallback(reply: str) -> None:
    script, calls = Script([Answer(content=reply)]), []
    planner = make_planner(script, calls, facts=DIGITS, mode="source", fallback=None)
    with planner.client:
        proposal = planner.propose([])
    assert proposal is not None and proposal.params["origin"] == "fallback"
    assert len(script.requests) == 2 and CORRECTION in user_text(script.requests[1])
    assert "no usable candidate after 2 replies" in planner.last_error
    assert [c.status for c in calls] == [200, 200]


def test_a_lone_surrogate_in_source_is_replaced_not_a_crash() -> None:
    proposal, _ = LLMAssembler(DIGITS, mode="source").build(
        _source_reply(GOOD_SOURCE.replace("(64, 10)", "(64, 10)  # \ud800")))
    assert proposal.source is not None and "# ?" in proposal.source
    assert_sound(proposal, DIGITS)


def test_a_huge_integer_is_bounded_like_any_other_number() -> None:
    obj = extract_json_object('{"epochs": ' + "9" * 5000 + ', "batch_size": ' + "9" * 400
                              + ', "lr": -' + "9" * 300 + "}")
    schema = LLMAssembler(DIGITS).schema["properties"]["train"]
    fixed, notes = coerce_to_schema(obj, schema)
    # past any float: dropped like 1e999 (the default stands in); within a float: clamped
    assert "epochs" not in fixed and "batch_size" not in fixed and fixed["lr"] == 1e-5
    assert len(notes) == 3 and all(len(note) < 200 for note in notes)


def test_strings_are_made_valid_utf8_and_notes_stay_short() -> None:
    obj = extract_json_object('{"a": "\\ud800", "\\udfff": ["\\ud83d"]}')
    assert obj == {"a": "?", "?": ["?"]}
    schema = LLMAssembler(DIGITS).schema
    _, notes = coerce_to_schema({"train": {"optimizer": "x" * 1_000_000}, "y" * 10_000: 1}, schema)
    assert notes and all(len(note) < 300 for note in notes)


def test_an_unexpected_error_handling_a_reply_ends_in_the_fallback(monkeypatch) -> None:
    script, calls = Script([Answer(content="{}")]), []
    planner = make_planner(script, calls, facts=DIGITS, mode="config", fallback=None)

    def broken(text: str) -> None:
        raise KeyError("a bug of ours")

    monkeypatch.setattr(planner.assembler, "build", broken)
    with planner.client:
        proposal = planner.propose([])
    assert proposal is not None and proposal.params["origin"] == "fallback"
    assert planner.last_error.startswith("unexpected KeyError")
    assert len(calls) == 1


def test_keyboard_interrupt_still_goes_through(monkeypatch) -> None:
    script, calls = Script([Answer(content="{}")]), []
    planner = make_planner(script, calls, facts=DIGITS, mode="config", fallback=None)

    def interrupted(text: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(planner.assembler, "build", interrupted)
    with planner.client, pytest.raises(KeyboardInterrupt):
        planner.propose([])
