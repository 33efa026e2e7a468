"""A small client for any OpenAI-compatible chat endpoint (OpenAI, llama.cpp, vLLM, ...).

It retries what is worth retrying (429, 5xx, refused connections, timeouts) with
exponential backoff and jitter, honouring ``Retry-After``; it negotiates how to ask for
structured output (OpenAI's ``json_schema``, then llama-cpp-python's ``json_object`` +
``schema``, then a schema written into the prompt) and remembers what worked; and it
hands every HTTP attempt to ``recorder`` as an ``LLMCall``. httpx errors become
``LLMError``s in ``_translate`` and nowhere else (tree in ``orchestrator.llm.errors``).

Credentials in the base URL (``user:pass@``, ``?key=``) and the API key are sent, and
never shown: messages name ``redact_url(base_url)`` and every text that is raised or
recorded goes through a ``Scrubber`` first. A body is read up to ``max_body_bytes``
and no further, whatever the server sends.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from orchestrator.exceptions import UsageError
from orchestrator.llm.errors import (
    LLMBadResponse,
    LLMError,
    LLMRejected,
    LLMTimeout,
    LLMUnavailable,
)
from orchestrator.llm.extract import valid_text
from orchestrator.llm.records import ChatMessage, ChatResult, FormatMode, LLMCall
from orchestrator.llm.retry import RETRYABLE_STATUSES, RetryPolicy
from orchestrator.llm.urls import (
    InsecureCredentialsWarning,
    Scrubber,
    plain_http_warning,
    redact_url,
)

Recorder = Callable[[LLMCall], None]
MessagesIn = Sequence[ChatMessage | dict[str, str]]

#: Order in which structured-output forms are tried until one is accepted.
NEGOTIATION_ORDER = (FormatMode.JSON_SCHEMA, FormatMode.JSON_OBJECT, FormatMode.PROMPT)
_FORMAT_WORDS = re.compile(r"response_format|json_schema|json_object|schema|grammar", re.I)
_MAX_ERROR_BODY = 2000
#: Largest response body read; a completion of a few thousand tokens is a few KiB.
MAX_BODY_BYTES = 4 * 1024 * 1024
_JSON = {"Content-Type": "application/json"}


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    usage: _Usage | None = None
    model: str = ""


class _ModelList(msgspec.Struct):
    data: list[dict[str, Any]]


_completion_decoder = msgspec.json.Decoder(_Completion)
_models_decoder = msgspec.json.Decoder(_ModelList)


class _FormatRejected(Exception):
    """Internal: the server refused this response_format; try the next one."""


@dataclass(frozen=True)
class _Request:
    """One request body (less the messages), its messages and how it asks for JSON."""

    fields: dict[str, Any]
    messages: tuple[ChatMessage, ...]
    mode: FormatMode
    negotiating: bool = False  # a refusal of the format moves on instead of failing


@dataclass
class _CallState:
    """Book-keeping across the HTTP attempts of one chat() call."""

    messages: tuple[ChatMessage, ...]
    purpose: str
    attempts: int = 0
    failures: list[str] = field(default_factory=list)


def chat_url(base_url: str) -> str:
    """The chat-completions URL for an OpenAI-style base URL (``/v1`` appended if absent).

    Credentials in ``base_url`` are kept (they are sent); errors show it redacted.
    """
    shown, scrub = redact_url(base_url), Scrubber.for_endpoint(base_url)
    try:
        url = httpx.URL(base_url.strip())
    except httpx.InvalidURL as exc:  # not "from exc": httpx's message may quote the URL whole
        raise UsageError(f"LLM base URL {shown!r} is not a URL: {scrub(str(exc))}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError(
            f"LLM base URL {shown!r} must look like http://HOST:PORT/v1 "
            "(an OpenAI-compatible endpoint)"
        )
    path = url.path.rstrip("/")
    if not re.search(r"/v\d+$", path):
        path += "/v1"
    return str(url.copy_with(path=path + "/chat/completions"))


def is_strict_schema(schema: Any) -> bool:
    """True when every object in ``schema`` closes its properties and requires them all.

    OpenAI's ``strict: true`` only accepts such schemas; others are sent non-strict.
    """
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            props = schema.get("properties", {})
            if schema.get("additionalProperties") is not False:
                return False
            if set(schema.get("required", ())) != set(props):
                return False
        return all(is_strict_schema(v) for v in schema.values())
    if isinstance(schema, list):
        return all(is_strict_schema(v) for v in schema)
    return True


def _as_messages(messages: MessagesIn) -> tuple[ChatMessage, ...]:
    out = []
    for m in messages:
        m = m if isinstance(m, ChatMessage) else msgspec.convert(m, ChatMessage)
        out.append(ChatMessage(m.role, valid_text(m.content)))  # a body must be valid UTF-8
    if not out:
        raise ValueError("chat() needs at least one message")
    return tuple(out)


def _with_schema_note(messages: tuple[ChatMessage, ...], schema: dict) -> tuple[ChatMessage, ...]:
    """Write the schema into the system prompt, for servers without structured output."""
    note = (
        "Reply with one JSON object only, no prose and no code fences. "
        f"It must match this JSON schema:\n{json.dumps(schema, separators=(',', ':'))}"
    )
    if messages[0].role == "system":
        first = ChatMessage("system", f"{messages[0].content}\n\n{note}")
        return (first, *messages[1:])
    return (ChatMessage("system", note), *messages)


def _response_format(mode: FormatMode, schema: dict, name: str) -> dict | None:
    if mode is FormatMode.JSON_SCHEMA:
        spec = {"name": name, "schema": schema, "strict": is_strict_schema(schema)}
        return {"type": "json_schema", "json_schema": spec}
    if mode is FormatMode.JSON_OBJECT:
        return {"type": "json_object", "schema": schema}
    return None


def _translate(exc: httpx.HTTPError, url: str, timeout: float, scrub: Scrubber) -> LLMError:
    """The one place where httpx's exceptions become ours (``url`` is already redacted)."""
    if isinstance(exc, httpx.TimeoutException):
        return LLMTimeout(f"{url}: no answer within {timeout:g} s ({type(exc).__name__})")
    detail = scrub(str(exc))
    if isinstance(exc, httpx.ConnectError):
        return LLMUnavailable(
            f"cannot connect to {url}: {detail}; is the LLM server running at that address?"
        )
    return LLMUnavailable(f"{url}: {type(exc).__name__}: {detail}")


def _read_body(resp: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """Up to ``cap`` bytes of the (decoded) body, and whether there was more."""
    declared = resp.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > cap):
        return b"", True  # said so up front: do not read any of it
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            return b"".join(chunks)[:cap], True
    return b"".join(chunks), False


class LLMClient:
    """Chat completions against one OpenAI-compatible endpoint and model."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 4,
        transport: httpx.BaseTransport | None = None,
        recorder: Recorder | None = None,
        retry: RetryPolicy | None = None,
        response_format: FormatMode | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        if timeout <= 0:
            raise UsageError(f"LLM timeout must be > 0 seconds, got {timeout}")
        if max_body_bytes < 1:
            raise UsageError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        self._url = chat_url(base_url)  # with its credentials: sent, never shown
        self.url = redact_url(self._url)  # what messages and records name
        self._scrub = Scrubber.for_endpoint(base_url, api_key)
        warning = plain_http_warning(base_url, api_key)
        if warning:
            warnings.warn(warning, InsecureCredentialsWarning, stacklevel=2)
        self.model = model
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self.retry = retry or RetryPolicy(max_retries=max_retries)
        self._recorder = recorder
        self._sleep = sleep
        if response_format is FormatMode.NONE:
            raise UsageError("response_format=NONE is meaningless; leave it None to negotiate")
        # A forced mode is never renegotiated; otherwise start at the richest form.
        self._mode = response_format or NEGOTIATION_ORDER[0]
        self._confirmed = response_format is not None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            transport=transport,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        )

    @property
    def response_format(self) -> FormatMode | None:
        """The structured-output form the server accepted, or None before it has."""
        return self._mode if self._confirmed else None

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def models(self) -> list[str]:
        """Model ids the endpoint lists (a cheap readiness and credentials check)."""
        chat = httpx.URL(self._url)
        url = chat.copy_with(path=chat.path.removesuffix("/chat/completions") + "/models")
        shown = redact_url(str(url))
        try:
            with self._http.stream("GET", url) as resp:
                status = resp.status_code
                raw, more = _read_body(resp, self.max_body_bytes if status == 200
                                       else _MAX_ERROR_BODY)
        except httpx.HTTPError as exc:
            # not "from exc": httpx's exception holds the request, credentials and all
            raise _translate(exc, shown, self.timeout, self._scrub) from None
        if status != 200:
            text = self._scrub(raw.decode("utf-8", "replace")[:300])
            raise LLMRejected(f"{shown} answered {status}: {text}", status)
        if more:
            raise LLMBadResponse(f"{shown} sent a model list over {self.max_body_bytes:,} bytes")
        try:
            listed = _models_decoder.decode(raw).data
        except (msgspec.DecodeError, RecursionError) as exc:
            raise LLMBadResponse(f"{shown} sent an unreadable model list: "
                                 f"{self._scrub(str(exc))}") from None
        return [m["id"] for m in listed if isinstance(m.get("id"), str)]

    def chat(
        self,
        messages: MessagesIn,
        *,
        schema: dict | None = None,
        schema_name: str = "response",
        temperature: float = 0.2,
        max_tokens: int = 1024,
        seed: int | None = None,
        purpose: str = "",
    ) -> ChatResult:
        """One completion; with ``schema`` the reply is asked to be JSON matching it."""
        msgs = _as_messages(messages)
        base: dict[str, Any] = {"model": self.model, "temperature": temperature,
                                "max_tokens": max_tokens}
        if seed is not None:
            base["seed"] = seed
        state = _CallState(messages=msgs, purpose=purpose)
        if schema is None:
            return self._request(_Request(base, msgs, FormatMode.NONE), state)
        return self._negotiate(base, schema, schema_name, state)

    def _negotiate(self, base: dict, schema: dict, name: str, state: _CallState) -> ChatResult:
        """Try each structured-output form in turn (or the one known to work)."""
        for mode in (self._mode,) if self._confirmed else NEGOTIATION_ORDER:
            fmt = _response_format(mode, schema, name)
            msgs = state.messages
            if mode is FormatMode.PROMPT:
                msgs = _with_schema_note(msgs, schema)
            request = _Request({**base, "response_format": fmt} if fmt else base, msgs, mode,
                               negotiating=not self._confirmed and fmt is not None)
            try:
                result = self._request(request, state)
            except _FormatRejected:
                continue
            self._mode, self._confirmed = mode, True
            return result
        raise LLMRejected(f"{self.url} refused every structured-output form: {state.failures}")

    def _request(self, request: _Request, state: _CallState) -> ChatResult:
        """POST with retries; raises _FormatRejected when negotiation should move on."""
        body = msgspec.json.encode({**request.fields, "messages": request.messages})
        for retry in range(self.retry.max_retries + 1):
            outcome = self._attempt(body, request, state)
            if isinstance(outcome, ChatResult):
                return outcome
            error, retry_after = outcome
            if retry == self.retry.max_retries:
                raise error
            self._sleep(self.retry.delay(retry, retry_after))
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, body: bytes, request: _Request, state: _CallState,
                 ) -> ChatResult | tuple[LLMError, str | None]:
        """One HTTP attempt: a result, or a retryable error with its Retry-After."""
        state.attempts += 1
        record = {"time": time.time(), "model": self.model, "messages": request.messages,
                  "response_format": request.mode, "attempt": state.attempts,
                  "purpose": state.purpose}
        clock = time.monotonic()
        try:
            with self._http.stream("POST", self._url, content=body, headers=_JSON) as resp:
                status, retry_after = resp.status_code, resp.headers.get("retry-after")
                raw, more = _read_body(resp, self.max_body_bytes if status == 200
                                       else _MAX_ERROR_BODY)
        except httpx.HTTPError as exc:
            error = _translate(exc, self.url, self.timeout, self._scrub)
            self._record(LLMCall(**record, latency_s=time.monotonic() - clock, error=str(error)))
            return error, None
        latency = time.monotonic() - clock
        if status == 200:
            return self._success(raw, more, record, latency, state)
        text = self._scrub(raw.decode("utf-8", "replace"))
        error_text = f"HTTP {status}: {text}"
        self._record(LLMCall(**record, status=status, response=text,
                             latency_s=latency, error=error_text))
        state.failures.append(f"{request.mode.value}: {error_text[:200]}")
        if request.negotiating and _is_format_rejection(status, text):
            raise _FormatRejected(error_text)
        if status not in RETRYABLE_STATUSES:
            raise LLMRejected(f"{self.url} refused the request: {error_text}", status)
        error = LLMUnavailable(f"{self.url} kept failing after {state.attempts} attempts; "
                               f"last {error_text}")
        return error, retry_after

    def _success(self, raw: bytes, more: bool, record: dict[str, Any], latency: float,
                 state: _CallState) -> ChatResult:
        """Decode a 200 answer into a ChatResult (LLMBadResponse if it is not a completion)."""
        def refuse(error: LLMBadResponse) -> LLMBadResponse:
            shown = self._scrub(raw[:_MAX_ERROR_BODY].decode("utf-8", "replace"))
            self._record(LLMCall(**record, status=200, response=shown, latency_s=latency,
                                 error=str(error)))
            return error

        if more:
            raise refuse(LLMBadResponse(f"{self.url} sent a response over the "
                                        f"{self.max_body_bytes:,}-byte cap; reading stopped there"))
        try:
            completion = _completion_decoder.decode(raw)
            choice = completion.choices[0]
        except (msgspec.DecodeError, RecursionError, IndexError) as exc:  # deep nesting: Recursion
            raise refuse(LLMBadResponse(f"{self.url} sent an unreadable completion: "
                                        f"{self._scrub(str(exc))}")) from exc
        usage = completion.usage or _Usage()
        text = self._scrub(choice.message.content or "")
        tokens = {"prompt_tokens": usage.prompt_tokens,
                  "completion_tokens": usage.completion_tokens}
        self._record(LLMCall(**record, status=200, response=text, latency_s=latency, **tokens))
        return ChatResult(text=text, model=completion.model or self.model,
                          response_format=record["response_format"], latency_s=latency,
                          attempts=state.attempts, finish_reason=choice.finish_reason or "",
                          **tokens)

    def _record(self, call: LLMCall) -> None:
        if self._recorder is not None:
            self._recorder(call)


def _is_format_rejection(status: int, body: str) -> bool:
    """Did the server refuse the response_format (rather than fail for another reason)?

    llama-cpp-python answers OpenAI's json_schema form with a bare 500, so while a form
    is unproven any 500 moves negotiation on; 400/422 must name the format.
    """
    if status == 500:
        return True
    return status in (400, 422) and bool(_FORMAT_WORDS.search(body))
