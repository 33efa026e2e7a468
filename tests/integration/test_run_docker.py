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
    assert f"best: {best.id} test accuracy" in out and "95% CI" in out
    assert (tmp_path / "runs" / run.name / "report.html").exists()
