"""Hostile: floods stdout and stderr forever in forward (long lines and many short ones)."""

import os

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        long_line = b"A" * (1 << 20)  # 1 MiB without a newline
        short_lines = b"flood\n" * 100_000
        while True:
            # raw fds: no Python buffering between the model and the container's log pipe
            os.write(1, long_line)
            os.write(2, short_lines)
