"""Property test: a whole run whose LLM answers anything finishes and records every candidate.

The real ``start_run`` - registry, ``make_planner``'s ``LLMPlanner`` in source mode with
the offline fallback, the research loop, the reports - against the scripted fake LLM
server (real sockets) playing Hypothesis' hostile answers, and a fake sandbox
(``tests/fakes/scripted.py``: a thread speaking the protocol, no Docker) that fails
every job with a repairable ``forward_error``, so that repair prompts are exercised too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orchestrator import research
from orchestrator.planning.types import Target
from orchestrator.registry import LLMConfig, Registry, RunSettings
from orchestrator.research import Secrets, start_run
from orchestrator.sandbox.config import SandboxConfig
from sandbox_image.protocol import Failure, FailureKind, Stage
from tests.fakes.fake_llm_server import FakeLLMServer, Reply
from tests.fakes.scripted import ScriptedBackend
from tests.llm.hostile import CONTENT, GOOD_SOURCE, NEARLY_GOOD_CONTENT, RAW_BODIES, Answer

CONFIG = SandboxConfig(timeout_s=30, cpus=1)
CANDIDATES = 3
#: Answers that never make the client sleep: 5xx and 429 would be retried with real backoff.
RUN_ANSWER = st.one_of(
    st.builds(Answer, content=NEARLY_GOOD_CONTENT),
    st.builds(Answer, content=CONTENT),
    st.builds(Answer, content=st.none(), raw=RAW_BODIES),
    st.builds(Answer, status=st.sampled_from([400, 401, 404, 422]), content=st.none(),
              raw=st.sampled_from([b"", b'{"error": "bad schema"}', b"\xff" * 3000])),
)
#: Enough good answers after the drawn ones that the fake server never runs dry (a 500).
GOOD_TAIL = [Reply.json({"rationale": "fine", "class_name": "Net", "python": GOOD_SOURCE,
                         "train": {"epochs": 3, "batch_size": 32, "lr": 0.001,
                                   "optimizer": "adam"}})] * (4 * CANDIDATES)


@contextmanager
def closing_planners() -> Iterator[None]:
    """Close the planners ``drive`` makes (it does not: their client would keep a socket)."""
    made, original = [], research.make_planner

    def make(*args):
        made.append(original(*args))
        return made[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("orchestrator.research.make_planner", make)
        try:
            yield
        finally:
            for planner in made:
                planner.close()


def forward_error(job):
    """The fake worker: every job fails in forward, which the planner may repair."""
    return [Failure(stage=Stage.FORWARD, kind=FailureKind.FORWARD_ERROR, message="boom")]


@pytest.mark.slow
@settings(max_examples=20, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(answers=st.lists(RUN_ANSWER, min_size=1, max_size=6))
def test_a_run_against_any_llm_finishes_and_records_every_candidate(answers, tmp_path_factory,
                                                                    capsys):
    root = tmp_path_factory.mktemp("runs")
    with FakeLLMServer([a.reply() for a in answers] + GOOD_TAIL) as server, \
            closing_planners():
        settings_ = RunSettings(
            goal="iris classifier", name="r", dataset="iris", seeds=(0,),
            max_candidates=CANDIDATES, time_budget_s=600.0,
            target=Target(metric="accuracy", threshold=None), 
            llm=LLMConfig(base_url=server.base_url, model="fake", mode="source", timeout_s=10.0))
        code = start_run(settings_, root=root, config=CONFIG,
                         secrets=Secrets(llm_base_url=server.base_url),
                         backend_factory=lambda: ScriptedBackend(forward_error))
        asked = len(server.chat_requests())
    capsys.readouterr()
    assert code == 0
    with Registry.open(root / "r", readonly=True) as registry:
        run, records, events = registry.run_info(), registry.candidates(), registry.events()
        calls = registry.llm_calls()
    assert run.status == "finished" and "candidate budget spent" in run.message
    assert len(records) == CANDIDATES
    assert all(r.status == "failed" and r.failure.kind is FailureKind.FORWARD_ERROR
               for r in records)
    assert len(calls) == asked, "every request to the LLM is recorded"
    kinds = [e.kind for e in events]
    assert "planner_error" not in kinds, "LLMPlanner.propose raised"
    from_llm = [r for r in records if r.proposal.params.get("origin") in ("propose", "repair")]
    event(f"{len(from_llm)} of {CANDIDATES} candidates from the LLM")
    assert kinds.count("llm_fallback") == CANDIDATES - len(from_llm), \
        "each candidate the LLM could not give comes from the fallback, with the reason logged"
