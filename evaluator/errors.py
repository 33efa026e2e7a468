"""Errors the evaluator raises on purpose; the evaluator imports nothing of the orchestrator.

    ResearcherError
    ├── UsageError(ValueError)     the caller asked for something that cannot work
    └── DataError(ValueError)      a dataset is missing or malformed

They are the project's root error classes: ``orchestrator.exceptions`` re-exports
these very classes (and adds its sandbox errors below ``ResearcherError``), so the
orchestrator's ``except UsageError`` / ``except DataError`` / ``except ResearcherError``
catch what the evaluator raises, with the CLI's exit codes and messages unchanged.
"""

from __future__ import annotations


class ResearcherError(Exception):
    """Root of every error this project raises on purpose."""


class UsageError(ResearcherError, ValueError):
    """The user asked for something that cannot work; the message says how to fix it."""


class DataError(ResearcherError, ValueError):
    """A dataset is missing or malformed; the message says what to install or where."""
