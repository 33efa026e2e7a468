"""Host-side checks of what crosses the sandbox boundary, on the trusted side.

``syntax_failure`` looks at a model's source before it is sent (a friendly early
error, not a security check); ``validate_logits`` turns a worker's hostile
``Predictions`` buffer into a checked array before anything scores it.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

import numpy as np

from orchestrator.exceptions import ProtocolViolation
from sandbox_image.protocol import ALLOWED_DTYPES, Failure, FailureKind, Stage


def syntax_failure(source: str) -> Failure | None:
    """A syntax_error Failure when the source does not parse, else None."""
    try:
        ast.parse(source)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        return Failure(stage=Stage.COMPILE, kind=FailureKind.SYNTAX_ERROR, message=f"SyntaxError: {exc.msg} ({where})")
    return None


def validate_logits(
    buf: bytes, dtype: str, shape: Sequence[int], n_test: int, num_classes: int
) -> np.ndarray:
    """Decode a worker's logits buffer, checked: dtype, shape ``(n_test, C)``, size, finite."""
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolViolation(f"logits dtype {dtype!r} is not one of {ALLOWED_DTYPES}")
    if tuple(shape) != (n_test, num_classes):
        raise ProtocolViolation(f"logits shape {tuple(shape)} != expected {(n_test, num_classes)}")
    expected = n_test * num_classes * np.dtype(dtype).itemsize
    if len(buf) != expected:
        raise ProtocolViolation(f"logits buffer has {len(buf)} bytes, shape and dtype need {expected}")
    logits = np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(n_test, num_classes)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, caught below
        out = logits.astype(np.float32)  # also a private copy: the message buffer stays untouched
    if not np.isfinite(out).all():
        raise ProtocolViolation("logits contain NaN or infinite values (or values beyond float32)")
    return out
