"""Hostile: allocates (and touches) memory in forward until the kernel kills it."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hoard = []
        while True:
            # bytes filled with a value, not calloc'd zeros: every page is really touched
            hoard.append(b"\x01" * (32 << 20))
