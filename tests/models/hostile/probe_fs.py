"""Hostile probe: where can the sandbox write, which sockets and data can it find?

Reports by raising ``RuntimeError("PROBE " + json)`` in ``__init__``.
"""

import errno
import importlib.util
import json
import os
import re
import stat

from torch import nn

_TARGETS = ("/", "/opt", "/opt/researcher", "/job", "/data", "/etc", "/home", "/root",
            "/usr", "/var/tmp", "/dev/shm", "/tmp")
_DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock")
_DATASET = re.compile(r"(digits|mnist|cifar|iris|wine|breast_cancer|ubyte|test_y)", re.IGNORECASE)
_CODE = (".py", ".pyc", ".pyi", ".so", ".h", ".hpp", ".typed")


def _try_write(directory: str) -> str:
    path = os.path.join(directory, f".probe-{os.getpid()}")
    try:
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def _walk(top: str = "/") -> tuple:
    sockets, data, stack = [], [], [top]
    while stack:
        path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if entry.path not in ("/proc", "/sys"):
                    stack.append(entry.path)
            elif entry.is_file():
                if _DATASET.search(entry.name) and not entry.name.endswith(_CODE):
                    data.append(entry.path)
            else:
                try:
                    if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                        sockets.append(entry.path)
                except OSError:
                    pass
    return sorted(sockets), sorted(data)


def _findings() -> dict:
    sockets, data = _walk()
    return {
        "writes": {d: _try_write(d) for d in _TARGETS},
        "docker_sockets": [p for p in _DOCKER_SOCKETS if os.path.exists(p)],
        "sockets": sockets,
        "dataset_files": data[:20],
        "dataset_files_count": len(data),
        "sklearn": importlib.util.find_spec("sklearn") is not None,
    }


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        raise RuntimeError("PROBE " + json.dumps(_findings(), separators=(",", ":")))
