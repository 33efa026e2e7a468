"""scripts/device_search.py end to end on CPU: the real planner and loop, the worker as a local process."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_search.py"


def test_search_on_cpu_reports_the_chosen_model_its_candidates_and_time_to_accuracy(tmp_path):
    out = tmp_path / "out"
    # a goal without a stop value searches until a budget ends; the last of 3 candidates is the final training
    done = subprocess.run([sys.executable, str(SCRIPT), "--dataset", "digits", "--device", "cpu", "--seeds", "1",
                           "--time-budget", "60", "--max-candidates", "3", "--goal", "digits classifier",
                           "--runs-dir", str(tmp_path / "runs"),
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)  # stdout is the JSON alone; progress and the run's summary go to stderr
    assert report == json.loads((out / "search.json").read_text())
    assert "UNSAFE" in report["backend"] and "UNSAFE" in done.stderr
    assert Path(report["run_dir"]).name.startswith("unsafe-local-worker-cpu-")
    assert report["status"] == "finished" and report["stop_reason"] == "candidate budget spent (3 candidates)"
    assert report["device"] == "cpu" and report["gpu"] is None

    rows = report["candidates"]
    assert [r["id"] for r in rows] == ["c001", "c002", "c003"]
    passed = [r for r in rows if r["status"] == "passed" and not r["pruned"]]
    assert passed and all(0 < r["selection"] <= 1 and 0 < r["test"] <= 1 for r in passed)
    # the last candidate is one longer final training of the best design so far, on train + val
    search = max((r for r in passed[:-1]), key=lambda r: r["selection"])
    assert [r["fit_val"] for r in rows] == [False, False, True]
    assert rows[-1]["design"].startswith(f"final training of {search['id']} ")
    assert rows[-1]["epochs"] > search["epochs"]

    chosen = report["chosen"]
    best = max(passed, key=lambda r: r["selection"])
    assert chosen["selection_mean"] == best["selection"]  # chosen on selection, never on test
    assert chosen["test_mean"] == best["test"] and chosen["test_mean"] > 0.5
    assert list(chosen["test_per_seed"]) == ["0"]

    curve = report["time_to_accuracy"]
    assert len(curve) == sum(r["selection"] is not None for r in rows)
    assert [p["seconds"] for p in curve] == sorted(p["seconds"] for p in curve)
    assert [p["selection"] for p in curve] == sorted(p["selection"] for p in curve)  # best so far only rises
    assert curve[-1]["selection"] == chosen["selection_mean"] and curve[-1]["test"] == chosen["test_mean"]

    assert "<html" in (out / "report.html").read_text()[:500].lower()
    with sqlite3.connect(out / "run.sqlite") as db:
        assert db.execute("select count(*) from candidates").fetchone()[0] == len(rows)


def test_cuda_without_a_gpu_is_refused_before_a_run(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--dataset", "digits", "--device", "cuda",
                           "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert done.returncode != 0 and "torch sees no GPU here" in done.stderr
    assert not (tmp_path / "runs").exists()
