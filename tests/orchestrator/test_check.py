"""`researcher check` without --train: what --dataset implies."""

from pathlib import Path

import pytest

from orchestrator.check import CheckRequest, run_check
from orchestrator.exceptions import UsageError
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.fake import SubprocessBackend

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
