"""Hostile probe: what network does the sandbox have? (It should have only loopback.)

Structural only: it lists interfaces and routes and asks the kernel for a route
(a UDP ``connect`` sends no packet), and the one lookup (DNS) fails at once
without an interface. Nothing here sends traffic anywhere, even where a network
exists. Reports by raising ``RuntimeError("PROBE " + json)``.
"""

import json
import socket
import time

from torch import nn


def _timed(action) -> dict:
    start = time.monotonic()
    try:
        result = str(action())[:80]
    except OSError as exc:
        result = "error:" + type(exc).__name__
    return {"result": result, "seconds": round(time.monotonic() - start, 3)}


def _route(host: str) -> str:
    """Ask the kernel for a route to ``host``: connect() on UDP picks one and sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return "route via " + s.getsockname()[0]


def _proc_lines(path: str) -> list:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError as exc:
        return ["error:" + type(exc).__name__]


def _findings() -> dict:
    dev = _proc_lines("/proc/net/dev")
    return {
        "if_nameindex": [name for _, name in socket.if_nameindex()],
        "proc_net_dev": [line.split(":")[0].strip() for line in dev[2:]],
        "routes": _proc_lines("/proc/net/route")[1:],
        "dns": _timed(lambda: socket.getaddrinfo("pypi.org", 443)),
        "route_public": _timed(lambda: _route("192.0.2.1")),  # TEST-NET-1 (RFC 5737), never routed
        "route_docker_host": _timed(lambda: _route("172.17.0.1")),  # the default bridge's gateway
    }


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        raise RuntimeError("PROBE " + json.dumps(_findings(), separators=(",", ":")))
