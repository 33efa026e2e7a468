"""Fixtures of the evaluator's tests: one torch thread, and digits prepared once per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from evaluator.datasets import load_dataset
from evaluator.prepare import PreparedData, prepare


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """As in a sandbox capped to one core: on a busy shared machine, 2 OpenMP threads run ~15x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> PreparedData:
    """sklearn's digits, split and normalised (a module may override this with the raw data)."""
    from evaluator.recipe import warm_up

    warm_up()  # torch's one-time lazy imports are not training time
    return prepare(load_dataset("digits"), seed=0)
