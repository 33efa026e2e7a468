"""A small client for any OpenAI-compatible chat endpoint (OpenAI, llama.cpp, vLLM, ...).

It retries what is worth retrying (429, 5xx, refused connections, timeouts) with
exponential backoff and jitter, honouring ``Retry-After``; it negotiates how to ask for
structured output (OpenAI's ``json_schema``, then llama-cpp-python's ``json_object`` +
``schema``, then a schema written into the prompt) and remembers what worked; and it
hands every HTTP attempt to ``recorder`` as an ``LLMCall``. httpx errors become
``LLMError``s in ``_translate`` and nowhere else (tree in ``orchestrator.llm.errors``).
"""

from __future__ import annotations

import json
import re
import time
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
from orchestrator.llm.records import ChatMessage, ChatResult, FormatMode, LLMCall
from orchestrator.llm.retry import RETRYABLE_STATUSES, RetryPolicy

Recorder = Callable[[LLMCall], None]
MessagesIn = Sequence[ChatMessage | dict[str, str]]

#: Order in which structured-output forms are tried until one is accepted.
NEGOTIATION_ORDER = (FormatMode.JSON_SCHEMA, FormatMode.JSON_OBJECT, FormatMode.PROMPT)
_FORMAT_WORDS = re.compile(r"response_format|json_schema|json_object|schema|grammar", re.I)
_MAX_ERROR_BODY = 2000
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
    """The chat-completions URL for an OpenAI-style base URL (``/v1`` appended if absent)."""
    try:
        url = httpx.URL(base_url.strip())
    except httpx.InvalidURL as exc:
        raise UsageError(f"LLM base URL {base_url!r} is not a URL: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError(
            f"LLM base URL {base_url!r} must look like http://HOST:PORT/v1 "
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
        if isinstance(m, ChatMessage):
            out.append(m)
        else:
            out.append(msgspec.convert(m, ChatMessage))
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


def _translate(exc: httpx.HTTPError, url: str, timeout: float) -> LLMError:
    """The one place where httpx's exceptions become ours."""
    if isinstance(exc, httpx.TimeoutException):
        return LLMTimeout(f"{url}: no answer within {timeout:g} s ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return LLMUnavailable(
            f"cannot connect to {url}: {exc}; is the LLM server running at that address?"
        )
    return LLMUnavailable(f"{url}: {type(exc).__name__}: {exc}")


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
    ) -> None:
        if timeout <= 0:
            raise UsageError(f"LLM timeout must be > 0 seconds, got {timeout}")
        self.url = chat_url(base_url)
        self.model = model
        self.timeout = timeout
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
        url = self.url.removesuffix("/chat/completions") + "/models"
        try:
            resp = self._http.get(url)
        except httpx.HTTPError as exc:
            raise _translate(exc, url, self.timeout) from exc
        if resp.status_code != 200:
            raise LLMRejected(f"{url} answered {resp.status_code}: {resp.text[:300]}",
                              resp.status_code)
        try:
            return [str(m.get("id", "")) for m in _models_decoder.decode(resp.content).data]
        except msgspec.DecodeError as exc:
            raise LLMBadResponse(f"{url} sent an unreadable model list: {exc}") from exc

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
            resp = self._http.post(self.url, content=body, headers=_JSON)
        except httpx.HTTPError as exc:
            error = _translate(exc, self.url, self.timeout)
            self._record(LLMCall(**record, latency_s=time.monotonic() - clock, error=str(error)))
            return error, None
        latency = time.monotonic() - clock
        if resp.status_code == 200:
            return self._success(resp, record, latency, state)
        text = resp.text[:_MAX_ERROR_BODY]
        error_text = f"HTTP {resp.status_code}: {text}"
        self._record(LLMCall(**record, status=resp.status_code, response=text,
                             latency_s=latency, error=error_text))
        state.failures.append(f"{request.mode.value}: {error_text[:200]}")
        if request.negotiating and _is_format_rejection(resp.status_code, text):
            raise _FormatRejected(error_text)
        if resp.status_code not in RETRYABLE_STATUSES:
            raise LLMRejected(f"{self.url} refused the request: {error_text}", resp.status_code)
        error = LLMUnavailable(f"{self.url} kept failing after {state.attempts} attempts; "
                               f"last {error_text}")
        return error, resp.headers.get("retry-after")

    def _success(self, resp: httpx.Response, record: dict[str, Any], latency: float,
                 state: _CallState) -> ChatResult:
        """Decode a 200 answer into a ChatResult (LLMBadResponse if it is not a completion)."""
        try:
            completion = _completion_decoder.decode(resp.content)
            choice = completion.choices[0]
        except (msgspec.DecodeError, IndexError) as exc:
            error = LLMBadResponse(f"{self.url} sent an unreadable completion: {exc}")
            self._record(LLMCall(**record, status=200, response=resp.text[:_MAX_ERROR_BODY],
                                 latency_s=latency, error=str(error)))
            raise error from exc
        usage = completion.usage or _Usage()
        text = choice.message.content or ""
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
