"""Host-side checks at the sandbox boundary: the source's syntax going in, the logits coming out."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.exceptions import ProtocolViolation
from orchestrator.sandbox.validate import syntax_failure, validate_logits
from sandbox_image.protocol import FailureKind, Stage


def test_syntax_failure_names_the_line() -> None:
    assert syntax_failure("x = 1\n") is None
    failure = syntax_failure("def f(:\n    pass\n")
    assert failure is not None and failure.stage is Stage.COMPILE and failure.kind is FailureKind.SYNTAX_ERROR
    assert failure.message.startswith("SyntaxError:") and "line 1" in failure.message


def test_validate_logits_accepts_each_allowed_dtype() -> None:
    base = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    for dtype in ("<f4", "<f2", "<f8"):
        out = validate_logits(base.astype(dtype).tobytes(), dtype, (4, 3), 4, 3)
        assert out.dtype == np.float32 and out.shape == (4, 3)
        np.testing.assert_allclose(out, base, atol=1e-3)
        assert out.flags.writeable  # a private copy, not a view of the message buffer


@pytest.mark.parametrize(
    ("payload", "dtype", "shape", "needle"),
    [
        (np.zeros((4, 3), "<f4").tobytes(), "<i4", (4, 3), "dtype"),
        (np.zeros((4, 3), ">f4").tobytes(), ">f4", (4, 3), "dtype"),
        (np.zeros((4, 3), "<f4").tobytes(), "<f4", (3, 4), "shape"),
        (np.zeros((4, 2), "<f4").tobytes(), "<f4", (4, 2), "shape"),
        (np.zeros((4, 3), "<f4").tobytes()[:-4], "<f4", (4, 3), "bytes"),
        (np.full((4, 3), np.nan, "<f4").tobytes(), "<f4", (4, 3), "NaN"),
        (np.array([[np.inf, 0, 0]] * 4, "<f4").tobytes(), "<f4", (4, 3), "NaN"),
        (np.full((4, 3), 1e300, "<f8").tobytes(), "<f8", (4, 3), "NaN"),
    ],
    ids=["int", "big-endian", "transposed", "classes", "short", "nan", "inf", "f8-overflow"],
)
def test_validate_logits_rejects(payload: bytes, dtype: str, shape: tuple[int, int], needle: str) -> None:
    with pytest.raises(ProtocolViolation, match=needle):
        validate_logits(payload, dtype, shape, 4, 3)
