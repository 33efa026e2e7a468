"""The jobs root: the private host directory that holds every job's socket directory.

Until its worker says ``Ready``, a job's PAIR socket takes the first peer that
connects, and that peer receives the ``Job`` and can answer in the worker's
name. So no other local user may reach a job's socket, and the barrier is the
jobs root: a real directory (never a symlink) of the orchestrator's own user,
mode 0700, whose parent directories no other user can change (else one could
move the root away and put their own in its place). A root that is missing is
made so; one of ours that others may only read is tightened to 0700; anything
else is refused with ``SandboxUnavailable``.

The worker (uid 65534 in its container) still reaches its socket: Docker
bind-mounts the job directory itself at ``/job``, so inside the container the
host path above it does not exist, and only the job directory (0711: search,
no listing) and the socket (0666) must admit that uid. The UNSAFE subprocess
backend's worker runs as the orchestrator's own user and needs nothing more.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from orchestrator.exceptions import SandboxUnavailable

ROOT_MODE = 0o700
_PARENT_MODE = 0o755  # ancestors we make: only we (or root) may change them
_FLAG = "--jobs-dir (RESEARCHER_JOBS_DIR)"


def default_jobs_root() -> str:
    """``<system temp dir>/researcher-jobs-<uid>``: one private root per local user."""
    return os.path.join(tempfile.gettempdir(), f"researcher-jobs-{os.geteuid()}")


def ensure_jobs_root(root: Path | str) -> Path:
    """Make ``root`` (mode 0700) if missing, else check it is private; the absolute path.

    Raises ``SandboxUnavailable`` naming the path and the fix when it cannot be
    made, is a symlink, belongs to another user, is writable by group or
    others, or lies below a directory another user can change.
    """
    path = Path(os.path.abspath(root))
    _make(path)
    _check_parents(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if os.path.islink(path):
            raise SandboxUnavailable(
                f"the jobs dir {path} ({_FLAG}) is a symbolic link, which can be re-pointed: "
                f"use a real directory (e.g. the one it points to) or remove the link"
            ) from exc
        raise SandboxUnavailable(f"cannot open the jobs dir {path} ({_FLAG}): {exc}") from exc
    try:
        _check_root(path, fd)
    finally:
        os.close(fd)
    return path


def chmod_socket(path: Path | str, mode: int) -> None:
    """chmod the socket file at ``path`` without following a symlink planted there.

    Linux has no ``lchmod``: open the path itself (``O_PATH | O_NOFOLLOW``), check
    that it is a socket, and chmod the inode through ``/proc/self/fd``.
    """
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxUnavailable(f"cannot open the job's socket {path}: {exc}") from exc
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind != stat.S_IFSOCK:
            raise SandboxUnavailable(
                f"{path} is not the socket just bound there (file type {kind:o}): something else "
                "writes in the job directory; check the owner and mode of the jobs dir (--jobs-dir)"
            )
        os.chmod(f"/proc/self/fd/{fd}", mode)
    except OSError as exc:
        raise SandboxUnavailable(f"cannot chmod the job's socket {path} (needs /proc mounted): {exc}") from exc
    finally:
        os.close(fd)


def _make(path: Path) -> None:
    """Make the missing directories down to ``path``; the root itself 0700."""
    try:
        for parent in reversed(path.parents):
            if not os.path.lexists(parent):
                _mkdir(parent, _PARENT_MODE)
        _mkdir(path, ROOT_MODE)
    except OSError as exc:
        raise SandboxUnavailable(f"cannot make a directory in {path} (the jobs dir, {_FLAG}): {exc}") from exc


def _mkdir(path: Path, mode: int) -> None:
    try:
        os.mkdir(path, mode)  # the umask can only take bits away
    except FileExistsError:
        pass


def unsafe_parent(path: Path) -> tuple[Path, str] | None:
    """The first directory above ``path`` that someone but root or us could change (and why), else None.

    A sticky directory (as /tmp) is safe: others may add to it, not replace our entry. Raises
    OSError when a parent cannot be inspected.
    """
    me = os.geteuid()
    for parent in reversed(path.parents):
        link, st = os.lstat(parent), os.stat(parent)
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, me):
            return parent, f"is a symbolic link of uid {link.st_uid}"
        if st.st_uid not in (0, me):
            return parent, f"belongs to uid {st.st_uid}"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            return parent, f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _check_parents(path: Path) -> None:
    """Every directory above ``path`` can be changed only by root or us (or is sticky, as /tmp)."""
    try:
        found = unsafe_parent(path)
    except OSError as exc:
        raise SandboxUnavailable(f"cannot inspect a parent of the jobs dir {path}: {exc}") from exc
    if found is not None:
        raise _unsafe_parent(path, *found)


def _unsafe_parent(path: Path, parent: Path, why: str) -> SandboxUnavailable:
    return SandboxUnavailable(
        f"the jobs dir {path} ({_FLAG}) is below {parent}, which {why}: another user could replace "
        f"the jobs dir and reach the job sockets. Choose a directory whose parents only you or root "
        f"can change, e.g. {default_jobs_root()}"
    )


def _check_root(path: Path, fd: int) -> None:
    """The opened root is ours and writable by us alone; tighten it to 0700."""
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        raise SandboxUnavailable(
            f"the jobs dir {path} ({_FLAG}) belongs to uid {st.st_uid}, not to this user (uid "
            f"{os.geteuid()}): its owner could reach the job sockets in it. Remove it, or point "
            f"{_FLAG} at a directory of your own (a missing one is made with mode 0700)"
        )
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SandboxUnavailable(
            f"the jobs dir {path} ({_FLAG}) is writable by group or others (mode {mode:04o}), so "
            f"someone else may have put things in it: remove it (a missing one is made with mode "
            f"0700), or point {_FLAG} at a private directory"
        )
    if mode != ROOT_MODE:  # ours and nobody else can write it: only reading and searching to take away
        os.fchmod(fd, ROOT_MODE)
