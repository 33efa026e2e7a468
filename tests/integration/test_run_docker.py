"""`researcher run` as the README runs it: the real Docker path, a relative runs directory."""

import pytest

from orchestrator import cli
from orchestrator.registry import Registry, list_runs

pytestmark = pytest.mark.docker


def test_the_readme_run_through_docker_with_a_relative_runs_dir(docker_client, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["run", "--dataset", "iris", "--max-candidates", "2", "--seeds", "2", "--cpus", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    [run] = list_runs(tmp_path / "runs")
    assert run.status == "finished" and run.candidates == 2
    with Registry.open(tmp_path / "runs" / run.name, readonly=True) as registry:
        best = registry.best()
        assert best is not None and best.value("accuracy") > 0.6
        assert best.summary("accuracy").ci95_low is not None  # two seeds: an interval
        records = registry.candidates()
    # the epoch each seed's weights came from is the worker's report, by the recipe's rule: the highest
    # val accuracy (ties to the lower val loss, then the earlier epoch), or the last on train + val
    for record in records:
        assert record.status == "passed" and record.dynamics is not None
        for seed, curve in record.curves.items():
            rule = curve[-1] if record.proposal.train.fit_val else max(
                curve, key=lambda s: (s.val_acc, -s.val_loss, -s.epoch))
            assert record.dynamics.per_seed[seed].kept_epoch == rule.epoch, (record.id, seed, curve)
    assert f"best: {best.id} test accuracy" in out and "95% CI" in out
    assert (tmp_path / "runs" / run.name / "report.html").exists()
