"""Hostile: finds the worker's own ZeroMQ socket through gc and sends raw garbage on it."""

import gc

import torch
import zmq
from torch import nn


def _worker_sockets() -> list:
    return [o for o in gc.get_objects() if isinstance(o, zmq.Socket) and not o.closed]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        sockets = _worker_sockets()
        if not sockets:
            raise RuntimeError("FORGER found no zmq socket")
        for sock in sockets:
            # 0xc1 is never valid MessagePack; the rest looks like a forged Done
            sock.send(b"\xc1\x81\xa4type\xa4Done" + bytes(range(256)))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))
