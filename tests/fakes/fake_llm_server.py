"""A scripted OpenAI-compatible chat server on 127.0.0.1, for tests over a real socket.

Each POST to ``/v1/chat/completions`` takes the next scripted ``Reply`` from a queue;
``GET /v1/models`` lists the model. Every request is recorded (path, headers, JSON
body) so a test can assert on prompts, response formats and credentials::

    with FakeLLMServer([Reply.fenced({"a": 1}), Reply.error(429, retry_after="0")]) as srv:
        client = LLMClient(srv.base_url, "fake")
        ...
        assert srv.requests[0].body["messages"][0]["role"] == "system"
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MODEL = "fake-model"


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a completion with ``content``, or an error ``status``."""

    content: str = ""
    status: int = 200
    body: bytes | None = None  # raw body; overrides the completion built from content
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0  # wait before answering (to provoke client timeouts)
    finish_reason: str = "stop"

    @classmethod
    def json(cls, obj: Any) -> Reply:
        """Valid JSON, nothing else."""
        return cls(json.dumps(obj))

    @classmethod
    def fenced(cls, obj: Any) -> Reply:
        """JSON in a ```json fence, with a line of chatter before it."""
        return cls(f"Here is my proposal:\n```json\n{json.dumps(obj, indent=2)}\n```\n")

    @classmethod
    def prose(cls, obj: Any) -> Reply:
        """JSON with prose before and after, no fence."""
        return cls(f"I think this will work well. {json.dumps(obj)} Let me know the results!")

    @classmethod
    def truncated(cls, obj: Any) -> Reply:
        """JSON cut off in the middle, as when max_tokens runs out."""
        text = json.dumps(obj)
        return cls(text[: max(1, len(text) * 2 // 3)], finish_reason="length")

    @classmethod
    def error(cls, status: int, *, retry_after: str | None = None, message: str = "") -> Reply:
        """An HTTP error with an OpenAI-style error body."""
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        payload = {"error": {"message": message or f"scripted {status}", "code": status}}
        return cls(status=status, body=json.dumps(payload).encode(), headers=headers)

    @classmethod
    def slow(cls, content: str, delay_s: float) -> Reply:
        """A valid answer that arrives after ``delay_s`` seconds."""
        return cls(content, delay_s=delay_s)


@dataclass(frozen=True)
class RecordedRequest:
    """What the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)


def _completion(reply: Reply, request: dict[str, Any]) -> bytes:
    prompt_chars = sum(len(str(m.get("content", ""))) for m in request.get("messages", []))
    return json.dumps({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": request.get("model", MODEL),
        "choices": [{"index": 0, "finish_reason": reply.finish_reason,
                     "message": {"role": "assistant", "content": reply.content}}],
        # Rough token counts, so tests can see usage parsed through.
        "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(reply.content) // 4,
                  "total_tokens": (prompt_chars + len(reply.content)) // 4},
    }).encode()


class FakeLLMServer:
    """Context manager running the scripted server in a thread on a free local port."""

    def __init__(
        self,
        replies: Iterable[Reply] = (),
        *,
        reject_formats: Iterable[str] = (),
        reject_status: int = 500,
    ) -> None:
        self._replies: deque[Reply] = deque(replies)
        # response_format types refused before any scripted reply is used (llama.cpp: 500).
        self.reject_formats = frozenset(reject_formats)
        self.reject_status = reject_status
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        if self._server is None:
            raise RuntimeError("FakeLLMServer is not running; use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def add(self, *replies: Reply) -> None:
        """Queue more scripted replies."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not yet used."""
        with self._lock:
            return len(self._replies)

    def chat_requests(self) -> list[RecordedRequest]:
        """Recorded chat-completion requests only."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def __enter__(self) -> FakeLLMServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()  # wakes slow replies so that closing does not wait for them
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _next(self, request: dict[str, Any]) -> Reply:
        fmt = request.get("response_format") or {}
        if fmt.get("type") in self.reject_formats:
            return Reply.error(self.reject_status,
                               message=f"response_format {fmt.get('type')!r} is not supported")
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        return Reply.error(500, message="fake server: no scripted reply left")


def _handler_for(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass  # keep test output clean

        def do_GET(self) -> None:
            server.requests.append(RecordedRequest("GET", self.path, dict(self.headers)))
            if urlsplit(self.path).path.rstrip("/").endswith("/models"):
                self._send(200, json.dumps({"object": "list", "data": [{"id": MODEL}]}).encode())
            else:
                self._send(404, b'{"error": {"message": "not found"}}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                body = {"_unparsable": raw.decode("utf-8", "replace")}
            server.requests.append(RecordedRequest("POST", self.path, dict(self.headers), body))
            if not urlsplit(self.path).path.rstrip("/").endswith("/chat/completions"):
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            reply = server._next(body)
            if reply.delay_s and server._stop.wait(reply.delay_s):
                return
            payload = reply.body if reply.body is not None else _completion(reply, body)
            self._send(reply.status, payload, reply.headers)

        def _send(self, status: int, payload: bytes,
                  headers: tuple[tuple[str, str], ...] = ()) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout); nothing to tell it

    return Handler
