"""`researcher check` without --train: what --dataset implies."""

from pathlib import Path

import pytest

from orchestrator.check import CheckRequest, run_check
from orchestrator.exceptions import UsageError
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.local import SubprocessBackend

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_dataset_implies_input_shape_and_classes_for_a_plain_check():
    outcome = run_check(CheckRequest(path=MODELS / "good_mlp.py", dataset="digits"), SubprocessBackend,
                        SandboxConfig(image="unused", timeout_s=120))
    assert outcome.result.failure is None
    assert outcome.result.check is not None and outcome.result.check.output_shape == (2, 10)


def test_flags_that_contradict_the_dataset_are_usage_errors():
    request = CheckRequest(path=MODELS / "good_mlp.py", dataset="digits", num_classes=3)
    with pytest.raises(UsageError, match="--num-classes 3 does not match dataset 'digits'"):
        run_check(request, SubprocessBackend, SandboxConfig(image="unused", timeout_s=120))


def test_a_data_dir_without_a_dataset_is_a_usage_error(tmp_path, capsys):
    """The directory's format cannot be guessed: the check must not train on digits instead."""
    from orchestrator import cli

    def never(*args, **kwargs):
        raise AssertionError("no sandbox may start")

    for train in ((), ("--train",)):
        code = cli.main(["check", str(MODELS / "good_mlp.py"), *train, "--data-dir", str(tmp_path)])
        assert code == 2
        assert "--data-dir needs --dataset NAME" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--data-dir needs --dataset NAME"):
        run_check(CheckRequest(path=MODELS / "good_mlp.py", data_dir=str(tmp_path)), never,
                  SandboxConfig(image="unused", timeout_s=120))
