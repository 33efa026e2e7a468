"""Numbers as people read them, shared by the terminal, the reports and the LLM's prompts."""

from __future__ import annotations


def flops(value: int | None) -> str:
    """Forward FLOPs per example with an SI prefix (``2.66 MFLOPs``); ``–`` when not counted."""
    if value is None:
        return "–"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}FLOPs"
    return f"{value} FLOPs"


def estimate(seconds: float) -> str:
    """An estimated duration: ``about 42 s``, or ``under 1 s`` (never ``about 0 s``)."""
    return "under 1 s" if seconds < 0.5 else f"about {seconds:.0f} s"
