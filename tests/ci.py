"""Tests that cannot run here: a skip on a developer's machine, a failure under CI (``CI=true``).

CI runs as root with Docker and the data, so whatever a test needs is there; a skip there
would count a test that never ran as passing.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True under CI (``CI`` set to 1, true or yes)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere, saying ``reason``."""
    if in_ci():
        pytest.fail(f"{reason}; CI must run this test, never skip it")
    pytest.skip(reason)


def needs_root(reason: str) -> None:
    """``unavailable(reason)`` unless this process is root."""
    if os.geteuid() != 0:
        unavailable(reason)
