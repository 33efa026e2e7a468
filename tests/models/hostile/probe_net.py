"""Hostile probe: what network does the sandbox have? (It should have only loopback.)

Every attempt here fails at once in a network-less container, so nothing
leaves the machine. Reports by raising ``RuntimeError("PROBE " + json)``.
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


def _connect(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=3):
        return "connected"


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
        "tcp_public": _timed(lambda: _connect("1.1.1.1", 443)),
        "tcp_docker_host": _timed(lambda: _connect("172.17.0.1", 2375)),
    }


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        raise RuntimeError("PROBE " + json.dumps(_findings(), separators=(",", ":")))
