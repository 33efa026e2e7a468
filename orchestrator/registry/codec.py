"""Structs to JSON and back, keeping NaN and infinities (msgspec alone writes them as null).

Non-finite floats are written as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"``, so every stored document is standard JSON; decoding uses
msgspec's lax mode, which reads those strings back into float fields.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


def _finite(value: Any) -> Any:
    """``value`` (plain builtins) with non-finite floats spelled as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_builtins(value: Any) -> Any:
    """JSON-ready builtins of ``value`` (Structs, enums, tuples ...), NaN-safe."""
    return _finite(msgspec.to_builtins(value))


def to_json(value: Any) -> str:
    """``value`` as a compact JSON string, NaN-safe."""
    return msgspec.json.encode(to_builtins(value)).decode()


def from_json(data: str | bytes, type: type[T]) -> T:  # noqa: A002 - msgspec's own name
    """Decode JSON written by :func:`to_json` into ``type``."""
    return msgspec.json.decode(data, type=type, strict=False)


def maybe(data: str | bytes | None, type: type[T]) -> T | None:  # noqa: A002
    """:func:`from_json`, or None for a NULL column."""
    return None if data is None else from_json(data, type)
