"""scripts/device_bench.py end to end on CPU: render, then train directly and through the real worker."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_bench.py"


def test_render_then_run_on_cpu_reports_each_way(tmp_path):
    rendered = tmp_path / "candidates.json"
    subprocess.run([sys.executable, str(SCRIPT), "render", "--out", str(rendered), "--datasets", "digits",
                    "--candidates", "2", "--epochs", "1"], check=True, capture_output=True, text=True)
    doc = json.loads(rendered.read_text())
    assert list(doc) == ["digits"] and len(doc["digits"]["candidates"]) == 2
    assert all("class Net" in c["source"] and c["train"]["epochs"] == 1 for c in doc["digits"]["candidates"])

    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "run", "--candidates", str(rendered), "--datasets", "digits",
                           "--devices", "cpu", "--threads", "1", "--out", str(out)],
                          check=True, capture_output=True, text=True)
    report = json.loads(done.stdout)
    assert report == json.loads(out.read_text())
    modes = report["datasets"]["digits"]["modes"]
    assert set(modes) == {"direct_cpu", "worker_cpu"}
    for name, mode in modes.items():
        assert mode["failures"] == [] and mode["wall_s"] > 0 and mode["train_samples_per_recipe_s"] > 0, name
    # the same recipe, in and out of the worker: the same predictions
    assert modes["direct_cpu"]["accuracy_mean"] == modes["worker_cpu"]["accuracy_mean"] > 0.1
    assert modes["worker_cpu"]["handoff_ms_p50"] is not None


def test_run_names_a_missing_gpu(tmp_path):
    rendered = tmp_path / "candidates.json"
    rendered.write_text(json.dumps({"digits": {"max_train": None, "candidates": []}}))
    done = subprocess.run([sys.executable, str(SCRIPT), "run", "--candidates", str(rendered), "--devices", "cuda"],
                          capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode != 0 and "torch sees no GPU here" in done.stderr
