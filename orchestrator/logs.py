"""``--verbose``: debug logging and a line per epoch, every line made inert.

Log records carry untrusted text (LLM replies, model names, failure messages), so the
one handler formats them through ``safetext.inert``: no terminal escape reaches the
screen, whatever a model or an LLM wrote. Without ``--verbose`` only warnings show.
"""

from __future__ import annotations

import logging
import sys

from orchestrator.safetext import inert

#: One line per epoch of every candidate (``--verbose``), e.g. "c003 seed 1 epoch 4/20: ...".
epochs = logging.getLogger("researcher.epochs")


class InertFormatter(logging.Formatter):
    """A formatter whose output has no control characters (newlines kept for tracebacks)."""

    def format(self, record: logging.LogRecord) -> str:
        """The usual line, made inert."""
        return inert(super().format(record), multiline=True)


_HANDLER_NAME = "researcher-verbose"


def setup(verbose: bool) -> None:
    """With ``verbose``, log everything (DEBUG) to stderr; without, leave Python's default (warnings)."""
    if not verbose:
        return
    root = logging.getLogger()
    if not any(h.get_name() == _HANDLER_NAME for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(InertFormatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for noisy in ("matplotlib", "PIL", "urllib3", "docker", "httpcore"):  # their debug is not ours
        logging.getLogger(noisy).setLevel(logging.INFO)


def epoch_line(stats, seed: int, epochs_planned: int) -> str:
    """``seed 1 epoch 4/20: loss 0.512/0.498 acc 0.843/0.851`` from a Progress's stats."""
    return (f"seed {seed} epoch {stats.epoch}/{epochs_planned}: loss {stats.train_loss:.3f}/{stats.val_loss:.3f} "
            f"acc {stats.train_acc:.3f}/{stats.val_acc:.3f}")
