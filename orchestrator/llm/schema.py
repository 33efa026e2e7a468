"""JSON-schema helpers for LLM output: compact a schema, and coerce a reply into its bounds.

Small models write ``"width": 0``, ``"lr": 10``, ``"epochs": "20"`` or keys that do not
exist, even under a grammar. ``coerce_to_schema`` turns such a value into one the schema
accepts where that is unambiguous (clamp numbers, parse numeric strings, drop unknown
keys and unknown union members) and notes every change, so the caller can say what it
bounded. What cannot be repaired is dropped; strict validation afterwards decides.
Notes quote values shortened (``show``), so a megabyte string or a list nested a
thousand deep costs a line, not a megabyte or a RecursionError.
"""

from __future__ import annotations

import copy
import math
import re
import reprlib
from typing import Any

_DROP = object()  # marker: leave this value out
_NOISE = ("title", "description", "discriminator", "examples")
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 60, 60, 40


def show(value: Any) -> str:
    """A short repr of ``value`` for a note: bounded in length and depth, never raising."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length():,} bits>"  # repr() may refuse it
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError):  # pragma: no cover - reprlib bounds depth already
        return f"<{type(value).__name__}>"


def _key(key: Any) -> str:
    return key if isinstance(key, str) and len(key) <= 40 else show(key)


def compact_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy without titles, descriptions and discriminators (smaller prompts and grammars)."""
    if isinstance(schema, dict):
        return {k: compact_schema(v) for k, v in schema.items() if k not in _NOISE}
    if isinstance(schema, list):
        return [compact_schema(v) for v in schema]
    return copy.deepcopy(schema)


def resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/Name``) to its definition."""
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local $refs are supported, got {ref!r}")
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def coerce_to_schema(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None,
                     ) -> tuple[Any, list[str]]:
    """``value`` made to fit ``schema`` where unambiguous, and notes of every change."""
    notes: list[str] = []
    out = _coerce(value, schema, root or schema, "$", notes)
    return (None if out is _DROP else out), notes


def _coerce(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str,
            notes: list[str]) -> Any:
    schema = resolve(schema, root)
    if "anyOf" in schema:
        return _coerce_union(value, schema["anyOf"], root, path, notes)
    if "enum" in schema:
        return _coerce_enum(value, schema["enum"], path, notes)
    kind = schema.get("type")
    handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
    return value if handler is None else handler(value, schema, root, path, notes)


def _coerce_union(value: Any, options: list[dict[str, Any]], root: dict[str, Any], path: str,
                  notes: list[str]) -> Any:
    branches = [resolve(o, root) for o in options]
    if value is None and any(b.get("type") == "null" for b in branches):
        return None
    tagged = [b for b in branches if "enum" in b.get("properties", {}).get("type", {})]
    if tagged:  # a tagged union of objects: choose by the "type" field
        tag = value.get("type") if isinstance(value, dict) else None
        for branch in tagged:
            for name in branch["properties"]["type"]["enum"]:
                if isinstance(tag, str) and tag.strip().lower() == str(name).lower():
                    return _coerce({**value, "type": name}, branch, root, path, notes)
        notes.append(f"{path}: dropped, unknown type {show(tag)}")
        return _DROP
    for branch in branches:
        if branch.get("type") != "null":
            out = _coerce(value, branch, root, path, notes)
            if out is not _DROP:
                return out
    return _DROP


def _coerce_enum(value: Any, allowed: list[Any], path: str, notes: list[str]) -> Any:
    if value in allowed:
        return value
    if isinstance(value, str):
        for option in allowed:
            if isinstance(option, str) and option.lower() == value.strip().lower():
                notes.append(f"{path}: {show(value)} -> {option!r}")
                return option
    notes.append(f"{path}: dropped {show(value)}, not one of {allowed}")
    return _DROP


def _coerce_object(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str,
                   notes: list[str]) -> Any:
    if not isinstance(value, dict):
        notes.append(f"{path}: dropped {type(value).__name__}, expected an object")
        return _DROP
    props = schema.get("properties", {})
    closed = schema.get("additionalProperties") is False
    out = {}
    for key, item in value.items():
        if key not in props:
            if closed:
                notes.append(f"{path}.{_key(key)}: dropped unknown key")
                continue
            out[key] = item
            continue
        fixed = _coerce(item, props[key], root, f"{path}.{_key(key)}", notes)
        if fixed is not _DROP:
            out[key] = fixed
    return out


def _coerce_array(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str,
                  notes: list[str]) -> Any:
    if not isinstance(value, list):
        notes.append(f"{path}: dropped {type(value).__name__}, expected a list")
        return _DROP
    items = schema.get("items", {})
    out = [_coerce(v, items, root, f"{path}[{i}]", notes) for i, v in enumerate(value)]
    out = [v for v in out if v is not _DROP]
    limit = schema.get("maxItems")
    if limit is not None and len(out) > limit:
        notes.append(f"{path}: cut from {len(out)} to {limit} items")
        out = out[:limit]
    return out


def _as_number(value: Any, path: str, notes: list[str]) -> float | None:
    if isinstance(value, bool):
        notes.append(f"{path}: dropped boolean {value!r}, expected a number")
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            notes.append(f"{path}: dropped {show(value)}, not a number")
            return None
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:  # beyond any float, so beyond any bound
            value = math.inf if value > 0 else -math.inf
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        notes.append(f"{path}: dropped {show(value)}, not a finite number")
        return None
    return value


def clamp(value: float, low: float | None, high: float | None) -> float:
    """``value`` limited to [low, high] (either bound may be None)."""
    if low is not None and value < low:
        return low
    if high is not None and value > high:
        return high
    return value


def _coerce_number(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str,
                   notes: list[str]) -> Any:
    number = _as_number(value, path, notes)
    if number is None:
        return _DROP
    integer = schema.get("type") == "integer"
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum")
    if "exclusiveMaximum" in schema:  # the largest value below it that we can represent
        top = schema["exclusiveMaximum"]
        high = top - 1 if integer else math.nextafter(top, -math.inf)
    if "exclusiveMinimum" in schema and "minimum" not in schema:
        low = low + 1 if integer else math.nextafter(low, math.inf)
    fixed = clamp(round(number) if integer else float(number), low, high)
    fixed = int(fixed) if integer else float(fixed)
    if fixed != value:
        notes.append(f"{path}: {show(value)} -> {fixed!r}")
    return fixed


def _coerce_string(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str,
                   notes: list[str]) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        notes.append(f"{path}: dropped {show(value)}, expected a string")
        return _DROP
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        notes.append(f"{path}: dropped {type(value).__name__}, expected a string")
        return _DROP
    limit = schema.get("maxLength")
    if limit is not None and len(value) > limit:
        notes.append(f"{path}: cut to {limit} characters")
        value = value[:limit]
    if "pattern" in schema and not re.search(schema["pattern"], value):
        notes.append(f"{path}: dropped {show(value)}, does not match {schema['pattern']!r}")
        return _DROP
    return value


def _coerce_boolean(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str,
                    notes: list[str]) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        notes.append(f"{path}: {show(value)} -> boolean")
        return value.strip().lower() == "true"
    notes.append(f"{path}: dropped {show(value)}, expected true or false")
    return _DROP


_HANDLERS = {
    "object": _coerce_object,
    "array": _coerce_array,
    "integer": _coerce_number,
    "number": _coerce_number,
    "string": _coerce_string,
    "boolean": _coerce_boolean,
}
