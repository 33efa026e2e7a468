"""The host side of the protocol, driven through the real worker in a local process.

The subprocess backend is UNSAFE (no isolation); only models that are harmless on
the host run here. The hostile ones run in tests/sandbox under Docker.
"""

import time
from pathlib import Path

import pytest

from orchestrator.exceptions import SandboxUnavailable
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.local import SubprocessBackend
from orchestrator.sandbox.runner import new_job_id, run_job
from sandbox_image.protocol import FailureKind, Job

MODELS = Path(__file__).resolve().parents[1] / "models"


def _job(model: str, **overrides) -> Job:
    fields = dict(job_id=new_job_id(), source=(MODELS / model).read_text(), class_name="Net",
                  input_shape=(1, 8, 8), num_classes=10)
    fields.update(overrides)
    return Job(**fields)


def _run(model: str, timeout_s: float = 30.0, **overrides):
    return run_job(SubprocessBackend(), _job(model, **overrides), SandboxConfig(timeout_s=timeout_s))


def test_a_good_model_passes_with_its_parameter_count():
    result = _run("good_mlp.py")
    assert result.status == "passed", result.failure
    assert result.check.params == 64 * 128 + 128 + 128 * 10 + 10
    assert result.check.output_shape == (2, 10)
    assert result.ready.protocol >= 1 and result.ready.torch.startswith("2.")
    assert result.exit.exit_code == 0


@pytest.mark.parametrize(
    ("model", "kind", "stage"),
    [
        ("syntax_error.py", FailureKind.SYNTAX_ERROR, "compile"),
        ("import_error.py", FailureKind.IMPORT_ERROR, "import"),
        ("instantiate_error.py", FailureKind.INSTANTIATE_ERROR, "instantiate"),
        ("not_a_module.py", FailureKind.INSTANTIATE_ERROR, "instantiate"),
        ("forward_error.py", FailureKind.FORWARD_ERROR, "forward"),
        ("wrong_shape.py", FailureKind.SHAPE_MISMATCH, "forward"),
        ("nan_output.py", FailureKind.NON_FINITE, "forward"),
    ],
)
def test_model_failures_come_back_typed(model, kind, stage):
    result = _run(model)
    assert result.failure is not None
    assert result.failure.kind is kind
    assert result.failure.stage.value == stage
    assert result.failure.message


def test_wrong_class_name_lists_the_classes_found():
    result = _run("good_mlp.py", class_name="Model")
    assert result.failure.kind is FailureKind.IMPORT_ERROR
    assert "'Model'" in result.failure.message and "Net" in result.failure.message


def test_tracebacks_are_trimmed_and_point_at_the_model():
    result = _run("instantiate_error.py")
    assert "width must be positive" in result.failure.message
    assert "<candidate>" in result.failure.traceback
    assert len(result.failure.traceback) <= 4100


def test_a_hang_at_import_is_killed_at_the_timeout():
    start = time.monotonic()
    result = _run("sleep_import.py", timeout_s=6)
    elapsed = time.monotonic() - start
    assert result.failure.kind is FailureKind.TIMEOUT
    assert "6 s limit" in result.failure.message
    assert elapsed - result.startup_seconds < 6 + 3  # the limit runs from the job's hand-off


def test_os_exit_mid_forward_is_a_crash_with_its_code():
    result = _run("exits_mid_forward.py")
    assert result.failure.kind is FailureKind.CRASHED
    assert "17" in result.failure.message
    assert result.exit.exit_code == 17


def test_a_segfault_is_a_crash():
    result = _run("segfault.py")
    assert result.failure.kind is FailureKind.CRASHED
    assert "SIGSEGV" in result.failure.message


def test_a_worker_that_never_starts_is_a_sandbox_problem(monkeypatch):
    backend = SubprocessBackend()
    job = _job("good_mlp.py")

    class Broken:
        def create(self, *args):
            sandbox = backend.create(*args)
            sandbox.mounts = type(sandbox.mounts)(socket_path="/nonexistent/dir/worker.sock", data_root=None)
            return sandbox

        def close(self):
            pass

    start = time.monotonic()
    with pytest.raises(SandboxUnavailable, match="did not report Ready within 4 s"):
        run_job(Broken(), job, SandboxConfig(timeout_s=20, startup_timeout_s=4))
    assert time.monotonic() - start < 4 + 3


def test_progress_callback_sees_no_terminal_messages():
    seen = []
    run_job(SubprocessBackend(), _job("good_mlp.py"), SandboxConfig(timeout_s=30), on_message=seen.append)
    assert [type(m).__name__ for m in seen] == ["CheckReport"]


def test_job_directories_go_to_the_jobs_dir_and_are_removed(tmp_path):
    from orchestrator.sandbox.config import JOB_SOCKET_TAIL

    jobs = tmp_path / "jobs"  # made on demand
    seen = []

    def look(msg):
        seen.extend((path, path.stat().st_mode & 0o777) for path in jobs.iterdir())

    result = run_job(SubprocessBackend(), _job("good_mlp.py"), SandboxConfig(timeout_s=30, jobs_dir=str(jobs)),
                     on_message=look)
    assert result.status == "passed", result.failure
    [(job_dir, mode)] = seen
    assert job_dir.name.startswith("researcher-job-") and mode == 0o711
    assert len(f"{jobs}/{job_dir.name}/worker.sock") == len(str(jobs) + JOB_SOCKET_TAIL)  # the estimate is exact
    assert list(jobs.iterdir()) == []


def test_an_unusable_jobs_dir_is_a_sandbox_problem_with_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SandboxUnavailable, match=f"cannot make a directory in {blocker}/jobs"):
        _run_in(blocker / "jobs")


def _run_in(jobs: Path):
    return run_job(SubprocessBackend(), _job("good_mlp.py"), SandboxConfig(timeout_s=30, jobs_dir=str(jobs)))


@pytest.mark.gpu
def test_the_worker_trains_on_cuda_and_scores_like_cpu(tmp_path):
    """The real worker, the real protocol, one GPU: Ready says cuda, training on it reaches CPU's accuracy."""
    import torch

    from evaluator.datasets import load_dataset
    from evaluator.prepare import prepare
    from sandbox_image.protocol import TrainSpec

    assert torch.cuda.is_available(), "the gpu marker needs a CUDA device"
    prepared = prepare(load_dataset("digits"))
    spec = prepared.write_sandbox_dir(tmp_path / "data")
    accuracy = {}
    for device in ("cpu", "cuda"):
        job = _job("good_mlp.py", device=device, train=TrainSpec(epochs=8, lr=3e-3, seeds=(0,)), data=spec)
        config = SandboxConfig(timeout_s=300, device=device, gpu="0" if device == "cuda" else None)
        result = run_job(SubprocessBackend(), job, config, data_dir=tmp_path / "data", n_test=prepared.n_eval)
        assert result.status == "passed", result.failure
        if device == "cuda":
            assert result.ready.device == "cuda" and result.ready.cuda_devices == 1  # CUDA_VISIBLE_DEVICES=0
        assert result.logits[0].shape == (prepared.n_eval, 10)  # selection and test inputs
        _, logits = prepared.split_eval(result.logits[0])
        accuracy[device] = float((logits.argmax(1) == prepared.test_y).mean())
    assert accuracy["cuda"] > 0.9 and abs(accuracy["cuda"] - accuracy["cpu"]) < 0.05, accuracy
