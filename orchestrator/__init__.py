"""pytorch-researcher orchestrator: the trusted side.

The Python API (``orchestrator.api``) is re-exported here: ``from orchestrator import run``.
"""

from orchestrator import api
from orchestrator.api import *  # noqa: F403 - the API's names, listed once in api.__all__

__all__ = list(api.__all__)
