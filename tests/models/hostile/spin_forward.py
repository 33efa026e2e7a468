"""Hostile: a forward pass that never returns (busy loop, holds the CPU)."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = 0
        while True:
            n += 1
