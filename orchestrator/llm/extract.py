"""Pull a JSON object or Python source out of what a model actually wrote.

Models wrap JSON in fences or prose, leave trailing commas, put raw newlines and tabs
inside strings (SmolLM2 does, even under a grammar) or stop mid-object. Every reading
here is tolerant of the first kinds and says plainly when nothing usable is there.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from typing import Any

from orchestrator.llm.errors import LLMBadResponse

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_CLOSER = re.compile(r"\s*[}\]]")
_SHOWN = 200  # characters of the reply quoted in an error


def _quote(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _fences(text: str, languages: tuple[str, ...]) -> Iterator[str]:
    """Bodies of ``` fences whose language is one of ``languages`` ("" = unlabelled)."""
    for match in _FENCE.finditer(text):
        if match.group(1).lower() in languages:
            yield match.group(2)


def balanced_objects(text: str) -> tuple[list[str], bool]:
    """Top-level ``{...}`` spans of ``text`` (string-aware), and whether one was left open."""
    spans: list[str] = []
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            start = i if depth == 0 else start
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans, depth > 0


def strip_trailing_commas(text: str) -> str:
    """Remove commas that directly precede ``}`` or ``]`` outside strings."""
    out: list[str] = []
    in_string, escaped = False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "," and _CLOSER.match(text, i + 1):
            continue
        out.append(ch)
    return "".join(out)


def _loads(candidate: str) -> Any:
    """json.loads that allows raw control characters in strings and trailing commas."""
    try:
        return json.loads(candidate, strict=False)
    except json.JSONDecodeError:
        return json.loads(strip_trailing_commas(candidate), strict=False)


def _candidates(text: str) -> Iterator[str]:
    yield text
    for body in _fences(text, ("json", "")):
        yield body.strip()
    yield from balanced_objects(text)[0]


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text``; raises LLMBadResponse naming what was wrong."""
    if not text or not text.strip():
        raise LLMBadResponse("the model sent an empty reply where a JSON object was expected")
    for candidate in _candidates(text.strip()):
        try:
            value = _loads(candidate)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    if balanced_objects(text)[1]:
        raise LLMBadResponse("the model's JSON object is cut off (reply truncated? raise "
                             f"max_tokens): {_quote(text)}")
    raise LLMBadResponse(f"no JSON object found in the model's reply: {_quote(text)}")


def _defines_class(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.ClassDef) for node in tree.body)


def _from_json(text: str, fields: tuple[str, ...]) -> str | None:
    try:
        obj = extract_json_object(text)
    except LLMBadResponse:
        return None
    for name in fields:
        value = obj.get(name)
        if isinstance(value, str) and value.strip():
            inner = list(_fences(value, ("python", "py", "")))  # a fence inside the string
            return (inner[0] if inner else value).strip() + "\n"
    return None


def extract_python(text: str, *, fields: tuple[str, ...] = ("python", "code", "source")) -> str:
    """Python source from a JSON field, a ```python fence, or bare source with a class."""
    if not text or not text.strip():
        raise LLMBadResponse("the model sent an empty reply where Python source was expected")
    found = _from_json(text, fields)
    if found is not None:
        return found
    fenced = [body for body in _fences(text, ("python", "py", "python3")) if body.strip()]
    fenced += [body for body in _fences(text, ("",)) if _defines_class(body)]
    if fenced:
        return max(fenced, key=len).strip() + "\n"
    if _defines_class(text):
        return text.strip() + "\n"
    raise LLMBadResponse(
        f"no Python source found in the model's reply (expected a JSON field "
        f"{fields[0]!r} or a ```python fence): {_quote(text)}"
    )
