"""Fixtures of the registry tests: a fresh run directory with realistic records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.registry import Registry
from tests.registry import factories


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Where a test's run lives (not created yet)."""
    return tmp_path / "run_test"


@pytest.fixture
def registry(run_dir: Path) -> Iterator[Registry]:
    """A writable registry of a new run (no per-candidate plots), closed after the test."""
    reg = Registry.create(run_dir, factories.settings(), plots=False)
    yield reg
    reg.close()
