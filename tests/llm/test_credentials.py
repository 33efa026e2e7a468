"""Credentials never leave the client: not in messages, exceptions, records, settings or reports.

A base URL may carry ``user:pass@`` and ``?key=``, and an API key travels in a header.
They are sent - the server must see them - but everything the run writes or raises
names the redacted URL, and any text a server echoes back is scrubbed. The client also
reads no more than its body cap, and warns before a key crosses the network in clear.
"""

from __future__ import annotations

import base64
import json
import warnings
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import cli, research
from orchestrator.llm import LLMBadResponse, LLMCall, LLMClient, LLMError, RetryPolicy
from orchestrator.llm.urls import InsecureCredentialsWarning, Scrubber, plain_http_warning, redact_url
from orchestrator.planning.types import PlannerFacts, Target
from orchestrator.registry import LLMConfig, Registry, RunSettings
from sandbox_image.protocol import Failure, FailureKind, Stage
from tests.fakes.scripted import ScriptedBackend

PASSWORD, QUERY_KEY, API_KEY = "pa55-w0rd-XYZ", "SECRETKEY-4711", "sk-APIKEY-0815"
BASE = f"http://llm-user:{PASSWORD}@127.0.0.1:9/v1?key={QUERY_KEY}"
KEY_ONLY = f"http://127.0.0.1:9/v1?key={QUERY_KEY}"  # so that the API key goes as a Bearer
BASIC = "Basic " + base64.b64encode(f"llm-user:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, QUERY_KEY, API_KEY, f"llm-user:{PASSWORD}")
IRIS = PlannerFacts(name="iris", input_shape=(4,), num_classes=3, n_train=90, n_val=30, n_test=30)
MESSAGES = [{"role": "user", "content": "hi"}]


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def echo(request: httpx.Request) -> str:
    """What a careless proxy sends back: the whole URL and every header."""
    return f"{request.method} {request.url} {dict(request.headers)}"


# ------------------------------------------------------------------ redaction


@pytest.mark.parametrize(("url", "shown"), [
    (BASE, "http://127.0.0.1:9/v1"),
    ("https://u:p%40ss@api.example.com/openai/v1?api-version=2024&key=k#frag",
     "https://api.example.com/openai/v1"),
    ("http://[::1]:8080/v1?token=abc", "http://[::1]:8080/v1"),
    ("http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/v1"),
    ("llm-user:secret@host/v1?key=1", "host/v1"),  # no scheme: nothing before "@" survives
    ("http://u:secret@host:99999/v1?key=zz", "host:99999/v1"),  # a bad port is no excuse
    ("http://u:secret@[broken/v1", "[broken/v1"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(user=st.text("abcXYZ09-._~%", min_size=1, max_size=12),
       password=st.text("abcXYZ09-._~!$&'()*+,;=%", min_size=3, max_size=12),
       key=st.text("abcXYZ09-_", min_size=3, max_size=20),
       host=st.sampled_from(["127.0.0.1", "llm.example", "[::1]", "10.0.0.7"]),
       port=st.one_of(st.none(), st.integers(1, 65535)))
def test_no_credential_survives_redaction_or_scrubbing(user, password, key, host, port):
    password, key = "PW" + password, "KEY" + key  # so that neither is part of the host or path
    netloc = host + (f":{port}" if port else "")
    url = f"http://{user}:{password}@{netloc}/v1?key={key}"
    shown = redact_url(url)
    assert password not in shown and key not in shown and "@" not in shown
    scrub = Scrubber.for_endpoint(url, "sk-" + key)
    text = scrub(f"error at {url} with Bearer sk-{key}")
    assert password not in text and key not in text


# ------------------------------------------------------------------ the client


def client_for(handler, base: str = BASE, **kwargs) -> tuple[LLMClient, list[LLMCall]]:
    calls: list[LLMCall] = []
    client = LLMClient(base, "m", API_KEY, transport=httpx.MockTransport(handler),
                       recorder=calls.append, sleep=lambda s: None,
                       retry=RetryPolicy(max_retries=1, base_s=0.0), **kwargs)
    return client, calls


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500])
@pytest.mark.parametrize(("base", "authorization"), [(BASE, BASIC), (KEY_ONLY, f"Bearer {API_KEY}")])
def test_errors_that_echo_the_request_are_scrubbed(status: int, base: str,
                                                   authorization: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, text=echo(request))

    client, calls = client_for(handler, base)
    with client, pytest.raises(LLMError) as exc:
        client.chat(MESSAGES)
    # the credentials were sent (httpx makes user:pass a Basic header, which wins) ...
    assert seen[0].url.params["key"] == QUERY_KEY
    assert seen[0].headers["authorization"] == authorization
    # ... and are nowhere in what was raised or recorded
    assert not leaks(str(exc.value)) and not leaks(repr(exc.value))
    assert calls and all(not leaks(c.response) and not leaks(c.error) for c in calls)
    assert all(authorization.split()[1] not in c.response for c in calls)
    assert "127.0.0.1:9/v1" in str(exc.value) and client.url == "http://127.0.0.1:9/v1/chat/completions"


def test_transport_errors_that_name_the_url_are_scrubbed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    client, calls = client_for(handler)
    with client, pytest.raises(LLMError) as exc:
        client.chat(MESSAGES)
    assert not leaks(str(exc.value)) and exc.value.__cause__ is None  # httpx's holds the URL
    assert all(not leaks(c.error) for c in calls)


def test_an_echoing_reply_is_scrubbed_before_anyone_sees_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"message": {"content": echo(request)}}]})

    client, calls = client_for(handler)
    with client:
        result = client.chat(MESSAGES)
    assert not leaks(result.text) and not leaks(calls[0].response)
    assert "***" in result.text


def test_a_bad_base_url_is_reported_redacted() -> None:
    from orchestrator.exceptions import UsageError

    with pytest.raises(UsageError) as exc:
        LLMClient(f"ftp://llm-user:{PASSWORD}@host/v1?key={QUERY_KEY}", "m")
    assert not leaks(str(exc.value)) and "ftp://host/v1" in str(exc.value)


def test_the_models_list_uses_the_credentials_and_hides_them() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(403, text=echo(request))

    client, _ = client_for(handler)
    with client, pytest.raises(LLMError) as exc:
        client.models()
    assert seen[0].url.path == "/v1/models" and seen[0].url.params["key"] == QUERY_KEY
    assert not leaks(str(exc.value))


# ------------------------------------------------------------------ the body cap


def test_a_body_over_the_cap_is_refused_and_not_read_to_the_end() -> None:
    sent: list[int] = []

    def chunks():
        for _ in range(1000):  # 64 MB if anyone read it all
            sent.append(1)
            yield b"x" * 65536

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks())  # chunked: no Content-Length to go by

    client, calls = client_for(handler, max_body_bytes=100_000)
    with client, pytest.raises(LLMBadResponse, match="100,000-byte cap"):
        client.chat(MESSAGES)
    assert len(sent) < 10
    assert "100,000-byte cap" in calls[0].error and len(calls[0].response) <= 2000


def test_the_default_cap_is_4_mib_and_a_declared_length_is_believed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"choices": [{"message": {"content": "x" * (5 * 1024 * 1024)}}]}
        return httpx.Response(200, content=json.dumps(body).encode())

    client, calls = client_for(handler)
    with client, pytest.raises(LLMBadResponse, match="4,194,304-byte cap"):
        client.chat(MESSAGES)
    assert calls[0].status == 200 and calls[0].response == ""  # not read: its length said enough


def test_a_body_under_the_cap_is_read_whole() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"choices": [{"message": {"content": "y" * 50_000}}]}
        return httpx.Response(200, content=iter([json.dumps(body).encode()]))

    client, _ = client_for(handler, max_body_bytes=60_000)
    with client:
        assert client.chat(MESSAGES).text == "y" * 50_000


# ------------------------------------------------------------------ plain http


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000/v1", "http://llm.example/v1"])
def test_a_key_over_plain_http_to_another_host_warns(url: str) -> None:
    with pytest.warns(InsecureCredentialsWarning, match="plain http") as record:
        LLMClient(url, "m", "sk-x").close()
    assert len(record) == 1 and "\n" not in str(record[0].message)


@pytest.mark.parametrize(("url", "key"), [
    ("http://127.0.0.1:8000/v1", "sk-x"), ("http://localhost:8000/v1", "sk-x"),
    ("http://[::1]:8000/v1", "sk-x"), ("https://llm.example/v1", "sk-x"),
    ("http://llm.example/v1", None),
])
def test_no_warning_for_loopback_https_or_no_key(url: str, key: str | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LLMClient(url, "m", key).close()


def test_a_password_or_query_key_over_plain_http_warns_too() -> None:
    assert "password" in plain_http_warning("http://u:p@llm.example/v1")
    assert "query string" in plain_http_warning("http://llm.example/v1?api_key=x")
    assert plain_http_warning("http://llm.example/v1?api-version=2024") == ""


# ------------------------------------------------------------------ a whole run


def forward_error(job):
    return [Failure(stage=Stage.FORWARD, kind=FailureKind.FORWARD_ERROR, message="boom")]


def echo_server(seen: list[httpx.Request]):
    """Errors and replies that echo the request, and a refused connection now and then."""
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        turn = len(seen) % 4
        if turn == 0:
            raise httpx.ConnectError(f"refused: {request.url}", request=request)
        if turn == 1:
            return httpx.Response(200, json={"choices": [{"message": {"content": echo(request)}}]})
        return httpx.Response((401, 400)[turn - 2], text=echo(request))
    return handler


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "LLM_API_KEY", "RESEARCHER_LLM_API_KEY", "RESEARCHER_LLM_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("base", "authorization"), [(BASE, BASIC), (KEY_ONLY, f"Bearer {API_KEY}")])
def test_a_run_stores_and_shows_no_credential(base: str, authorization: str, tmp_path: Path,
                                              monkeypatch, capsys, clean_env):
    seen: list[httpx.Request] = []
    mock, real = httpx.MockTransport(echo_server(seen)), httpx.Client

    def client(*args, transport=None, **kwargs):  # make_planner's LLMClient, on the mock
        return real(*args, transport=transport or mock, **kwargs)

    monkeypatch.setattr(httpx, "Client", client)
    monkeypatch.setattr(cli, "docker_backend_factory", lambda image: lambda: ScriptedBackend(forward_error))
    code = cli.main(["run", "--dataset", "iris", "--seeds", "1", "--max-candidates", "2",
                     "--runs-dir", str(tmp_path), "--name", "r", "--llm-mode", "source",
                     "--llm-base-url", base, "--llm-model", "m", "--llm-api-key", API_KEY])
    out = capsys.readouterr()
    assert code == 0
    assert seen, "the LLM was asked"
    assert all(r.url.params["key"] == QUERY_KEY and r.headers["authorization"] == authorization
               for r in seen), "the credentials were sent"
    with Registry.open(tmp_path / "r", readonly=True) as registry:
        assert registry.settings.llm.base_url == "http://127.0.0.1:9/v1"
        calls, events = registry.llm_calls(), registry.events()
        assert len(registry.candidates()) == 2
    assert len(calls) == len(seen)
    assert any("***" in c.response for c in calls)  # the echoes were there, and scrubbed
    assert [e for e in events if e.kind == "llm_fallback"]
    for call in calls:
        assert not leaks(call.response) and not leaks(call.error)
    for event in events:
        assert not leaks(event.message) and not leaks(json.dumps(event.payload, default=str))
    assert not leaks(out.out) and not leaks(out.err)
    for path in (tmp_path / "r").rglob("*"):  # registry.sqlite, registry.json, reports, sources
        if path.is_file():
            data = path.read_bytes()
            assert not [s for s in SECRETS if s.encode() in data], path


def test_a_resume_takes_the_whole_url_from_the_flag_or_the_environment(tmp_path: Path, monkeypatch,
                                                                        clean_env):
    run = tmp_path / "r"
    Registry.create(run, RunSettings(goal="g", dataset="iris",
                                     llm=LLMConfig(base_url=BASE, model="m"))).close()
    taken: list[research.Secrets] = []
    monkeypatch.setattr(research, "resume_run", lambda run_dir, **kw: taken.append(kw["secrets"]) or 0)
    assert cli.main(["resume", str(run), "--llm-base-url", BASE]) == 0
    monkeypatch.setenv("RESEARCHER_LLM_BASE_URL", BASE)
    assert cli.main(["resume", str(run)]) == 0
    monkeypatch.delenv("RESEARCHER_LLM_BASE_URL")
    assert cli.main(["resume", str(run)]) == 0
    assert [s.llm_base_url for s in taken] == [BASE, BASE, None]
    assert not leaks(repr(taken[0]))
    with Registry.open(run, readonly=True) as registry:
        settings_ = registry.settings
    assert settings_.llm.base_url == "http://127.0.0.1:9/v1"  # stored redacted
    # make_planner: the whole URL from Secrets when given, else the stored one
    for secrets, url in [(taken[0], "http://llm-user:" + PASSWORD), (taken[2], "http://127.0.0.1")]:
        with Registry.open(run) as registry:
            planner = research.make_planner(settings_, IRIS, registry, secrets)
        planner.close()
        assert planner.client._url.startswith(url)


def test_the_cli_warns_once_on_one_line_for_a_key_over_plain_http(monkeypatch, capsys, clean_env):
    started: list[research.Secrets] = []
    monkeypatch.setattr(research, "start_run", lambda settings, **kw: started.append(kw["secrets"]) or 0)
    assert cli.main(["run", "--llm-base-url", "http://10.1.2.3:8000/v1", "--llm-api-key", "sk-x"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert lines == ["researcher: warning: the API key will be sent unencrypted over plain http to "
                     "10.1.2.3; use https, or a tunnel to 127.0.0.1"]
    assert cli.main(["run", "--llm-base-url", "http://127.0.0.1:8000/v1", "--llm-api-key", "sk-x"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert started[0].llm_base_url == "http://10.1.2.3:8000/v1" and started[0].llm_api_key == "sk-x"


def test_settings_never_hold_the_credentials(clean_env) -> None:
    args = cli.build_parser().parse_args(["run", "--llm-base-url", BASE])
    stored = research.settings_from_args(args, Target())
    assert stored.llm.base_url == "http://127.0.0.1:9/v1" and stored.planner == "llm"


def test_a_bad_url_is_a_usage_error_before_the_run_and_says_no_secret(clean_env) -> None:
    from orchestrator.exceptions import UsageError

    args = cli.build_parser().parse_args(["run", "--llm-base-url", f"ftp://u:{PASSWORD}@h/v1"])
    with pytest.raises(UsageError, match="--llm-base-url") as exc:
        research.settings_from_args(args, Target())
    assert not leaks(str(exc.value))
