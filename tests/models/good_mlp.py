"""A small, correct MLP for 8x8 digits."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),  # (B, 64)
            nn.Linear(64, 128),  # (B, 128)
            nn.ReLU(),
            nn.Linear(128, 10),  # (B, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
