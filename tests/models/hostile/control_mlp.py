"""The control: a benign model, so the hardened sandbox is shown to pass good code too."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),  # (B, 64)
            nn.Linear(64, 32),  # (B, 32)
            nn.ReLU(),
            nn.Linear(32, 10),  # (B, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
