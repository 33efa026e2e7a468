"""Which GPUs this host has, and how many sandboxes may run at once.

``--device cuda`` gives each sandbox one GPU through ``device_requests``; the
warm pool hands GPU ids out round-robin, so ``--parallel N`` spreads over N
devices. The ids come from ``--gpus`` or, by default, from ``nvidia-smi`` (in a
compose orchestrator, the GPU profile makes it available).
"""

from __future__ import annotations

import re
import shutil
import subprocess

from orchestrator.exceptions import UsageError

_GPU_ID = re.compile(r"^(\d+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+)$")


def host_gpus() -> list[tuple[str, str]]:
    """(index, name) of every GPU ``nvidia-smi`` lists; empty without a driver."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [line.split(",", 1) for line in out.stdout.splitlines() if "," in line]
    return [(index.strip(), name.strip()) for index, name in rows]


def parse_gpu_ids(text: str) -> tuple[str, ...]:
    """``0,1`` or ``GPU-<uuid>,...``; an id listed twice is shared by two sandboxes."""
    ids = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [i for i in ids if not _GPU_ID.match(i)]
    if not ids or bad:
        raise UsageError(f"--gpus {text!r} must be comma-separated GPU indices or UUIDs, e.g. 0,1 "
                         f"(see `nvidia-smi -L`)")
    return ids


def bound_parallel(parallel: int, *, device: str, cores: int, gpus: tuple[str, ...],
                   cpus: float | None = None) -> tuple[int, str]:
    """``parallel`` capped by what the host has, and why: GPUs listed on cuda, else cores / CPU cap."""
    if parallel < 1:
        raise UsageError(f"--parallel {parallel} must be >= 1")
    if device == "cuda":
        if gpus and parallel > len(gpus):
            return len(gpus), (f"--parallel {parallel} capped at {len(gpus)}: one GPU per sandbox over "
                               f"GPUs {','.join(gpus)} (list an id twice in --gpus to share a GPU)")
        return parallel, ""
    most = max(1, int(cores // (cpus or 1.0)))
    if parallel > most:
        per = f"--cpus {cpus:g}" if cpus else "at least one core"
        return most, f"--parallel {parallel} capped at {most}: this host has {cores} cores and each sandbox gets {per}"
    return parallel, ""
