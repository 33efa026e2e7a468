"""Training through the real Docker sandbox: same numbers as outside, no way to the test labels."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator import cli
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.runner import new_job_id, run_job
from orchestrator.evaluation import load_prepared
from sandbox_image.protocol import Job, TrainSpec

MODELS = Path(__file__).resolve().parents[1] / "models"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.docker


def _direct_accuracy(source: str, prepared, spec: TrainSpec, seed: int) -> float:
    """The same recipe, in this process, no container."""
    import types

    from evaluator.recipe import train_seed

    module = types.ModuleType("direct_model")
    exec(compile(source, "direct_model", "exec"), module.__dict__)
    torch.set_num_threads(1)
    result = train_seed(module.Net, prepared.train_data(), spec, seed=seed)
    return float((result.logits.argmax(1) == prepared.test_y).mean())


def test_check_train_in_the_sandbox_matches_training_outside(docker_client, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["check", str(EXAMPLES / "digits_cnn.py"), "--dataset", "digits", "--train", "--epochs", "3",
                     "--seeds", "2", "--cpus", "1", "--json", "--out", str(out)])
    data = json.loads(capsys.readouterr().out)
    assert code == 0, data
    acc = data["metrics"]["accuracy"]
    assert 0.9 < acc["mean"] <= 1.0 and acc["ci95"][0] <= acc["mean"] <= acc["ci95"][1]
    assert len(data["confusion_matrix"]) == 10 and len(data["per_class"]) == 10
    assert {"auroc_macro", "average_precision_macro", "f1_macro", "calibration_error"} <= set(data["metrics"])
    assert data["dynamics"]["insights"]
    # the epoch whose weights made each seed's predictions, as the worker reported it: 1..3, printed too
    assert all(1 <= d["kept_epoch"] <= 3 for d in data["dynamics"]["per_seed"].values()), data["dynamics"]
    assert (out / "confusion_matrix.png").stat().st_size > 10_000 and (out / "learning_curves.png").exists()
    prepared = load_prepared("digits", None)
    spec = TrainSpec(epochs=3, seeds=(0, 1))
    source = (EXAMPLES / "digits_cnn.py").read_text()
    for seed in (0, 1):
        direct = _direct_accuracy(source, prepared, spec, seed)
        assert acc["per_seed"][str(seed)] == pytest.approx(direct, abs=1.5 / prepared.facts().n_test)


def _cheat(docker_backend, tmp_path, *, leak: bool) -> float:
    prepared = load_prepared("digits", None)
    data_dir = tmp_path / ("leaky" if leak else "data")
    spec = prepared.write_sandbox_dir(data_dir)
    if leak:  # what a careless design would do: the labels beside the (selection and test) inputs
        eval_y = np.concatenate([prepared.select_y, prepared.test_y])[prepared.eval_order]
        np.save(data_dir / "test_y.npy", eval_y)
        (data_dir / "test_y.npy").chmod(0o644)
    job = Job(job_id=new_job_id(), source=(MODELS / "cheaters" / "label_thief.py").read_text(), class_name="Net",
              input_shape=(1, 8, 8), num_classes=10, train=TrainSpec(epochs=1, seeds=(0,)), data=spec)
    result = run_job(docker_backend, job, SandboxConfig(timeout_s=300, cpus=1), data_dir=data_dir,
                     n_test=prepared.n_eval)
    assert result.failure is None, result.failure
    _, test_logits = prepared.split_eval(result.logits[0])
    return float((test_logits.argmax(1) == prepared.test_y).mean())


def test_test_labels_are_unreachable_from_the_sandbox(docker_backend, tmp_path):
    # Positive control: the thief works where labels are reachable ...
    assert _cheat(docker_backend, tmp_path, leak=True) == 1.0
    # ... and scores at chance (always class 0: about 1/10 of digits) with the real data hand-off.
    assert _cheat(docker_backend, tmp_path, leak=False) < 0.15
