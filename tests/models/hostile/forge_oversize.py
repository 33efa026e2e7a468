"""Hostile: sends one frame over the host's size cap on the worker's socket, then exits 0."""

import gc
import os
import time

import zmq
from torch import nn

_FRAME_BYTES = 80 * 1024 * 1024  # the host accepts at most 64 MiB per message


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        sockets = [o for o in gc.get_objects() if isinstance(o, zmq.Socket) and not o.closed]
        if not sockets:
            raise RuntimeError("FORGER found no zmq socket")
        frame = b"\x01" * _FRAME_BYTES
        for sock in sockets:
            sock.send(frame, copy=False)
        time.sleep(3)  # let ZeroMQ's I/O thread push the frame to the host
        os._exit(0)  # leave "cleanly", without CheckReport or Done
