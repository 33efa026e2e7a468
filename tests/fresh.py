"""Code run in a fresh interpreter, to see what it imports (start-up cost lives in imports)."""

from __future__ import annotations

import ast
import subprocess
import sys

#: torch.compile's stack: 1-2 s of CPU per sandbox start, which nothing in a sandbox needs.
COMPILER_STACK = ("torch._dynamo", "torch._inductor")


def compiler_stack_after(code: str) -> tuple[list[str], list[str]]:
    """Run ``code`` in a fresh Python; return which ``COMPILER_STACK`` modules it loaded, and the
    lines ``code`` itself printed."""
    probe = f"\nimport sys as _sys\nprint(sorted(m for m in {COMPILER_STACK!r} if m in _sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True, check=True)
    *printed, loaded = out.stdout.strip().splitlines()
    return ast.literal_eval(loaded), printed
