"""Errors of the LLM client, translated from httpx in one place (``client._translate``).

    ResearcherError                     (orchestrator.exceptions)
    └── LLMError
        ├── LLMUnavailable(ConnectionError)  refused, reset, 429/5xx after every retry
        ├── LLMTimeout(TimeoutError)         no answer within the client's timeout
        ├── LLMRejected(ValueError)          a 4xx that no retry can fix (bad key, bad model)
        └── LLMBadResponse(ValueError)       an answer, but not one we can use

The planner catches ``LLMError`` and turns it into a failed or default candidate;
nothing here escapes a research run. Messages name the endpoint redacted
(``orchestrator.llm.urls.redact_url``) and quote server text with its credentials
scrubbed, so an error can be shown, logged and stored as it is.
"""

from __future__ import annotations

from orchestrator.exceptions import ResearcherError


class LLMError(ResearcherError):
    """Root of every error the LLM client raises."""


class LLMUnavailable(LLMError, ConnectionError):
    """The endpoint cannot be reached or keeps failing after every retry."""


class LLMTimeout(LLMError, TimeoutError):
    """The endpoint did not answer within the client's timeout."""


class LLMRejected(LLMError, ValueError):
    """The endpoint refused the request for a reason retrying cannot fix."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class LLMBadResponse(LLMError, ValueError):
    """The endpoint answered, but the answer is malformed or holds nothing usable."""
