"""No decision sees the test set: planners, the stop rule and the best model read the selection split.

Two forged candidates: one is perfect on the test rows of the evaluation array and
guesses on the selection rows, the other the reverse. Only the host knows which row
is which. The planner must be told selection figures only, and the run must choose,
and stop on, the selection-perfect one, while the test figures are still recorded.
"""

from __future__ import annotations

import msgspec
import numpy as np

from orchestrator.planning.types import Proposal, Target
from orchestrator.registry import Registry, RunSettings
from orchestrator.research import Secrets, start_run
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.evaluation import load_prepared
from sandbox_image.protocol import CheckReport, Done, EpochStats, Job, Predictions, Progress, TrainSpec
from tests.fakes.scripted import ScriptedBackend

CONFIG = SandboxConfig(timeout_s=30, cpus=1)
SOURCE = "import torch.nn as nn\nclass Net(nn.Module):\n    def forward(self, x):\n        return x\n"


class RecordingPlanner:
    """Proposes two candidates, then a third; keeps every Outcome it is told."""

    def __init__(self) -> None:
        self.observed = []
        self.left = 3

    def propose(self, history):
        if not self.left:
            return None
        self.left -= 1
        return Proposal(source=SOURCE, train=TrainSpec(epochs=1))

    def observe(self, outcome) -> None:
        self.observed.append(outcome)


def _logits(prepared, perfect_on: str) -> np.ndarray:
    """Logits over the evaluation rows: right on one split's rows, always class 0 on the other's."""
    k = prepared.num_classes
    truth = np.concatenate([prepared.select_y, prepared.test_y])[prepared.eval_order]
    is_selection = prepared.eval_order < prepared.n_select
    good = is_selection if perfect_on == "selection" else ~is_selection
    labels = np.where(good, truth, 0)
    out = np.full((prepared.n_eval, k), -5.0, dtype="<f4")
    out[np.arange(prepared.n_eval), labels] = 5.0
    return out


def _script(prepared):
    def script(job: Job):
        perfect_on = "test" if job.job_id == "c001" else "selection"
        stats = EpochStats(epoch=1, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, seconds=0.1)
        logits = _logits(prepared, perfect_on)
        return [CheckReport(params=1, trainable_params=1, output_shape=(job.check_batch, job.num_classes),
                            forward_seconds=0.0),
                *[m for seed in job.train.seeds for m in (
                    Progress(seed=seed, stats=stats, epochs=1),
                    Predictions(seed=seed, logits=logits.tobytes(), dtype="<f4", shape=logits.shape,
                                curves=(stats,), best_epoch=1))],
                Done(seconds=0.1)]
    return script


def test_the_planner_never_receives_a_test_metric_and_the_best_is_chosen_on_selection(tmp_path, monkeypatch,
                                                                                      capsys):
    prepared = load_prepared("iris", None)
    planner = RecordingPlanner()
    monkeypatch.setattr("orchestrator.research.make_planner", lambda *args: planner)
    settings = RunSettings(goal="iris", name="sel", dataset="iris", seeds=(0,), max_candidates=3,
                           time_budget_s=600.0, target=Target(metric="accuracy", threshold=0.99))
    start_run(settings, root=tmp_path, config=CONFIG, secrets=Secrets(),
              backend_factory=lambda: ScriptedBackend(_script(prepared)))
    capsys.readouterr()

    with Registry.open(tmp_path / "sel", readonly=True) as registry:
        records = {r.id: r for r in registry.candidates()}
        best = registry.best()
        run = registry.run_info()
    cheat, honest = records["c001"], records["c002"]
    # the test figures are recorded, and they are the opposite of the selection figures
    assert cheat.test_value("accuracy") == 1.0 and cheat.value("accuracy") < 0.5
    assert honest.value("accuracy") == 1.0 and honest.test_value("accuracy") < 0.5
    # the planner was told selection figures only: no number it saw is a test figure
    assert [o.candidate_id for o in planner.observed] == ["c001", "c002"]
    assert [o.mean for o in planner.observed] == [cheat.value("accuracy"), honest.value("accuracy")]
    test_figures = {round(v, 12) for r in records.values() for v in _numbers(r.scores)}
    seen = {round(v, 12) for o in planner.observed for v in _numbers(o)} - {0.0, 1.0}
    assert not seen & (test_figures - {round(v, 12) for r in records.values() for v in _numbers(r.selection)})
    # the best and the stop rule read selection: the test-perfect candidate never wins
    assert best is not None and best.id == "c002"
    assert len(records) == 2 and run.message.startswith("target met: c002")


def _numbers(value) -> list[float]:
    """Every float in a struct (or builtins tree)."""
    out: list[float] = []
    stack = [msgspec.to_builtins(value)]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


class FlipPlanner(RecordingPlanner):
    """Asks for flips and an hour of training: the loop must overrule both."""

    def propose(self, history):
        proposal = super().propose(history)
        if proposal is None:
            return None
        train = msgspec.structs.replace(proposal.train, augment="crop_flip", hflip_ok=True, tta_flip=True,
                                        time_budget_s=3600.0)
        return msgspec.structs.replace(proposal, train=train)


def test_the_loop_sets_the_flip_rule_and_a_deadline_inside_the_hard_limit(tmp_path, monkeypatch, capsys):
    prepared = load_prepared("digits", None)
    jobs: list[Job] = []
    monkeypatch.setattr("orchestrator.research.make_planner", lambda *args: FlipPlanner())
    settings = RunSettings(goal="digits", name="flags", dataset="digits", seeds=(0,), max_candidates=1,
                           time_budget_s=600.0, target=Target(metric="accuracy", threshold=None))
    script = _script(prepared)
    start_run(settings, root=tmp_path, config=CONFIG, secrets=Secrets(),
              backend_factory=lambda: ScriptedBackend(lambda job: jobs.append(job) or script(job)))
    capsys.readouterr()
    [job] = jobs
    assert job.train.hflip_ok is False  # digits: a flipped 2 is not a 2, whatever the planner asked
    assert 0 < job.train.time_budget_s <= 0.85 * CONFIG.timeout_s  # stops itself before the host's kill
