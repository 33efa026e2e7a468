"""Hostile: dereferences NULL through ctypes in forward (SIGSEGV, no Python exception)."""

import ctypes

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctypes.string_at(0)
        return self.fc(x.flatten(1))
