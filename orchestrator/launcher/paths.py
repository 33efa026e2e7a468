"""The launcher's files: its root, the job directories it makes, and data it stages.

Nothing the client names is ever mounted. A job directory is made here, in a root the
client may enter (group x) but not change, so it cannot be swapped for a link between
the check and the engine's mount. Data is copied here from a data source root,
walking every component with ``O_NOFOLLOW``, regular files only: a symbolic link, a
path outside the roots or a special file is refused, and the copy is what gets mounted.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from pathlib import Path

from orchestrator.sandbox.jobsroot import unsafe_parent

ROOT_MODE = 0o710  # launcher: all; client group: enter (its job dirs, the socket); others: nothing
JOB_DIR_MODE = 0o771  # client group: make its socket; the sandbox (uid 65534): search only
DATA_MODE = 0o755
_MAX_FILES = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refusal(Exception):
    """A request the launcher will not carry out; the message says why and what to do."""


def prepare_root(root: str, gid: int | None) -> Path:
    """Make the root (0710, group ``gid``) or check one we made; refuse a link or a foreign one."""
    path = Path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise Refusal(f"the launcher root {path} must be a real directory of uid {os.geteuid()} (remove it, or choose another --root)")
    _check_parents(path)
    if gid is not None and st.st_gid != gid:
        os.chown(path, -1, gid)
    os.chmod(path, ROOT_MODE)
    return path


def _check_parents(path: Path) -> None:
    found = unsafe_parent(path)  # the jobs root's rule: only root or we may change a parent
    if found is not None:
        parent, why = found
        raise Refusal(f"the launcher root {path} is below {parent}, which others can change (it {why}): "
                      "choose another --root")


def make_job_dir(root: Path, gid: int | None) -> Path:
    """A fresh job directory (unguessable name) its client's group can write, uid 65534 can search."""
    path = root / f"job-{secrets.token_hex(12)}"  # 96 bits; the socket path below must fit 107 bytes
    os.mkdir(path, 0o700)
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, JOB_DIR_MODE)
    return path


def remove(path: Path) -> None:
    """Remove a job or data directory (never following a link out of it)."""
    shutil.rmtree(path, ignore_errors=True)


def stage(source: str, sources: tuple[str, ...], root: Path, max_bytes: int) -> tuple[Path, int, int]:
    """Copy the regular files of ``source`` (below one of ``sources``) into a new dir of ``root``."""
    rel, base = _below(source, sources)
    fd = _open_beneath(base, rel)
    dest = root / f"data-{secrets.token_hex(16)}"
    os.mkdir(dest, 0o700)
    try:
        files, total = _copy_files(fd, source, dest, max_bytes)
    except BaseException:
        remove(dest)
        raise
    finally:
        os.close(fd)
    os.chmod(dest, DATA_MODE)
    return dest, files, total


def _below(source: str, sources: tuple[str, ...]) -> tuple[list[str], str]:
    if not os.path.isabs(source):
        raise Refusal(f"data source {source!r} is not an absolute path")
    path = os.path.normpath(source)
    for base in sources:
        base = os.path.normpath(base)
        if path == base or path.startswith(base.rstrip("/") + "/"):
            return [p for p in path[len(base):].split("/") if p], base
    allowed = ", ".join(sources) or "none: start the launcher with --data-source DIR"
    raise Refusal(f"data source {source!r} is outside the launcher's data sources ({allowed})")


def _open_beneath(base: str, parts: list[str]) -> int:
    try:
        fd = os.open(base, _DIR_FLAGS)
    except OSError as exc:
        raise Refusal(f"cannot open the data source root {base}: {exc.strerror}") from exc
    for part in parts:
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            why = "is a symbolic link or not a directory" if exc.errno in (40, 20) else exc.strerror
            raise Refusal(f"data source component {part!r} below {base} {why}: the launcher follows no links") from exc
        os.close(fd)
        fd = child
    return fd


def _copy_files(fd: int, source: str, dest: Path, max_bytes: int) -> tuple[int, int]:
    names = sorted(os.listdir(fd))
    if len(names) > _MAX_FILES:
        raise Refusal(f"data source {source!r} holds {len(names)} entries; at most {_MAX_FILES}")
    total = 0
    for name in names:
        try:
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            raise Refusal(f"{source}/{name} cannot be staged (a link or unreadable: {exc.strerror})") from exc
        st = os.fstat(src)  # before fdopen, which raises IsADirectoryError (and keeps the fd) on a directory
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(src)
            if not stat.S_ISREG(st.st_mode):
                raise Refusal(f"{source}/{name} is not a regular file: only files are staged")
            # a hard link to a file outside the roots (perhaps one the client could not read)
            raise Refusal(f"{source}/{name} has {st.st_nlink} hard links: only files with one are staged")
        with os.fdopen(src, "rb") as reader:
            total += st.st_size
            if total > max_bytes:
                raise Refusal(f"data source {source!r} is over the launcher's {max_bytes} byte limit")
            target = os.open(dest / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            with os.fdopen(target, "wb") as writer:
                _copy(reader, writer, st.st_size)  # the size checked, even if the file grows meanwhile
    return len(names), total


def _copy(reader, writer, size: int) -> None:
    left = size
    while left > 0:
        chunk = reader.read(min(left, 1024 * 1024))
        if not chunk:
            break
        writer.write(chunk)
        left -= len(chunk)
