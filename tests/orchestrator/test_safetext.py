"""``inert``: whatever text comes in, nothing that drives a terminal or reorders a line comes out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.safetext import CUT, inert

#: Characters that act on a terminal or on how a line reads, none of which may survive.
DANGEROUS = (
    [chr(c) for c in range(0x20)] + [chr(c) for c in range(0x7F, 0xA0)]  # C0, DEL, C1 (0x9b is CSI)
    + [chr(c) for c in range(0x202A, 0x202F)] + [chr(c) for c in range(0x2066, 0x206A)]  # bidi
    + ["\u200b", "\u200d", "\u200e", "\u200f", "\u061c", "\u2028", "\u2029", "\ufeff", "\U000e0041"]
)

# Every code point, surrogates included (they come from surrogateescape-decoded bytes).
ANY_TEXT = st.text(st.characters(exclude_categories=()))
PRINTABLE_TEXT = st.text(st.characters(exclude_categories=()).filter(str.isprintable))


@given(ANY_TEXT)
def test_one_line_output_is_printable_whatever_the_input(text: str) -> None:
    out = inert(text)
    assert out.isprintable()
    assert not set(out) & set(DANGEROUS)
    out.encode("utf-8")  # no lone surrogate either: the stream can always write it


@given(ANY_TEXT)
def test_multiline_output_keeps_only_newlines_and_tabs(text: str) -> None:
    out = inert(text, multiline=True)
    assert all(ch.isprintable() or ch in "\n\t" for ch in out)
    assert "\r" not in out and "\x1b" not in out


@given(PRINTABLE_TEXT)
def test_printable_text_passes_unchanged(text: str) -> None:
    assert inert(text) == text
    assert inert(text, multiline=True) == text


@given(st.lists(PRINTABLE_TEXT).map("\n".join))
def test_printable_lines_pass_unchanged_in_multiline_mode(text: str) -> None:
    assert inert(text, multiline=True) == text


@given(ANY_TEXT)
def test_inert_is_idempotent(text: str) -> None:
    assert inert(inert(text)) == inert(text)
    once = inert(text, multiline=True)
    assert inert(once, multiline=True) == once


@given(ANY_TEXT, st.integers(min_value=0, max_value=50))
def test_limit_cuts_before_escaping(text: str, limit: int) -> None:
    out = inert(text, limit)
    if len(text) <= limit:
        assert out == inert(text)
    else:
        assert out == inert(text[:limit]) + CUT


@pytest.mark.parametrize(("raw", "shown"), [
    ("\x1b[2J\x1b[H PASSED", "\\x1b[2J\\x1b[H PASSED"),  # clear screen, cursor home
    ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),  # window title, ended by BEL
    ("\x9b31m", "\\x9b31m"),  # the one-byte C1 CSI
    ("ok\rFAILED\x08\x08", "ok\\x0dFAILED\\x08\\x08"),  # overwrite the line
    ("a\nb\tc", "a\\x0ab\\x09c"),  # one field stays on one line
    ("safe\u202eexe.txt", "safe\\u202eexe.txt"),  # right-to-left override
    ("\u2066x\u2069", "\\u2066x\\u2069"),  # isolates
    ("tag\U000e0041", "tag\\U000e0041"),  # invisible tag characters
    ("[bold red]PASSED[/] é 数", "[bold red]PASSED[/] é 数"),  # printable: untouched
])
def test_controls_become_visible_escapes(raw: str, shown: str) -> None:
    assert inert(raw) == shown


def test_multiline_keeps_line_structure_but_not_carriage_returns() -> None:
    assert inert("a\r\nb\tc\rd", multiline=True) == "a\nb\tc\\x0dd"
    assert inert(ValueError("x\x1b")) == "x\\x1b"  # any object, by its str()
