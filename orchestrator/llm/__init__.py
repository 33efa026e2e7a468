"""LLM access: an OpenAI-compatible client, its records and errors, tolerant extraction."""

from orchestrator.llm.client import LLMClient, chat_url, is_strict_schema
from orchestrator.llm.errors import (
    LLMBadResponse,
    LLMError,
    LLMRejected,
    LLMTimeout,
    LLMUnavailable,
)
from orchestrator.llm.extract import extract_json_object, extract_python
from orchestrator.llm.records import ChatMessage, ChatResult, FormatMode, LLMCall
from orchestrator.llm.retry import RetryPolicy, parse_retry_after
from orchestrator.llm.urls import InsecureCredentialsWarning, plain_http_warning, redact_url

__all__ = [
    "ChatMessage",
    "ChatResult",
    "FormatMode",
    "InsecureCredentialsWarning",
    "LLMBadResponse",
    "LLMCall",
    "LLMClient",
    "LLMError",
    "LLMRejected",
    "LLMTimeout",
    "LLMUnavailable",
    "RetryPolicy",
    "chat_url",
    "extract_json_object",
    "extract_python",
    "is_strict_schema",
    "parse_retry_after",
    "plain_http_warning",
    "redact_url",
]
