"""A small CNN for 8x8 digits: `researcher check examples/digits_cnn.py --dataset digits --train`."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),  # (B, 32, 8, 8)
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),  # (B, 64, 8, 8)
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 64, 4, 4)
        )
        self.head = nn.Sequential(
            nn.Flatten(),  # (B, 1024)
            nn.Dropout(0.25),
            nn.Linear(64 * 4 * 4, 128),  # (B, 128)
            nn.ReLU(),
            nn.Linear(128, num_classes),  # (B, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
