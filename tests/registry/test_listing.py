"""`researcher ls`: summaries of every run under a folder, read-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.exceptions import UsageError
from orchestrator.registry import Registry, list_runs, new_run_dir
from tests.registry import factories as f


def test_list_runs_summarises_each_run(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path, "first")
    with Registry.create(first, f.settings(), plots=False) as reg:
        f.add_passed(reg, 1.0)
        best = f.add_passed(reg, 3.0)
        f.add_failed(reg)
        reg.set_dataset({"name": "digits-prepared"})
        reg.set_status("finished")
        expected = reg.candidate(best)
    live = Registry.create(new_run_dir(tmp_path, "second"), f.settings(goal="still going"), plots=False)
    (tmp_path / "not_a_run").mkdir()
    broken = tmp_path / "broken" / "experiments"
    broken.mkdir(parents=True)
    (broken / "registry.sqlite").write_bytes(b"this is not sqlite")
    try:
        runs = {r.name: r for r in list_runs(tmp_path)}
    finally:
        live.close()
    assert set(runs) == {"first", "second", "broken"}
    one = runs["first"]
    assert (one.status, one.candidates, one.passed, one.failed) == ("finished", 3, 2, 1)
    test = expected.summary("accuracy")  # `ls` shows the chosen model's test result
    assert one.best_id == best and one.best_mean == test.mean and one.best_ci95 == (test.ci95_low, test.ci95_high)
    assert one.dataset == "digits-prepared" and one.target_met == (expected.value("accuracy") >= 0.9)
    assert runs["second"].status == "running" and runs["second"].goal == "still going"
    assert runs["second"].best_id is None and runs["second"].candidates == 0
    assert runs["broken"].status == "unreadable" and runs["broken"].error
    assert [r.name for r in list_runs(first)] == ["first"]  # a run folder itself


def test_list_runs_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        list_runs(tmp_path / "missing")
    assert list_runs(tmp_path) == []


def test_new_run_dir_names(tmp_path: Path) -> None:
    stamped = new_run_dir(tmp_path)
    again = new_run_dir(tmp_path)
    assert stamped.name.startswith("run_") and stamped.name.endswith("Z") and again != stamped
    assert new_run_dir(tmp_path, "mine").name == "mine"
    with pytest.raises(UsageError, match="already exists"):
        new_run_dir(tmp_path, "mine")
    with pytest.raises(UsageError, match="run name"):
        new_run_dir(tmp_path, "../escape")
