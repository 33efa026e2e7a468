"""A small CNN for 28x28 grey images (Fashion-MNIST, MNIST): two conv stages and a small head."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),  # (B, 32, 28, 28)
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1),  # (B, 64, 14, 14)
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 64, 7, 7)
        )
        self.head = nn.Sequential(
            nn.Flatten(),  # (B, 3136)
            nn.Dropout(0.3),
            nn.Linear(64 * 7 * 7, 128),  # (B, 128)
            nn.ReLU(),
            nn.Linear(128, num_classes),  # (B, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
