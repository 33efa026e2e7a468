"""Hostile: forges a Failure with an 8 MB message and traceback (under the frame cap), then hangs.

The worker trims its own messages; a model that speaks the protocol itself on
the worker's socket does not. The host must not keep (and later store, render
or show to an LLM) megabytes of text.
"""

import gc
import time

import zmq
from torch import nn

from sandbox_image.protocol import Failure, FailureKind, Stage, encoder

_MESSAGE = "A" * (8 * 1024 * 1024)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        forged = Failure(stage=Stage.TRAIN, kind=FailureKind.TRAINING_ERROR, message=_MESSAGE, traceback=_MESSAGE)
        for sock in (o for o in gc.get_objects() if isinstance(o, zmq.Socket) and not o.closed):
            sock.send(encoder().encode(forged))
        time.sleep(3600)
