"""The research loop end to end on real data, through the real worker (local, UNSAFE backend)."""

import json
from pathlib import Path

import msgspec

from orchestrator.planning.types import Proposal, Target
from orchestrator.registry import Registry, RunSettings
from orchestrator.research import Secrets, drive, resume_run, start_run
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.local import SubprocessBackend
from tests.fakes.backends import CountingBackend
from sandbox_image.protocol import FailureKind, TrainSpec

CONFIG = SandboxConfig(timeout_s=120, cpus=1)


def _settings(**kw) -> RunSettings:
    base = dict(goal="iris classifier", dataset="iris", seeds=(0, 1), max_candidates=3, time_budget_s=600.0,
                target=Target(metric="accuracy", threshold=None))
    base.update(kw)
    return RunSettings(**base)


def test_a_run_spends_its_candidate_budget_and_reports(tmp_path, capsys):
    code = start_run(_settings(name="r1"), root=tmp_path, config=CONFIG, secrets=Secrets(), backend_factory=SubprocessBackend)
    assert code == 0
    run = tmp_path / "r1"
    with Registry.open(run, readonly=True) as registry:
        records = registry.candidates()
        assert len(records) == 3
        assert all(r.status in ("passed", "failed") for r in records)
        best = registry.best()
        assert best is not None and 0.5 < best.value("accuracy") <= 1.0
        assert registry.run_info().status == "finished"
        assert "candidate budget spent" in registry.run_info().message
    assert (run / "src" / "models" / "model.py").read_text() == best.source
    assert (run / "report.html").stat().st_size > 10_000 and (run / "report.md").exists()
    exported = json.loads((run / "experiments" / "registry.json").read_text())
    assert len(exported["candidates"]) == 3
    assert not (run / "scratch").exists()  # no --keep: the sandbox arrays are gone
    out = capsys.readouterr().out
    assert "best: c00" in out and "95% CI" in out


def test_the_loop_stops_when_the_target_is_met(tmp_path):
    settings = _settings(name="r2", target=Target(metric="accuracy", threshold=0.5), max_candidates=5)
    start_run(settings, root=tmp_path, config=CONFIG, secrets=Secrets(), backend_factory=SubprocessBackend)
    with Registry.open(tmp_path / "r2", readonly=True) as registry:
        assert len(registry.candidates()) == 1
        assert registry.run_info().message.startswith("target met")


class ScriptedPlanner:
    """Proposes broken sources first, then a good one: failures must be recorded, not raised."""

    def __init__(self, sources):
        self.sources = list(sources)
        self.observed = []

    def propose(self, history):
        if not self.sources:
            return None
        return Proposal(source=self.sources.pop(0), train=TrainSpec(epochs=2))

    def observe(self, outcome):
        self.observed.append(outcome)


GOOD = """
import torch.nn as nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    def forward(self, x):
        return self.f(x)
"""


def test_broken_candidates_are_recorded_failures_and_the_run_goes_on(tmp_path, monkeypatch):
    planner = ScriptedPlanner([
        "class Net(:\n",  # syntax: caught on the host
        GOOD.replace("nn.Linear(16, 3)", "nn.Linear(16, 5)"),  # shape mismatch
        GOOD.replace("return self.f(x)", "raise RuntimeError('boom')"),  # forward error
        GOOD,
    ])
    monkeypatch.setattr("orchestrator.research.make_planner", lambda *a: planner)
    start_run(_settings(name="r3", max_candidates=10), root=tmp_path, config=CONFIG, secrets=Secrets(),
              backend_factory=SubprocessBackend)
    with Registry.open(tmp_path / "r3", readonly=True) as registry:
        kinds = [r.failure.kind if r.failure else None for r in registry.candidates()]
        assert kinds == [FailureKind.SYNTAX_ERROR, FailureKind.SHAPE_MISMATCH, FailureKind.FORWARD_ERROR, None]
        assert registry.run_info().message == "the planner has nothing more to propose"
    assert [o.status for o in planner.observed] == ["failed", "failed", "failed", "passed"]
    assert "boom" in planner.observed[2].failure_message


def test_the_run_ends_with_the_planners_own_reason_to_stop(tmp_path, monkeypatch):
    class OutOfTime(ScriptedPlanner):
        def stop_reason(self):
            return "time budget nearly spent: the 9 s left fit no further candidate" if not self.sources else ""

    monkeypatch.setattr("orchestrator.research.make_planner", lambda *a: OutOfTime([GOOD]))
    start_run(_settings(name="r4", max_candidates=10), root=tmp_path, config=CONFIG, secrets=Secrets(),
              backend_factory=SubprocessBackend)
    with Registry.open(tmp_path / "r4", readonly=True) as registry:
        why = "time budget nearly spent: the 9 s left fit no further candidate"
        assert registry.run_info().message == why
        assert [(e.kind, e.message) for e in registry.events() if e.kind == "budget_spent"] == [("budget_spent", why)]


def test_resume_marks_interrupted_candidates_and_finishes_the_budget(tmp_path):
    run = tmp_path / "r4"
    registry = Registry.create(run, _settings(name="r4", max_candidates=2))
    cid = registry.add_candidate(Proposal(source=GOOD), GOOD)
    registry.mark_running(cid)
    registry.close()  # the process "died" with c001 running
    resume_run(run, config=CONFIG, secrets=Secrets(), backend_factory=SubprocessBackend)
    with Registry.open(run, readonly=True) as registry:
        records = registry.candidates()
        assert records[0].failure.kind is FailureKind.CRASHED and records[0].failure.message.startswith("interrupted")
        assert len(records) == 3  # the interrupted one does not count against the budget of 2
        assert [e.kind for e in registry.events() if e.kind == "resumed"] == ["resumed"]


SLOW = GOOD.replace("return self.f(x)", "__import__('time').sleep(0.05)\n        return self.f(x)")


def test_ctrl_c_kills_candidates_mid_training_instead_of_waiting_for_them(tmp_path, monkeypatch):
    import time

    import pytest

    from orchestrator.loop import ResearchLoop

    sources = [SLOW, SLOW]

    class Slow(ScriptedPlanner):
        def propose(self, history):
            return Proposal(source=sources.pop(), train=TrainSpec(epochs=500)) if sources else None

    monkeypatch.setattr("orchestrator.research.make_planner", lambda *a: Slow([]))
    pressed: list[float] = []
    refresh = ResearchLoop._refresh_view

    def press_ctrl_c_once_training(self):
        refresh(self)
        if any(e["epoch"] for e in self.state.in_flight.values()) and not pressed:
            pressed.append(time.monotonic())
            raise KeyboardInterrupt

    monkeypatch.setattr(ResearchLoop, "_refresh_view", press_ctrl_c_once_training)
    backend = CountingBackend()
    settings = msgspec.structs.replace(_settings(name="r5", max_candidates=2), parallel=2)
    with pytest.raises(KeyboardInterrupt):
        start_run(settings, root=tmp_path, config=CONFIG, secrets=Secrets(), backend_factory=lambda: backend)
    assert pressed and time.monotonic() - pressed[0] < 20  # 500 slow epochs would take many minutes
    assert backend.created and all(s.exit_status() is not None for s in backend.created)
    with Registry.open(tmp_path / "r5", readonly=True) as registry:
        assert registry.run_info().status == "interrupted"
        assert [r.status for r in registry.candidates()] == ["running", "running"]  # resume redoes them


class NoticingPlanner(ScriptedPlanner):
    """Has something to tell the user with its second proposal."""

    def __init__(self, sources):
        super().__init__(sources)
        self.notices = []

    def propose(self, history):
        if len(history) == 1:
            self.notices.append("no final training of the best design so far (c001): raise --timeout")
        return super().propose(history)

    def take_notices(self):
        taken, self.notices = self.notices, []
        return taken


def test_the_planners_notices_are_recorded_shown_and_reported(tmp_path, monkeypatch, capsys):
    planner = NoticingPlanner([GOOD, GOOD])
    monkeypatch.setattr("orchestrator.research.make_planner", lambda *a: planner)
    start_run(_settings(name="r4", max_candidates=5), root=tmp_path, config=CONFIG, secrets=Secrets(),
              backend_factory=SubprocessBackend)
    with Registry.open(tmp_path / "r4", readonly=True) as registry:
        notes = [e.message for e in registry.events() if e.kind == "planner_note"]
    assert notes == ["no final training of the best design so far (c001): raise --timeout"]
    assert notes[0] in capsys.readouterr().err  # the live view
    assert notes[0] in (tmp_path / "r4" / "report.md").read_text()
