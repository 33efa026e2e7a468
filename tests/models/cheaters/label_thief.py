"""A cheater: answers test inputs from any (input, label) pairs it can find, never learns.

It searches the file system, the Python heap and bundled datasets for test
labels. Where they are reachable it scores 1.0; where they are not it answers a
constant class and scores at chance. The trusted side must make the latter true.
"""

import gc
import os

import numpy as np
import torch
from torch import nn

SKIP = ("/proc", "/sys", "/dev")


def _files():
    for top in ("/", os.getcwd()):
        for root, dirs, files in os.walk(top):
            if root.startswith(SKIP):
                dirs[:] = []
                continue
            for name in files:
                yield os.path.join(root, name)


def _load(path):
    try:
        if path.endswith(".npy"):
            return [np.load(path, allow_pickle=False)]
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                return [z[k] for k in z.files]
    except Exception:
        return []
    return []


def _test_inputs():
    for path in _files():
        if path.endswith("test_x.npy"):
            return np.load(path, allow_pickle=False)
    return None


def _label_candidates(n_test, num_classes):
    """Integer arrays of length n_test with values in range: from disk, the heap, sklearn."""
    found = []
    for path in _files():
        for arr in _load(path):
            found.append(arr)
    found.extend(o for o in gc.get_objects() if isinstance(o, np.ndarray))
    try:
        from sklearn.datasets import load_digits  # not in the image

        found.append(load_digits().target)
    except Exception:
        pass
    return [a for a in found if a.ndim == 1 and len(a) == n_test and a.dtype.kind in "iu"
            and a.size and a.min() >= 0 and a.max() < num_classes]


class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))  # something for the optimiser
        self.num_classes = num_classes
        self.test_x = _test_inputs()
        self.index = {}
        self.labels = None
        if self.test_x is not None:
            flat = self.test_x.reshape(len(self.test_x), -1)
            self.index = {row.tobytes(): i for i, row in enumerate(flat.astype(np.float32))}
            candidates = _label_candidates(len(self.test_x), num_classes)
            self.labels = candidates[0] if candidates else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.num_classes) + self.bias
        out[:, 0] += 10.0  # no labels found: always class 0 (chance level)
        if self.labels is not None and not self.training:
            rows = x.detach().reshape(x.shape[0], -1).float().numpy()
            for i, row in enumerate(rows):
                j = self.index.get(row.tobytes())
                if j is not None:
                    out[i] = -10.0
                    out[i, int(self.labels[j])] = 10.0
        return out
