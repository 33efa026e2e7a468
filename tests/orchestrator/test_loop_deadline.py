"""The deadline a candidate gets from the run's time left: less what candidates spend besides training."""

import math
import time
from collections import deque
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.loop import MAX_OVERHEAD_S, MIN_CANDIDATE_S, SANDBOX_MARGIN_S, LoopState, ResearchLoop
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.runner import JobResult
from sandbox_image.protocol import Predictions


def _loop(time_budget_s: float | None, elapsed: float) -> ResearchLoop:
    """A loop with only what the deadline arithmetic reads (no registry, pool or data)."""
    loop = ResearchLoop.__new__(ResearchLoop)
    loop.config = SandboxConfig(timeout_s=900)
    loop.settings = SimpleNamespace(time_budget_s=time_budget_s)
    loop.state = LoopState(started=time.monotonic() - elapsed)
    loop._overheads = deque(maxlen=5)
    return loop


def _finished(loop: ResearchLoop, wall: float, job: float, trained: list[float]) -> None:
    """A candidate submitted ``wall`` s ago whose job took ``job`` s and whose seeds say ``trained``."""
    result = JobResult(job_id="c", seconds=job,
                       predictions=[Predictions(seed=i, logits=b"", dtype="<f4", shape=(0, 10), seconds=s)
                                    for i, s in enumerate(trained)])
    loop._note_overhead({"submitted": time.monotonic() - wall}, result)


def test_a_candidate_cut_by_the_run_deadline_gets_the_time_left_less_the_measured_overhead() -> None:
    loop = _loop(600.0, elapsed=500.0)  # 100 s left
    assert math.isclose(loop._candidate_budget_s(), 100.0 - SANDBOX_MARGIN_S, abs_tol=0.5)  # nothing measured yet
    _finished(loop, wall=70.0, job=64.0, trained=[30.0, 30.0])  # 10 s besides training
    assert math.isclose(loop._candidate_budget_s(), 90.0, abs_tol=0.5)
    _finished(loop, wall=40.0, job=36.0, trained=[32.0])  # 8 s: the median of 10 and 8
    assert math.isclose(loop._candidate_budget_s(), 91.0, abs_tol=0.5)


def test_the_time_left_binds_only_below_one_candidates_limit_and_never_under_the_minimum() -> None:
    cap = 0.85 * 900 - SANDBOX_MARGIN_S
    assert _loop(None, elapsed=10.0)._candidate_budget_s() == cap  # no time budget: the limit alone
    assert _loop(3600.0, elapsed=0.0)._candidate_budget_s() == cap  # an hour left: the limit binds
    assert _loop(600.0, elapsed=599.0)._candidate_budget_s() == MIN_CANDIDATE_S


def test_a_failed_or_unstarted_candidate_measures_nothing() -> None:
    loop = _loop(600.0, elapsed=500.0)
    _finished(loop, wall=70.0, job=64.0, trained=[])  # no seed finished: nothing to compare with
    loop._note_overhead({}, JobResult(job_id="c", seconds=3.0))
    assert not loop._overheads


@settings(max_examples=300, deadline=None)
@given(lies=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(-1e308), st.just(1e308)),
                     min_size=1, max_size=4))
def test_the_workers_word_on_its_training_time_cannot_shorten_the_others_training(lies: list[float]) -> None:
    """A hostile model can forge Predictions.seconds: one liar among honest candidates changes nothing,
    and any lie is held within the host-measured job time and MAX_OVERHEAD_S."""
    loop = _loop(600.0, elapsed=300.0)
    _finished(loop, wall=20.0, job=18.0, trained=[15.0])  # honest: 5 s
    _finished(loop, wall=20.0, job=18.0, trained=[15.0])
    _finished(loop, wall=20.0, job=18.0, trained=lies)
    assert all(0.0 <= o <= MAX_OVERHEAD_S for o in loop._overheads)
    assert loop._overheads[-1] >= 2.0 - 0.5  # at least the host's own share (wall - job)
    assert math.isclose(loop._candidate_budget_s(), 300.0 - 5.0, abs_tol=0.5)


def test_a_deadline_the_planner_set_shortens_the_loops_but_never_under_the_minimum() -> None:
    """An LLM's candidate carries the offline planner's limit (the time left less the final's share)."""
    from orchestrator.planning.types import Proposal
    from sandbox_image.protocol import TrainSpec

    loop = _loop(3600.0, elapsed=0.0)
    loop.settings = SimpleNamespace(time_budget_s=3600.0, seeds=(0, 1))
    loop.facts = SimpleNamespace(name="digits")
    cap = loop._candidate_budget_s()

    def deadline(planned: float) -> float:
        proposal = Proposal(source="class Net: pass", train=TrainSpec(time_budget_s=planned))
        train = loop._with_run_settings(proposal).train
        assert train.seeds == (0, 1) and not train.hflip_ok  # the run's, whatever the planner said
        return train.time_budget_s

    assert deadline(0.0) == cap  # none planned: the loop's own
    assert deadline(300.0) == 300.0
    assert deadline(5.0) == MIN_CANDIDATE_S
    assert deadline(1e9) == deadline(math.inf) == cap
