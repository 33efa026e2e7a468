"""Registry: round trips, durability settings, best(), recovery, export."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from pathlib import Path

import msgspec
import pytest

from orchestrator.exceptions import UsageError
from orchestrator.planning.types import Target
from orchestrator.registry import LLMConfig, Registry
from orchestrator.sandbox.config import SandboxConfig
from sandbox_image.protocol import FailureKind
from tests.registry import factories as f


def test_round_trip_returns_what_went_in(registry: Registry, run_dir: Path) -> None:
    scores, selection, curves, check = f.scores(2.5), f.scores(1.0, seed=7), f.curves(), f.check(777)
    cid = registry.add_candidate(f.proposal(24), f.SOURCE)
    registry.mark_running(cid)
    registry.finish_candidate(cid, check=check, scores=scores, selection=selection, curves=curves, seconds=3.5)
    failed = f.add_failed(registry, FailureKind.TIMEOUT, "took too long")
    registry.record_llm_call(f.llm_call(error="HTTP 429"))
    registry.log_event("target_met", "reached", value=0.93, candidate=cid)
    registry.close()

    with Registry.open(run_dir, readonly=True) as reg:
        passed, bad = reg.candidates()
        assert (passed.id, passed.seq, passed.status) == (cid, 1, "passed")
        assert passed.proposal == f.proposal(24) and passed.source == f.SOURCE
        assert passed.scores == scores and passed.check == check and passed.params == 777
        assert passed.curves == curves and passed.seconds == 3.5
        assert passed.selection == selection
        acc = selection.metrics["accuracy"]  # the decision columns hold the selection split's figures
        assert passed.mean == acc.mean and passed.ci95 == (acc.ci95_low, acc.ci95_high)
        assert passed.value("accuracy") == acc.mean != passed.test_value("accuracy")
        assert passed.test_value("accuracy") == scores.metrics["accuracy"].mean
        assert (bad.id, bad.status, bad.failure.kind) == (failed, "failed", FailureKind.TIMEOUT)
        assert bad.mean is None and reg.candidate(failed) == bad
        assert reg.llm_calls() == [f.llm_call(error="HTTP 429")]
        event = reg.events("target_met")[0]
        assert event.payload == {"value": 0.93, "candidate": cid}
        assert [e.kind for e in reg.events()][:3] == ["run_started", "candidate_started",
                                                      "candidate_finished"]
        assert reg.settings.goal == f.settings().goal and reg.settings.name == "run_test"


def test_wal_mode_and_full_sync(registry: Registry) -> None:
    conn = registry._live()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_run_directory_holds_every_file(run_dir: Path) -> None:
    registry = Registry.create(run_dir, f.settings())  # with plots
    low = f.add_passed(registry, 1.0, width=8)
    high = f.add_passed(registry, 3.0, width=32, source=f.SOURCE + "# best\n")
    failed = f.add_failed(registry)
    folder = run_dir / "candidates"
    for name in ("model.py", "config.json", "check.json", "metrics.json", "dynamics.json",
                 "curves.json", "confusion_matrix.png", "learning_curves.png"):
        assert (folder / low / name).is_file(), name
    assert {p.name for p in (folder / failed).iterdir()} == {"model.py", "config.json", "failure.json"}
    assert json.loads((folder / failed / "failure.json").read_text())["kind"] == "shape_mismatch"
    config = json.loads((folder / high / "config.json").read_text())
    assert config["train"]["epochs"] == 4 and "source" not in config
    assert (run_dir / "src/models/model.py").read_text() == f.SOURCE + "# best\n"
    assert json.loads((run_dir / "run.json").read_text())["goal"] == f.settings().goal
    assert not list(run_dir.rglob(".*.tmp"))
    registry.close()


def test_secrets_never_stored(run_dir: Path) -> None:
    settings = f.settings(llm=LLMConfig(base_url="https://user:hunter2@api.example.com:8443/v1?api_key=sk-123"),
                          sandbox=SandboxConfig(jobs_dir="/tmp/this-host-only"))
    Registry.create(run_dir, settings).close()
    stored = (run_dir / "run.json").read_text() + (run_dir / "experiments/registry.json").read_text()
    assert "hunter2" not in stored and "sk-123" not in stored
    stored_json = json.loads((run_dir / "run.json").read_text())
    assert stored_json["llm"]["base_url"] == "https://api.example.com:8443/v1"
    assert stored_json["sandbox"]["jobs_dir"] is None  # host-local: given again at resume
    with pytest.raises(TypeError):  # no loose dict a key could hide in
        f.settings(extra={"llm_api_key": "sk-1"})


def test_best_uses_direction_and_ignores_failures(registry: Registry) -> None:
    assert registry.best() is None
    f.add_failed(registry)
    assert registry.best() is None
    weak, strong = f.add_passed(registry, 1.0), f.add_passed(registry, 3.0)
    f.add_failed(registry)
    assert registry.best().id == strong
    nll = {c.id: c.scores.metrics["nll"].mean for c in registry.candidates("passed")}
    assert registry.best("nll").id == min(nll, key=nll.get)  # lower is better
    assert registry.best("auroc").id == strong  # found as auroc_macro
    assert weak != strong


def test_best_with_a_minimised_target(run_dir: Path) -> None:
    target = Target(metric="calibration_error", direction="minimize", threshold=0.05)
    with Registry.create(run_dir, f.settings(target=target), plots=False) as reg:
        ids = [f.add_passed(reg, skill) for skill in (1.0, 2.0, 3.0)]
        errors = {c.id: c.mean for c in reg.candidates()}
        assert reg.best().id == min(errors, key=errors.get)
        assert set(errors) == set(ids) and all(c.metric == "calibration_error" for c in reg.candidates())


def test_unfinished_candidates_become_interrupted_on_reopen(registry: Registry, run_dir: Path) -> None:
    done = f.add_passed(registry, 2.0)
    running = registry.add_candidate(f.proposal(), f.SOURCE)
    registry.mark_running(running)
    queued = registry.add_candidate(f.proposal(), f.SOURCE)
    registry.close()

    with Registry.open(run_dir) as reg:
        assert reg.recovered == (running, queued)
        rec = reg.candidate(running)
        assert rec.status == "failed" and rec.failure.kind == FailureKind.CRASHED
        assert rec.failure.message == "interrupted"
        assert reg.candidate(queued).failure.message.startswith("interrupted")
        assert reg.candidate(done).status == "passed"
        assert [e.kind for e in reg.events()][-2:] == ["interrupted", "resumed"]
        assert reg.run_info().status == "running"
        outcomes = reg.outcomes()
        assert [o.status for o in outcomes] == ["passed", "failed", "failed"]
        assert outcomes[0].mean == reg.candidate(done).mean and outcomes[0].val_curve
        assert (run_dir / "candidates" / running / "failure.json").is_file()
    with Registry.open(run_dir) as reg:  # a clean reopen recovers nothing
        assert reg.recovered == ()


def test_one_writer_at_a_time(registry: Registry, run_dir: Path) -> None:
    with pytest.raises(UsageError, match="being written by process"):
        Registry.open(run_dir)
    with Registry.open(run_dir, readonly=True) as reader:  # readers are welcome
        assert reader.run_info().status == "running"
        with pytest.raises(UsageError, match="read-only"):
            reader.log_event("x", "y")


def test_bad_transitions_are_refused(registry: Registry, tmp_path: Path) -> None:
    cid = registry.add_candidate(f.proposal(), f.SOURCE)
    with pytest.raises(ValueError, match="needs scores"):
        registry.finish_candidate(cid)
    registry.finish_candidate(cid, failure=f.failure())
    with pytest.raises(ValueError, match="is failed, expected"):
        registry.finish_candidate(cid, failure=f.failure())
    with pytest.raises(ValueError, match="no candidate"):
        registry.mark_running("c999")
    with pytest.raises(UsageError, match="being written by process"):
        Registry.create(registry.paths.root, f.settings())
    registry.close()
    with pytest.raises(UsageError, match="already holds a run"):
        Registry.create(registry.paths.root, f.settings())
    with pytest.raises(UsageError, match="not a run directory"):
        Registry.open(tmp_path / "nowhere")


def test_export_is_valid_json_and_keeps_nan(registry: Registry, run_dir: Path) -> None:
    scores = f.scores(2.0)
    nll = msgspec.structs.replace(scores.metrics["nll"], mean=math.nan)
    scores = msgspec.structs.replace(scores, metrics={**scores.metrics, "nll": nll})
    cid = registry.add_candidate(f.proposal(), f.SOURCE)
    registry.finish_candidate(cid, scores=scores, selection=scores)
    registry.record_llm_call(f.llm_call())
    path = registry.export_json()
    doc = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert doc["name"] == "run_test" and len(doc["candidates"]) == 1 and len(doc["llm_calls"]) == 1
    assert doc["candidates"][0]["scores"]["metrics"]["nll"]["mean"] == "NaN"
    assert math.isnan(registry.candidate(cid).scores.metrics["nll"].mean)


def test_concurrent_writers_in_threads(registry: Registry) -> None:
    def work() -> None:
        for _ in range(5):
            cid = registry.add_candidate(f.proposal(), f.SOURCE)
            registry.mark_running(cid)
            registry.finish_candidate(cid, failure=f.failure())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = registry.candidates()
    assert [r.seq for r in records] == list(range(1, 21))
    assert all(r.status == "failed" for r in records)
    assert len(registry.events("candidate_finished")) == 20


def test_status_and_dataset(registry: Registry) -> None:
    registry.set_dataset({"name": "digits", "n_test": 360, "content_hash": "abc"})
    registry.set_status("finished", "target met")
    run = registry.run_info()
    assert run.dataset["n_test"] == 360 and run.status == "finished" and run.finished is not None
    assert registry.events()[-1].kind == "run_finished"
    with pytest.raises(ValueError, match="run status"):
        registry.set_status("done")  # type: ignore[arg-type]
    conn = sqlite3.connect(registry.paths.sqlite)
    assert conn.execute("SELECT COUNT(*) FROM run").fetchone()[0] == 1
    conn.close()
