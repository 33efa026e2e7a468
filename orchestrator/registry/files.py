"""The run directory: its layout, atomic file writes and each candidate's files.

Layout (DESIGN.md section 9)::

    <root>/run_<UTC timestamp>/       (or the --name given)
        run.json                      settings needed to resume (no secrets)
        src/models/model.py           the best candidate's source
        candidates/<id>/              model.py, config.json, check.json, metrics.json,
                                      failure.json, dynamics.json, *.png (those that exist)
        experiments/registry.sqlite   the source of truth (WAL)
        experiments/registry.json     the same, exported
        figures/                      report figures
        report.md, report.html

Every file is written to a temporary name, fsynced and renamed over the old
one, so a reader (or a killed writer) never sees half a file.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from orchestrator.exceptions import UsageError

_FILE_MODE = 0o644
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class RunPaths:
    """Where each file of one run lives."""

    root: Path

    @property
    def name(self) -> str:
        """The run's name (its directory name)."""
        return self.root.name

    @property
    def run_json(self) -> Path:
        """Settings needed to resume."""
        return self.root / "run.json"

    @property
    def experiments(self) -> Path:
        """Folder of the registry files."""
        return self.root / "experiments"

    @property
    def sqlite(self) -> Path:
        """The registry database."""
        return self.experiments / "registry.sqlite"

    @property
    def lock(self) -> Path:
        """Lock file held by the one process that writes this run."""
        return self.experiments / "writer.lock"

    @property
    def registry_json(self) -> Path:
        """The registry exported as JSON."""
        return self.experiments / "registry.json"

    @property
    def best_model(self) -> Path:
        """The best candidate's source."""
        return self.root / "src" / "models" / "model.py"

    @property
    def figures(self) -> Path:
        """Report figures."""
        return self.root / "figures"

    @property
    def report_md(self) -> Path:
        """Markdown report."""
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        """Self-contained HTML report."""
        return self.root / "report.html"

    def candidate(self, candidate_id: str) -> Path:
        """Folder of one candidate's files."""
        return self.root / "candidates" / candidate_id


def utc_stamp(now: float | None = None) -> str:
    """``20261125T093000Z`` for ``now`` (default: the current time)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def new_run_dir(root: str | Path, name: str | None = None) -> Path:
    """A fresh, empty run directory under ``root``: ``name`` or ``run_<UTC timestamp>``."""
    root = Path(root)
    if name:
        if not _NAME.match(name):
            raise UsageError(f"run name {name!r} must be 1-128 letters, digits, '.', '_' or '-' "
                             "and start with a letter or digit")
        path = root / name
        if path.exists():
            raise UsageError(f"run directory {path} already exists; pick another --name or "
                             f"continue it with `researcher resume {path}`")
    else:
        path = root / f"run_{utc_stamp()}"
        suffix = 1
        while path.exists():  # two runs started in the same second
            suffix += 1
            path = root / f"run_{utc_stamp()}_{suffix}"
    path.mkdir(parents=True)
    return path


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` via a fsynced temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; these files are for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the directory that holds it (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, value: Any) -> Path:
    """Atomically write ``value`` (msgspec Structs included) as indented JSON."""
    return atomic_write(path, msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n")


def write_if_changed(path: Path, data: str) -> bool:
    """Atomically write ``data`` unless ``path`` already holds it; True when written."""
    try:
        if path.read_text() == data:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write(path, data)
    return True
