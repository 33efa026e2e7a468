"""Hostile probe: what identity, privileges and environment does the sandbox expose?

Collects findings and reports them by raising ``RuntimeError("PROBE " + json)``
in ``__init__``: the worker returns that message to the host, where the test
parses it.
"""

import json
import os
import socket

from torch import nn

_STATUS_KEYS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")


def _environ(pid: str) -> dict | str:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    except OSError as exc:
        return type(exc).__name__
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _status() -> dict:
    with open("/proc/self/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {k: fields.get(k, "").strip() for k in _STATUS_KEYS}


def _findings() -> dict:
    pids = sorted(p for p in os.listdir("/proc") if p.isdigit())
    others = {}  # every other visible process: its environment's names only (keeps it short)
    for pid in pids:
        env = _environ(pid)
        if pid not in ("1", str(os.getpid())) and isinstance(env, dict):
            others[pid] = sorted(env)
    return {
        "env": dict(os.environ),
        "pid1_env": _environ("1"),
        "other_env_names": others,
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
        "groups": os.getgroups(),
        "status": _status(),
        "pids": len(pids),
        "hostname": socket.gethostname(),
    }


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        raise RuntimeError("PROBE " + json.dumps(_findings(), separators=(",", ":")))
