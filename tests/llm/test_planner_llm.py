"""LLMPlanner and LLMAssembler against the scripted fake server (real sockets)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator, Sequence

import pytest

from orchestrator.llm import FormatMode, LLMClient, RetryPolicy
from orchestrator.planning.llm import LLMAssembler, LLMPlanner, TrainBounds, default_config
from orchestrator.planning.types import (
    Conv2d,
    PlannerFacts,
    Linear,
    Outcome,
    Planner,
    Proposal,
    Target,
)
from sandbox_image.protocol import FailureKind, TrainSpec
from tests.fakes.fake_llm_server import FakeLLMServer, Reply

DIGITS = PlannerFacts(name="digits", input_shape=(1, 8, 8), num_classes=10, n_train=1347,
                      n_val=225, n_test=225)
IRIS = PlannerFacts(name="iris", input_shape=(4,), num_classes=3, n_train=90, n_val=30, n_test=30)
TARGET = Target(metric="accuracy", threshold=0.98)
GOAL = "train a CNN on digits to 98% accuracy"
GOOD = {
    "rationale": "two conv stages then global pooling",
    "config": {"layers": [{"type": "conv2d", "out_channels": 16}, {"type": "relu"},
                          {"type": "maxpool"}, {"type": "conv2d", "out_channels": 32},
                          {"type": "relu"}, {"type": "globalavgpool"}]},
    "train": {"epochs": 12, "batch_size": 32, "lr": 0.002, "optimizer": "adam"},
}
BAD_SHAPE_SOURCE = """import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 7)  # wrong number of classes

    def forward(self, x):
        return self.fc(x.flatten(1))
"""
FIXED_SOURCE = BAD_SHAPE_SOURCE.replace("nn.Linear(64, 7)  # wrong number of classes",
                                        "nn.Linear(64, 10)")
TRAIN = {"epochs": 15, "batch_size": 64, "lr": 0.001, "optimizer": "adamw"}


def source_reply(source: str, class_name: str = "Net") -> dict:
    return {"rationale": "a linear model", "class_name": class_name, "python": source,
            "train": TRAIN}


_CLIENTS: list[LLMClient] = []


@pytest.fixture
def slept() -> Iterator[list[float]]:
    yield []
    while _CLIENTS:  # close what planner_for opened, before the server goes
        _CLIENTS.pop().close()


def planner_for(srv: FakeLLMServer, slept: list[float], facts: PlannerFacts = DIGITS,
                timeout: float = 5.0, **kwargs) -> LLMPlanner:
    client = LLMClient(srv.base_url, "fake-model", timeout=timeout, sleep=slept.append,
                       retry=RetryPolicy(max_retries=kwargs.pop("max_retries", 2), base_s=0.01))
    _CLIENTS.append(client)
    return LLMPlanner(client, facts, TARGET, GOAL, **kwargs)


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


def user_prompt(srv: FakeLLMServer, index: int = -1) -> str:
    return srv.chat_requests()[index].body["messages"][1]["content"]


def failed(cid: str, proposal: Proposal, kind: FailureKind, message: str) -> Outcome:
    return Outcome(candidate_id=cid, proposal=proposal, status="failed", failure_kind=kind,
                   failure_message=message)


@pytest.mark.parametrize("reply", [Reply.fenced(GOOD), Reply.prose(GOOD), Reply.json(GOOD)])
def test_proposal_from_fenced_prose_or_plain_json(server: FakeLLMServer, slept: list[float],
                                                  reply: Reply) -> None:
    server.add(reply)
    proposal = planner_for(server, slept).propose([])
    assert proposal is not None and proposal.config is not None
    assert proposal.config.layers[0] == Conv2d(out_channels=16)
    assert (proposal.train.epochs, proposal.train.batch_size, proposal.train.optimizer) == (
        12, 32, "adam")
    assert proposal.params["origin"] == "propose" and proposal.parent is None
    assert proposal.rationale.startswith("two conv stages")
    system = server.chat_requests()[0].body["messages"][0]["content"]
    assert "conv2d: out_channels 8..1024" in system and "10 classes" in system
    prompt = user_prompt(server)
    assert GOAL in prompt and "digits" in prompt and "accuracy >= 0.98" in prompt


def test_truncated_reply_gets_a_correction_round(server: FakeLLMServer, slept: list[float]) -> None:
    server.add(Reply.truncated(GOOD), Reply.fenced(GOOD))
    proposal = planner_for(server, slept).propose([])
    assert proposal is not None and proposal.params["origin"] == "propose"
    follow_up = server.chat_requests()[1].body["messages"]
    assert [m["role"] for m in follow_up] == ["system", "user", "assistant", "user"]
    assert "cut off" in follow_up[-1]["content"]


def test_nonsense_values_are_bounded_and_noted(server: FakeLLMServer, slept: list[float]) -> None:
    nonsense = {
        "rationale": "go big",
        "config": {"layers": [{"type": "Conv2d", "out_channels": 0, "kernel_size": "3"},
                              {"type": "lstm", "hidden": 5}, {"type": "relu", "inplace": True},
                              {"type": "dropout", "p": 5}, {"type": "linear", "out_features": -3}]},
        "train": {"epochs": 1000, "batch_size": 0, "lr": 10, "optimizer": "ADAM",
                  "weight_decay": "nan", "seeds": [1, 2, 3]},
        "extra": "ignored",
    }
    server.add(Reply.json(nonsense))
    proposal = planner_for(server, slept).propose([])
    assert proposal is not None and proposal.params["origin"] == "propose"
    layers = proposal.config.layers
    assert layers[0] == Conv2d(out_channels=8, kernel_size=3)
    assert layers[2].p == 0.9 and layers[3] == Linear(out_features=8)
    train = proposal.train
    assert (train.epochs, train.batch_size, train.lr, train.optimizer) == (40, 8, 0.2, "adam")  # lr 10 -> the cap
    assert train.seeds == TrainSpec().seeds and train.weight_decay == 0.0  # not the LLM's
    assert proposal.params["bounded"] >= 8
    assert "bounded:" in proposal.rationale and "unknown type 'lstm'" in proposal.rationale


def test_config_that_cannot_fit_is_sent_back_then_falls_back(server: FakeLLMServer,
                                                              slept: list[float]) -> None:
    too_deep = {**GOOD, "config": {"layers": [{"type": "maxpool"}] * 5}}
    server.add(Reply.json(too_deep), Reply.json(too_deep))
    planner = planner_for(server, slept)
    proposal = planner.propose([])
    assert "maxpool" in server.chat_requests()[1].body["messages"][-1]["content"]
    assert proposal is not None and proposal.params["origin"] == "fallback"
    assert proposal.config == default_config(DIGITS, 0)
    assert "no usable candidate after 2 replies" in planner.last_error


def test_429_with_retry_after_then_success(server: FakeLLMServer, slept: list[float]) -> None:
    server.add(Reply.error(429, retry_after="0.2"), Reply.json(GOOD))
    proposal = planner_for(server, slept).propose([])
    assert proposal is not None and proposal.params["origin"] == "propose"
    assert slept == [0.2] and proposal.params["llm_attempts"] == 2


def test_persistent_500_costs_a_candidate_not_the_run(server: FakeLLMServer,
                                                      slept: list[float]) -> None:
    planner = planner_for(server, slept)  # the fake answers 500 once its script is empty
    first, second = planner.propose([]), planner.propose([])
    assert first is not None and first.params["origin"] == "fallback"
    assert "500" in str(first.params["llm_error"]) and "LLMUnavailable" in planner.last_error
    assert first.config != second.config  # fallbacks vary instead of repeating one model
    assert first.ref != second.ref


def test_slow_reply_times_out_into_a_fallback(server: FakeLLMServer, slept: list[float]) -> None:
    server.add(Reply.slow(json.dumps(GOOD), delay_s=5.0))
    planner = planner_for(server, slept, timeout=0.3, max_retries=0)
    proposal = planner.propose([])
    assert proposal is not None and proposal.params["origin"] == "fallback"
    assert planner.last_error.startswith("LLMTimeout")


def test_llm_down_falls_back_to_the_fallback_planner(slept: list[float]) -> None:
    class Stub:
        observed: list[Outcome] = []

        def propose(self, history: Sequence[Outcome]) -> Proposal | None:
            return Proposal(config=default_config(DIGITS, 3), ref="stub:1", rationale="stub")

        def observe(self, outcome: Outcome) -> None:
            self.observed.append(outcome)

        def take_notices(self) -> list[str]:
            return ["a note of the fallback"]

        def stop_reason(self) -> str:
            return "the fallback's reason to stop"

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = LLMClient(f"http://127.0.0.1:{port}/v1", "m", sleep=slept.append, max_retries=0)
    stub = Stub()
    planner = LLMPlanner(client, DIGITS, TARGET, GOAL, fallback=stub)
    proposal = planner.propose([])
    assert proposal is not None and proposal.ref == "stub:1"
    assert proposal.rationale.startswith("LLM failed (LLMUnavailable: cannot connect")
    outcome = Outcome(candidate_id="c1", proposal=proposal, status="passed", mean=0.9)
    planner.observe(outcome)
    assert stub.observed == [outcome]
    assert planner.take_notices() == ["a note of the fallback"]  # the loop logs the fallback's notes
    assert LLMPlanner(client, DIGITS, TARGET, GOAL).take_notices() == []  # no fallback, nothing to say
    assert planner.stop_reason() == "the fallback's reason to stop"  # the run's summary says why it ended
    assert LLMPlanner(client, DIGITS, TARGET, GOAL).stop_reason() == ""
    client.close()


def test_source_mode_repair_flow_within_budget(server: FakeLLMServer, slept: list[float]) -> None:
    server.add(Reply.fenced(source_reply(BAD_SHAPE_SOURCE)),
               Reply.json(source_reply(FIXED_SOURCE)), Reply.json(source_reply(FIXED_SOURCE)))
    planner = planner_for(server, slept, mode="source", repair_budget=1)
    first = planner.propose([])
    assert first is not None and first.source == BAD_SHAPE_SOURCE and first.class_name == "Net"
    message = "model output has shape (2, 7); expected (2, 10)"
    history = [failed("c1", first, FailureKind.SHAPE_MISMATCH, message)]
    repair = planner.propose(history)
    prompt = user_prompt(server)
    assert "c1 FAILED with shape_mismatch" in prompt and message in prompt
    assert "nn.Linear(64, 7)" in prompt  # the failing source goes back to the model
    assert repair is not None and repair.parent == "c1" and repair.params["origin"] == "repair"
    assert repair.source == FIXED_SOURCE
    history.append(failed("c2", repair, FailureKind.TRAINING_ERROR, "loss is nan"))
    fresh = planner.propose(history)  # c2 is one repair deep: budget spent, so a new candidate
    assert fresh is not None and fresh.parent is None and fresh.params["origin"] == "propose"
    assert "Tried so far (2 of 2)" in user_prompt(server) and "loss is nan" in user_prompt(server)


def test_failures_of_the_sandbox_are_not_sent_for_repair(server: FakeLLMServer,
                                                         slept: list[float]) -> None:
    server.add(Reply.json(GOOD))
    planner = planner_for(server, slept)
    proposal = Proposal(config=default_config(DIGITS), ref="x")
    history = [failed("c1", proposal, FailureKind.SANDBOX_UNAVAILABLE, "no docker")]
    result = planner.propose(history)
    assert result is not None and result.parent is None and "FAILED" in user_prompt(server)


def test_wrong_class_name_is_corrected_from_the_source(server: FakeLLMServer,
                                                       slept: list[float]) -> None:
    server.add(Reply.json(source_reply(FIXED_SOURCE, class_name="Model")))
    proposal = planner_for(server, slept, mode="source").propose([])
    assert proposal is not None and proposal.class_name == "Net"
    assert "class_name 'Model' is not defined; using 'Net'" in proposal.rationale


def test_unparsable_source_gets_a_correction_round(server: FakeLLMServer,
                                                   slept: list[float]) -> None:
    broken = FIXED_SOURCE.replace("def forward(self, x):", "def forward(self, x)")
    server.add(Reply.json(source_reply(broken)), Reply.json(source_reply(FIXED_SOURCE)))
    proposal = planner_for(server, slept, mode="source").propose([])
    assert proposal is not None and proposal.source == FIXED_SOURCE
    assert "does not parse: line 10" in server.chat_requests()[1].body["messages"][-1]["content"]


def test_history_with_metrics_and_cis_reaches_the_prompt(server: FakeLLMServer,
                                                         slept: list[float]) -> None:
    server.add(Reply.json(GOOD))
    base = Proposal(config=default_config(DIGITS), ref="a")
    history = [
        Outcome(candidate_id="c1", proposal=base, status="passed", metric="accuracy",
                mean=0.9711, ci95=(0.962, 0.980), params=12345, flops=2_660_864),
        failed("c2", base, FailureKind.OUT_OF_MEMORY, "Traceback...\nMemoryError: too big"),
    ]
    planner_for(server, slept, repair_budget=0).propose(history)
    prompt = user_prompt(server)
    assert "c1: selection accuracy 0.9711 [0.9620, 0.9800], 12,345 params, 2.66 MFLOPs per example;" in prompt
    assert "c2: FAILED out_of_memory: MemoryError: too big" in prompt
    assert "Best so far: c1 with accuracy 0.9711" in prompt


def test_negotiated_format_carries_the_planner_schema() -> None:
    with FakeLLMServer([Reply.json(GOOD)], reject_formats={"json_schema"}) as srv:
        planner = planner_for(srv, [])
        assert planner.propose([]) is not None
        planner.client.close()
        body = srv.chat_requests()[-1].body
    assert body["response_format"] == {"type": "json_object", "schema": planner.assembler.schema}
    assert planner.client.response_format is FormatMode.JSON_OBJECT
    assert isinstance(planner, Planner)


def test_tabular_schema_offers_no_spatial_layers() -> None:
    schema = LLMAssembler(IRIS).schema
    assert set(schema["$defs"]) == {"ModelConfig", "BatchNorm", "ReLU", "GELU", "Dropout", "Linear"}
    assert schema["properties"]["train"]["properties"]["epochs"]["minimum"] == 30


def test_assembler_rejects_a_conv_on_tabular_data() -> None:
    assembler = LLMAssembler(IRIS, bounds=TrainBounds(epochs=(1, 5)))
    reply = json.dumps({**GOOD, "config": {"layers": [{"type": "conv2d", "out_channels": 8}]}})
    with pytest.raises(Exception, match="no layers"):
        assembler.build(reply)


def test_refs_continue_after_a_resume(server: FakeLLMServer, slept: list[float]) -> None:
    server.add(Reply.json(GOOD))
    earlier = Proposal(config=default_config(DIGITS), ref="llm:7")
    history = [Outcome(candidate_id="c7", proposal=earlier, status="passed", mean=0.5)]
    proposal = planner_for(server, slept).propose(history)
    assert proposal is not None and proposal.ref == "llm:8"


def _ran(cid: str, proposal: Proposal, mean: float, seconds: float) -> Outcome:
    """A passed candidate as the loop records it: the run's 3 seeds, every epoch on its curve."""
    from msgspec import structs

    ran = structs.replace(proposal, train=structs.replace(proposal.train, seeds=(0, 1, 2)))
    curve = tuple(mean - 0.2 / e for e in range(1, ran.train.epochs + 1))
    return Outcome(candidate_id=cid, proposal=ran, status="passed", metric="accuracy", mean=mean,
                   val_curve=curve, seconds=seconds)


@pytest.mark.parametrize("mode", ["config", "source"])
def test_with_a_time_budget_the_run_ends_with_a_final_training_of_the_best_design(
        server: FakeLLMServer, slept: list[float], mode: str) -> None:
    from orchestrator.planning.offline import OfflinePlanner
    from orchestrator.planning.types import final_training_of

    reply = Reply.json(GOOD) if mode == "config" else Reply.json(source_reply(FIXED_SOURCE))
    server.add(reply, reply, reply, reply)
    planner = planner_for(server, slept, mode=mode, fallback=OfflinePlanner(DIGITS, TARGET))
    planner.set_budget(1000.0)  # the run's budget, as the loop first says it
    first = planner.propose([])
    assert first is not None and first.ref == "llm:1"
    history = [_ran("c1", first, 0.95, 60.0)]
    planner.set_budget(900.0)
    second = planner.propose(history)
    assert second is not None and second.ref == "llm:2"  # room for more search: the LLM's turn
    history.append(_ran("c2", second, 0.97, 60.0))
    asked = len(server.chat_requests())
    planner.set_budget(460.0)  # no other candidate fits beside a final training of 40% of the run
    final = planner.propose(history)
    assert final is not None and len(server.chat_requests()) == asked  # the LLM was not asked for it
    assert final_training_of(final) == "c2" and final.parent == "c2" and final.ref.endswith(":final")
    assert final.train.fit_val and final.train.epochs > second.train.epochs
    # 40% of the run (estimates padded by 1.2) for 3 seeds at c2's pace (60 s), on train + val
    per_epoch = 60.0 / (second.train.epochs * 3) * (DIGITS.n_train + DIGITS.n_val) / DIGITS.n_train
    assert final.train.epochs == int(0.4 * 1000.0 / 1.2 / (3 * per_epoch))
    assert (final.config, final.source) == (second.config, second.source)  # the same design
    assert "final training of c2" in final.rationale
    history.append(_ran("c3", final, 0.975, 250.0))
    planner.observe(history[-1])
    planner.set_budget(100.0)
    after = planner.propose(history)  # once only: what is left goes back to the LLM
    assert after is not None and final_training_of(after) is None and after.ref == "llm:4"
    prompt = user_prompt(server)
    assert "c3 (final training of c2 on train + val): selection accuracy 0.9750" in prompt
    # less left than the quickest design measured needs for the fewest epochs (10, x 3 seeds, padded
    # by 1.2): the run ends, the LLM not asked, rather than start a candidate that overruns it
    asked = len(server.chat_requests())
    planner.set_budget(40.0)
    assert planner.propose(history) is None and len(server.chat_requests()) == asked
    why = re.fullmatch(r"time budget nearly spent: the 40 s left fit no further candidate "
                       r"\(the quickest design measured needs about (\d+) s for 10 epochs\)", planner.stop_reason())
    assert why is not None and int(why[1]) > 40
    assert planner.last_error == ""


def test_the_last_of_max_candidates_is_still_the_llms(server: FakeLLMServer, slept: list[float]) -> None:
    from orchestrator.planning.offline import OfflinePlanner
    from orchestrator.planning.types import final_training_of

    server.add(Reply.json(GOOD), Reply.json(GOOD))
    planner = planner_for(server, slept, fallback=OfflinePlanner(DIGITS, TARGET))
    planner.set_budget(3600.0, candidates_left=2)
    first = planner.propose([])
    assert first is not None
    planner.set_budget(3500.0, candidates_left=1)
    last = planner.propose([_ran("c1", first, 0.95, 60.0)])
    assert last is not None and final_training_of(last) is None and last.ref == "llm:2"


def test_a_fallback_whose_final_check_fails_leaves_the_turn_to_the_llm(server: FakeLLMServer,
                                                                        slept: list[float]) -> None:
    class Broken:
        def final_if_due(self, history):
            raise RuntimeError("arithmetic gone wrong")

    server.add(Reply.json(GOOD))
    proposal = planner_for(server, slept, fallback=Broken()).propose([])
    assert proposal is not None and proposal.ref == "llm:1" and len(server.chat_requests()) == 1


def test_the_llms_candidates_leave_the_final_training_its_time(server: FakeLLMServer, slept: list[float]) -> None:
    """With a time budget, an LLM's config is planned for the epochs that fit what one candidate may
    now train (the time left less the final training's reserve) and stops at that limit; the prompt
    says the time left and what each candidate took."""
    from orchestrator.planning.offline import OfflinePlanner

    long_train = {**GOOD, "train": {**GOOD["train"], "epochs": 40}}
    server.add(Reply.json(long_train), Reply.json(long_train))
    fallback = OfflinePlanner(DIGITS, TARGET)
    planner = planner_for(server, slept, fallback=fallback)
    planner.set_budget(1000.0)
    first = planner.propose([])
    assert first is not None and first.train.epochs == 40  # nothing timed yet: only a deadline
    assert first.train.time_budget_s == 400.0 and "may train 400 s at most of the 1000 s left" in first.rationale
    history = [_ran("c1", first, 0.95, 360.0)]  # 3 s per epoch and seed
    planner.set_budget(900.0)
    second = planner.propose(history)
    assert second is not None and second.ref == "llm:2"  # not yet the final
    limit = fallback.candidate_limit()
    assert limit is not None and 0 < second.train.time_budget_s == limit < 900.0 / 2.5
    assert 1 <= second.train.epochs < 40 and f"instead of 40 to fit the {limit:.0f} s" in second.rationale
    assert 1.2 * 3 * second.train.epochs * 3.0 <= limit + 1e-6  # its padded estimate fits the limit
    prompt = user_prompt(server)
    assert f"Time: about 900 s of the run are left; a candidate may train {limit:.0f} s at most" in prompt
    assert "trained 40 epochs in 360 s" in prompt


def test_an_llms_source_gets_the_limit_but_keeps_its_epochs(server: FakeLLMServer, slept: list[float]) -> None:
    from orchestrator.planning.offline import OfflinePlanner

    server.add(Reply.json(source_reply(FIXED_SOURCE)))
    planner = planner_for(server, slept, mode="source", fallback=OfflinePlanner(DIGITS, TARGET))
    planner.set_budget(500.0)
    proposal = planner.propose([])
    assert proposal is not None and proposal.train.epochs == TRAIN["epochs"]
    assert proposal.train.time_budget_s == 200.0


def test_without_a_time_budget_the_llms_candidates_are_unchanged(server: FakeLLMServer, slept: list[float]) -> None:
    from orchestrator.planning.offline import OfflinePlanner

    server.add(Reply.json(GOOD))
    planner = planner_for(server, slept, fallback=OfflinePlanner(DIGITS, TARGET))
    planner.set_budget(None)
    proposal = planner.propose([])
    assert proposal is not None and proposal.train.epochs == 12 and proposal.train.time_budget_s == 0.0
    assert "Time:" not in user_prompt(server) and "at most" not in proposal.rationale

