"""What one chat call produced: the result a caller uses and the record the registry keeps."""

from __future__ import annotations

import enum

import msgspec


class FormatMode(str, enum.Enum):
    """How a JSON schema is put to the server (tried in this order, first that works is kept)."""

    JSON_SCHEMA = "json_schema"  # OpenAI: {"type": "json_schema", "json_schema": {...}}
    JSON_OBJECT = "json_object"  # llama-cpp-python: {"type": "json_object", "schema": {...}}
    PROMPT = "prompt"  # no response_format; the schema is written into the prompt
    NONE = "none"  # the caller asked for free text


class ChatMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One message of a chat prompt."""

    role: str  # system | user | assistant
    content: str


class ChatResult(msgspec.Struct, frozen=True, kw_only=True):
    """The usable outcome of one ``LLMClient.chat`` call."""

    text: str
    model: str
    response_format: FormatMode
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0  # of the successful attempt
    attempts: int = 1  # HTTP requests made, retries and format fallbacks included
    finish_reason: str = ""


class LLMCall(msgspec.Struct, frozen=True, kw_only=True):
    """One HTTP attempt at a chat completion, kept in the registry whatever its outcome.

    ``response`` and ``error`` come scrubbed of the endpoint's credentials and capped in
    size by the client; they are safe to store and show.
    """

    time: float  # unix seconds at the start of the attempt
    model: str
    messages: tuple[ChatMessage, ...]
    response_format: FormatMode
    attempt: int  # 1-based within one chat() call
    status: int = 0  # HTTP status; 0 when no response arrived
    response: str = ""  # assistant text, or the error body
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""  # empty on success
    purpose: str = ""  # what the caller asked for ("propose", "repair", ...)
