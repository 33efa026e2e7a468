"""Credentials in LLM URLs: what may be shown, what must be scrubbed, when to warn.

A base URL may carry credentials (``https://user:pass@host/v1?key=...``). The client
sends them, but nothing it writes - messages, exceptions, ``LLMCall`` records, stored
settings - may hold them: ``redact_url`` is the one form of a URL that is ever shown,
and a ``Scrubber`` removes the secret parts (and the API key) from any other text,
such as an error body a proxy echoes back.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

MASK = "***"
_MIN_SECRET = 3  # shorter strings are not masked (``v=1`` would turn every "1" into ***)
_SECRET_PARAM = re.compile(r"key|token|secret|passw|sig|auth|credential", re.I)


class InsecureCredentialsWarning(UserWarning):
    """An API key or password would travel unencrypted to another host."""


def redact_url(url: str) -> str:
    """``url`` without user:password, query string or fragment (where credentials hide)."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        host, port = parts.hostname or "", parts.port
    except ValueError:  # a bad port or bracket: show only what precedes any credential
        return _bare(text)
    if not parts.netloc:  # no scheme ("user:pass@host/v1"): urlsplit saw no host
        return _bare(text)
    if ":" in host:  # IPv6 literal: urlsplit dropped the brackets
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _bare(text: str) -> str:
    """A URL-ish string without anything up to an ``@`` and without query or fragment."""
    text = re.split(r"[?#]", text, maxsplit=1)[0]
    return text.rpartition("@")[2]


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_warning(url: str, api_key: str | None = None) -> str:
    """A one-line warning when credentials would cross the network unencrypted; else ""."""
    try:
        parts = urlsplit(url.strip())
        host, password = parts.hostname or "", parts.password
    except ValueError:
        return ""
    if parts.scheme != "http" or _is_loopback(host):
        return ""
    carried = []
    if api_key:
        carried.append("the API key")
    if password:
        carried.append("the password in the URL")
    if any(_SECRET_PARAM.search(name) for name, _ in parse_qsl(parts.query)):
        carried.append("the key in the URL's query string")
    if not carried:
        return ""
    return (f"{' and '.join(carried)} will be sent unencrypted over plain http to {host}; "
            f"use https, or a tunnel to 127.0.0.1")


@dataclass(frozen=True)
class Scrubber:
    """Removes the credentials of one URL and API key from any text."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def for_endpoint(cls, url: str, api_key: str | None = None) -> Scrubber:
        """A scrubber for the credentials in ``url`` (userinfo, query) and ``api_key``."""
        found: set[str] = {api_key or ""}
        try:
            parts = urlsplit(url.strip())
            if "@" in parts.netloc:
                found.add(parts.netloc.rpartition("@")[0])
                # as an echoed "Authorization: Basic ..." header would carry them
                pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
                found.add(base64.b64encode(pair.encode("utf-8", "replace")).decode())
            found |= {parts.password or "", parts.query}
            found |= {value for _, value in parse_qsl(parts.query)}
        except ValueError:  # not a URL: there is nothing in it to find
            pass
        found |= {unquote(s) for s in found}
        # Longest first, so that "user:pass" goes before "pass" and leaves no stub.
        kept = (s for s in found if len(s) >= _MIN_SECRET)
        return cls(tuple(sorted(kept, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text
