"""LLMClient over a real local socket (the scripted fake server) and through MockTransport."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from orchestrator.exceptions import ResearcherError, UsageError
from orchestrator.llm import (
    ChatMessage,
    FormatMode,
    LLMBadResponse,
    LLMCall,
    LLMClient,
    LLMError,
    LLMRejected,
    LLMTimeout,
    LLMUnavailable,
    RetryPolicy,
    chat_url,
    is_strict_schema,
)
from tests.fakes.fake_llm_server import MODEL, FakeLLMServer, Reply

SCHEMA = {
    "type": "object",
    "properties": {"width": {"type": "integer", "minimum": 1}},
    "required": ["width"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "system", "content": "You design models."},
            {"role": "user", "content": "Propose a width."}]


def make_client(server: FakeLLMServer, **kwargs) -> tuple[LLMClient, list[LLMCall], list[float]]:
    calls: list[LLMCall] = []
    slept: list[float] = []
    kwargs.setdefault("retry", RetryPolicy(max_retries=kwargs.pop("max_retries", 3), base_s=0.01))
    client = LLMClient(server.base_url, MODEL, kwargs.pop("api_key", None),
                       recorder=calls.append, sleep=slept.append, **kwargs)
    return client, calls, slept


def test_json_schema_accepted_sends_openai_form_key_and_records_usage() -> None:
    with FakeLLMServer([Reply.json({"width": 8})]) as srv:
        client, calls, _ = make_client(srv, api_key="sk-test")
        with client:
            result = client.chat(MESSAGES, schema=SCHEMA, schema_name="proposal", purpose="propose")
        request = srv.chat_requests()[0]
    assert json.loads(result.text) == {"width": 8}
    assert result.response_format is FormatMode.JSON_SCHEMA
    assert client.response_format is FormatMode.JSON_SCHEMA
    assert request.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "proposal", "schema": SCHEMA, "strict": True},
    }
    assert request.headers["Authorization"] == "Bearer sk-test"
    assert request.body["model"] == MODEL
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    assert [(c.status, c.attempt, c.purpose, c.error) for c in calls] == [(200, 1, "propose", "")]
    assert calls[0].messages[1] == ChatMessage("user", "Propose a width.")


def test_negotiation_falls_back_to_llama_cpp_json_object_and_remembers_it() -> None:
    replies = [Reply.json({"width": 4}), Reply.json({"width": 5})]
    with FakeLLMServer(replies, reject_formats={"json_schema"}) as srv:
        client, calls, slept = make_client(srv)
        first = client.chat(MESSAGES, schema=SCHEMA)
        second = client.chat(MESSAGES, schema=SCHEMA)
        client.close()
        formats = [r.body.get("response_format", {}).get("type") for r in srv.chat_requests()]
    assert formats == ["json_schema", "json_object", "json_object"]
    assert srv.chat_requests()[1].body["response_format"]["schema"] == SCHEMA
    assert first.response_format is second.response_format is FormatMode.JSON_OBJECT
    assert (first.attempts, second.attempts) == (2, 1)
    assert client.response_format is FormatMode.JSON_OBJECT
    assert slept == []  # a refused format is not a transient error: no backoff
    assert calls[0].status == 500 and calls[0].response_format is FormatMode.JSON_SCHEMA


def test_negotiation_ends_in_prompt_mode_with_schema_in_the_system_prompt() -> None:
    with FakeLLMServer([Reply.json({"width": 3})], reject_formats={"json_schema", "json_object"},
                       reject_status=400) as srv:
        client, _, _ = make_client(srv)
        with client:
            result = client.chat(MESSAGES, schema=SCHEMA)
        last = srv.chat_requests()[-1].body
    assert result.response_format is FormatMode.PROMPT
    assert "response_format" not in last
    assert last["messages"][0]["role"] == "system"
    assert json.dumps(SCHEMA, separators=(",", ":")) in last["messages"][0]["content"]
    assert last["messages"][0]["content"].startswith("You design models.")


def test_400_not_about_the_format_is_rejected_without_retry() -> None:
    with FakeLLMServer([Reply.error(400, message="context length exceeded")]) as srv:
        client, calls, slept = make_client(srv)
        with client, pytest.raises(LLMRejected, match="context length") as info:
            client.chat(MESSAGES, schema=SCHEMA)
    assert info.value.status == 400 and len(calls) == 1 and slept == []


def test_429_retry_after_is_honoured_then_success() -> None:
    replies = [Reply.error(429, retry_after="0.25"), Reply.error(503), Reply.json({"width": 2})]
    with FakeLLMServer(replies) as srv:
        client, calls, slept = make_client(srv, response_format=FormatMode.JSON_OBJECT)
        with client:
            result = client.chat(MESSAGES, schema=SCHEMA)
    assert result.attempts == 3
    assert slept[0] == pytest.approx(0.25)  # the server's hint, not our backoff
    assert 0.005 <= slept[1] <= 0.02  # base 0.01 * 2**1, with jitter in [half, full]
    assert [c.status for c in calls] == [429, 503, 200]
    assert [c.attempt for c in calls] == [1, 2, 3]


def test_retry_after_is_capped() -> None:
    with FakeLLMServer([Reply.error(429, retry_after="3600"), Reply.json({"width": 2})]) as srv:
        client, _, slept = make_client(
            srv, retry=RetryPolicy(max_retries=1, base_s=0.01, retry_after_cap_s=1.5))
        with client:
            client.chat(MESSAGES)
    assert slept == [1.5]


def test_persistent_500_after_a_confirmed_format_gives_up_as_unavailable() -> None:
    with FakeLLMServer([Reply.json({"width": 1})] + [Reply.error(500)] * 5) as srv:
        client, calls, slept = make_client(srv, max_retries=2)
        client.chat(MESSAGES, schema=SCHEMA)  # confirms json_schema
        with pytest.raises(LLMUnavailable, match="HTTP 500") as info:
            client.chat(MESSAGES, schema=SCHEMA)
        client.close()
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, ResearcherError)
    assert len(calls) == 1 + 3 and len(slept) == 2
    assert slept[1] > slept[0] * 0.99 / 2  # backoff grows (with jitter)


def test_slow_reply_past_the_timeout_raises_llm_timeout() -> None:
    with FakeLLMServer([Reply.slow("late", delay_s=5.0)]) as srv:
        client, calls, _ = make_client(srv, timeout=0.3, max_retries=0)
        with client, pytest.raises(LLMTimeout, match="no answer within 0.3 s") as info:
            client.chat(MESSAGES)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, LLMError)
    assert calls[0].status == 0 and "0.3 s" in calls[0].error


def test_timeout_is_retried() -> None:
    with FakeLLMServer([Reply.slow("late", delay_s=5.0), Reply("on time")]) as srv:
        client, _, slept = make_client(srv, timeout=0.3, max_retries=1)
        with client:
            result = client.chat(MESSAGES)
    assert result.text == "on time" and result.attempts == 2 and len(slept) == 1


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = LLMClient(f"http://127.0.0.1:{port}/v1", MODEL, max_retries=1, sleep=lambda s: None)
    with client, pytest.raises(LLMUnavailable, match="cannot connect"):
        client.chat(MESSAGES)


def test_unreadable_completion_is_a_bad_response() -> None:
    with FakeLLMServer([Reply(body=b'{"choices": []}'), Reply(body=b"<html>oops")]) as srv:
        client, calls, _ = make_client(srv)
        with client:
            for _ in range(2):
                with pytest.raises(LLMBadResponse, match="unreadable completion"):
                    client.chat(MESSAGES)
    assert [c.status for c in calls] == [200, 200] and all(c.error for c in calls)


def test_free_text_chat_sends_no_response_format_and_models_lists_the_model() -> None:
    with FakeLLMServer([Reply("hello")]) as srv:
        client, _, _ = make_client(srv)
        with client:
            result = client.chat([ChatMessage("user", "hi")], temperature=0.0, max_tokens=7, seed=3)
            assert client.models() == [MODEL]
        body = srv.chat_requests()[0].body
    assert result.text == "hello" and result.response_format is FormatMode.NONE
    assert "response_format" not in body
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.0, 7, 3)


def test_transport_is_swappable() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    with LLMClient("https://llm.example/v1", "m", transport=httpx.MockTransport(handler)) as c:
        assert c.chat(MESSAGES).text == "ok"
    assert str(seen[0].url) == "https://llm.example/v1/chat/completions"
    assert "authorization" not in seen[0].headers  # no key given, none sent


@pytest.mark.parametrize(
    ("base", "url"),
    [("http://h:1", "http://h:1/v1/chat/completions"),
     ("http://h:1/v1/", "http://h:1/v1/chat/completions"),
     ("https://h/openai/v1", "https://h/openai/v1/chat/completions"),
     ("https://h/api", "https://h/api/v1/chat/completions")],
)
def test_chat_url(base: str, url: str) -> None:
    assert chat_url(base) == url


@pytest.mark.parametrize("bad", ["ftp://h/v1", "localhost:8080", ""])
def test_bad_base_url_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match="base URL"):
        LLMClient(bad, "m")


def test_is_strict_schema() -> None:
    assert is_strict_schema(SCHEMA)
    assert not is_strict_schema({**SCHEMA, "required": []})
    assert not is_strict_schema({"type": "object", "properties": {"a": {"type": "object"}},
                                 "required": ["a"], "additionalProperties": False})
