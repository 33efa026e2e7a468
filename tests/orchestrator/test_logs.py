"""--verbose: a line per epoch and debug logging, every line inert."""

from __future__ import annotations

import logging

import pytest

from orchestrator import cli, logs
from sandbox_image.protocol import EpochStats


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_formatter_leaves_no_control_character() -> None:
    record = logging.LogRecord("researcher.llm", logging.INFO, __file__, 1, "reply %s", ("\x1b[31mred\x07",), None)
    line = logs.InertFormatter("%(message)s").format(record)
    assert "\x1b" not in line and "\x07" not in line and "red" in line


def test_verbose_adds_one_debug_handler_and_quiet_adds_none(root_logging) -> None:
    before = list(root_logging.handlers)
    logs.setup(False)
    assert root_logging.handlers == before
    logs.setup(True)
    logs.setup(True)
    added = [h for h in root_logging.handlers if h not in before]
    assert len(added) == 1 and isinstance(added[0].formatter, logs.InertFormatter)
    assert root_logging.level == logging.DEBUG and logs.epochs.isEnabledFor(logging.INFO)


def test_the_epoch_line_names_seed_epoch_losses_and_accuracies() -> None:
    stats = EpochStats(epoch=4, train_loss=0.5123, val_loss=0.4981, train_acc=0.8431, val_acc=0.851, seconds=1.0)
    assert logs.epoch_line(stats, 1, 20) == "seed 1 epoch 4/20: loss 0.512/0.498 acc 0.843/0.851"


@pytest.mark.parametrize("command", [["run"], ["check", "m.py"], ["resume", "runs/x"]])
def test_run_check_and_resume_take_verbose(command, monkeypatch) -> None:
    monkeypatch.delenv("RESEARCHER_VERBOSE", raising=False)
    parser = cli.build_parser()
    assert parser.parse_args([*command, "-v"]).verbose is True
    assert parser.parse_args(command).verbose is False
    monkeypatch.setenv("RESEARCHER_VERBOSE", "1")
    assert parser.parse_args(command).verbose is True
