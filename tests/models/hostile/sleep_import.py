"""Hostile: blocks for an hour at import time, before any class exists."""

import time

import torch
from torch import nn

time.sleep(3600)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))
