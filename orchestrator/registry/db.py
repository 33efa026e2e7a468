"""SQLite connections of the registry and the lock that keeps one writer per run."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from orchestrator.exceptions import UsageError
from orchestrator.registry import schema
from orchestrator.registry.files import RunPaths


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode with FULL sync (every commit survives a kill or power cut)."""
    if readonly:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(schema.DDL)
    return conn


def take_lock(paths: RunPaths) -> int:
    """An exclusive advisory lock on the run, or UsageError naming the process that holds it."""
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UsageError(f"run {paths.root} is being written by process {holder}; wait for it "
                         "to finish or stop it before resuming") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
