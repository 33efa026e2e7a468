"""Pull a JSON object or Python source out of what a model actually wrote.

Models wrap JSON in fences or prose, leave trailing commas, put raw newlines and tabs
inside strings (SmolLM2 does, even under a grammar) or stop mid-object. Every reading
here is tolerant of the first kinds and says plainly when nothing usable is there.

A hostile reply gets the same treatment: integers of thousands of digits, nesting
deep enough to exhaust the parser, lone surrogates and null bytes end in
``LLMBadResponse`` (or a value the schema coercion drops), never in another exception.
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
_MAX_INT_DIGITS = 1000  # longer JSON integers become floats (inf): int() would refuse them
_MAX_PARSE_CHARS = 1_000_000  # bare text longer than this is not parsed as Python
#: What parsing hostile text may raise besides a syntax error: nesting beyond the
#: recursion limit or the parser's stack (MemoryError), null bytes and lone surrogates
#: (ValueError), integers past int()'s digit limit (ValueError).
PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)


def valid_text(text: str) -> str:
    """``text`` with lone surrogates (which UTF-8 cannot carry) replaced by ``?``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _clean(value: Any) -> Any:
    """A decoded JSON value with every string made valid UTF-8 (iterative: depth is hostile)."""
    root = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if isinstance(item, str):
            container[key] = valid_text(item)
        elif isinstance(item, list):
            stack.extend((item, i) for i in range(len(item)))
        elif isinstance(item, dict):
            if not all(valid_text(k) is k for k in item):
                item = container[key] = {valid_text(k): v for k, v in item.items()}
            stack.extend((item, k) for k in item)
    return root[0]


def _parse_int(digits: str) -> int | float:
    # Past the limit int() raises ValueError; a float says "huge" (inf) and is bounded later.
    return int(digits) if len(digits.lstrip("-")) <= _MAX_INT_DIGITS else float(digits)


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
        return json.loads(candidate, strict=False, parse_int=_parse_int)
    except json.JSONDecodeError:
        return json.loads(strip_trailing_commas(candidate), strict=False, parse_int=_parse_int)


def _candidates(text: str) -> Iterator[str]:
    yield text
    for body in _fences(text, ("json", "")):
        yield body.strip()
    yield from balanced_objects(text)[0]


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text``; raises LLMBadResponse naming what was wrong."""
    if not text or not text.strip():
        raise LLMBadResponse("the model sent an empty reply where a JSON object was expected")
    unreadable = ""  # why a candidate that looked like JSON could not be read
    for candidate in _candidates(text.strip()):
        try:
            value = _loads(candidate)
        except json.JSONDecodeError:
            continue
        except (ValueError, RecursionError, MemoryError) as exc:  # nesting, digits
            unreadable = unreadable or f"{type(exc).__name__}: {str(exc)[:120]}"
            continue
        if isinstance(value, dict):
            return _clean(value)
    if unreadable:
        raise LLMBadResponse(f"the model's JSON cannot be read ({unreadable}); send a plain, "
                             f"shallow object: {_quote(text)}")
    if balanced_objects(text)[1]:
        raise LLMBadResponse("the model's JSON object is cut off (reply truncated? raise "
                             f"max_tokens): {_quote(text)}")
    raise LLMBadResponse(f"no JSON object found in the model's reply: {_quote(text)}")


def _defines_class(source: str) -> bool:
    if len(source) > _MAX_PARSE_CHARS:
        return False
    try:
        tree = ast.parse(source)
    except PARSE_ERRORS:
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
