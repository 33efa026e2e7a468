"""Untrusted text made inert before it is shown.

Failure messages, tracebacks, class and model names, rationales and LLM errors
come from a hostile worker, a model's source or an LLM. Written raw to a
terminal, an escape sequence in them can clear the screen, move the cursor to
overwrite a line with a fake ``PASSED``, set the window title or plant a
hyperlink; bidi controls and other invisible format characters reorder or hide
what a line appears to say. ``inert`` replaces every character that is not
printable with a visible escape (``\\x1b``, ``\\u202e``), so the text shows
what it holds and does nothing.

Rich markup is a separate hazard: give rich ``rich.text.Text(inert(...))``,
never an untrusted string, which it would read as ``[bold]``/``[link=...]``
markup.
"""

from __future__ import annotations

#: Marker appended when ``limit`` cuts a text.
CUT = "…"


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def inert(text: object, limit: int | None = None, *, multiline: bool = False) -> str:
    """``text`` with every non-printable character (controls, bidi, format, separators) escaped.

    ``str.isprintable`` decides: C0/C1 controls (ESC, CSI, BEL, backspace, CR),
    DEL, bidi overrides and isolates, zero-width and tag characters, line and
    paragraph separators, surrogates and unassigned code points are escaped; the
    ASCII space and every printable character pass unchanged. ``multiline``
    keeps ``\\n`` and ``\\t`` (a ``\\r\\n`` becomes ``\\n``); otherwise they are
    escaped too, so one field stays on one line. ``limit`` cuts the input to
    that many characters (with a marker) before escaping.
    """
    value = str(text)
    if limit is not None and len(value) > limit:
        value = value[:limit] + CUT
    if value.isprintable():
        return value
    if multiline:
        value = value.replace("\r\n", "\n")
        return "".join(ch if ch.isprintable() or ch in "\n\t" else _escape(ch) for ch in value)
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in value)
