"""Offline base image for the sandbox, built from Debian packages without any registry.

Host-side only (never imported in the sandbox). Needs root, ``debootstrap`` and a
Docker engine; the Python wheels come from the host's own pip configuration::

    pip download (host) ──> wheelhouse  (cached in ~/.cache/pytorch-researcher/wheelhouse/<hash>)
    debootstrap --variant=minbase bookworm ──> rootfs
    chroot: apt-get install python3 python3-venv; python3 -m venv /opt/venv;
            pip install --no-index --find-links <wheelhouse>
    tar -C rootfs . | docker import  ──> pytorch-researcher-base:<hash>

The tag is a content hash of the pins, the Debian suite, mirror and packages and
``BUILDER_VERSION``; an image with that tag is reused as is. Errors raise
``BaseImageError``; the orchestrator translates them at its edge.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import docker
import docker.errors

#: Bump when the recipe below changes in a way that changes the image.
BUILDER_VERSION = 1

BASE_REPOSITORY = "pytorch-researcher-base"
BASE_HASH_LABEL = "org.pytorch-researcher.base-hash"
DEFAULT_REQUIREMENTS = Path(__file__).with_name("requirements.txt")

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
APT_PACKAGES = ("python3", "python3-venv")
#: Python and glibc of Debian 12: wheels are downloaded for this target, not the host.
TARGET_PYTHON = "3.11"
TARGET_GLIBC_MINOR = 36
VENV_DIR = "/opt/venv"
IMAGE_PATH = f"{VENV_DIR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WHEELHOUSE_IN_ROOT = "/tmp/wheelhouse"
_COMPLETE = ".complete"
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+$")
# Bulky files nothing in the sandbox reads.
_CLEAN_GLOBS = (
    "var/lib/apt/lists/*",
    "var/cache/apt/*",
    "var/cache/debconf/*-old",
    "var/log/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "tmp/*",
)

Log = Callable[[str], None]


class BaseImageError(RuntimeError):
    """The offline base image cannot be built; the message says why and what to do."""


@dataclass(frozen=True)
class BaseSpec:
    """Everything that determines the base image; its hash names the image."""

    requirements: tuple[str, ...]  # exact pins, "name==version"
    suite: str = DEBIAN_SUITE  # Debian release for debootstrap
    mirror: str = DEBIAN_MIRROR  # Debian mirror reachable over plain apt
    apt_packages: tuple[str, ...] = APT_PACKAGES  # installed without recommends
    builder_version: int = field(default=BUILDER_VERSION)  # recipe version

    def content_hash(self) -> str:
        """Short, stable hash of every field (sorted pins, so order does not matter)."""
        data = asdict(self)
        data["requirements"] = sorted(r.lower() for r in self.requirements)
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def tag(self) -> str:
        """The image tag, ``pytorch-researcher-base:<hash>``."""
        return f"{BASE_REPOSITORY}:{self.content_hash()}"


def parse_requirements(text: str, source: str = "requirements") -> tuple[str, ...]:
    """Exact pins from a requirements text; anything but ``name==version`` is an error."""
    pins: list[str] = []
    bad: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if _PIN.match(line):
            pins.append(line)
        else:
            bad.append(f"line {number}: {line!r}")
    if bad:
        raise BaseImageError(f"{source}: only exact pins (name==version) are allowed: {'; '.join(bad)}")
    if not pins:
        raise BaseImageError(f"{source}: no packages listed")
    return tuple(pins)


def default_spec(requirements: Path = DEFAULT_REQUIREMENTS) -> BaseSpec:
    """The spec from ``sandbox_image/requirements.txt``."""
    try:
        text = requirements.read_text()
    except OSError as exc:
        raise BaseImageError(f"cannot read the base image pins {requirements}: {exc}") from exc
    return BaseSpec(requirements=parse_requirements(text, str(requirements)))


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pytorch-researcher`` or ``~/.cache/pytorch-researcher``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytorch-researcher"


# ---------------------------------------------------------------- pure command builders


def target_platforms(glibc_minor: int = TARGET_GLIBC_MINOR) -> list[str]:
    """Every manylinux tag a Debian 12 x86_64 system accepts (pip does not expand them)."""
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(glibc_minor, 16, -1)]
    return [*tags, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def pip_download_command(python: str, dest: Path, requirements: Path) -> list[str]:
    """``pip download`` of binary wheels for the image's Python, using the host's pip config."""
    argv = [python, "-m", "pip", "download", "--disable-pip-version-check", "--quiet"]
    argv += ["--dest", str(dest), "--only-binary=:all:", "--implementation", "cp"]
    argv += ["--python-version", TARGET_PYTHON, "--abi", "cp" + TARGET_PYTHON.replace(".", "")]
    argv += ["--abi", "abi3", "--abi", "none"]
    for platform in target_platforms():
        argv += ["--platform", platform]
    return [*argv, "--requirement", str(requirements)]


def debootstrap_command(spec: BaseSpec, root: Path) -> list[str]:
    """A minimal Debian into ``root``."""
    return ["debootstrap", "--variant=minbase", spec.suite, str(root), spec.mirror]


def chroot_command(root: Path, *argv: str) -> list[str]:
    """``argv`` inside the chroot with an empty environment (host pip settings must not leak)."""
    env = [f"PATH={CHROOT_PATH}", "HOME=/root", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"]
    return ["env", "-i", *env, "chroot", str(root), *argv]


def chroot_steps(spec: BaseSpec) -> list[tuple[str, list[str]]]:
    """The named commands run inside the chroot, in order."""
    pip = [f"{VENV_DIR}/bin/python", "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]
    install = [*pip, "install", "--no-index", "--find-links", WHEELHOUSE_IN_ROOT]
    return [
        ("apt-get update", ["apt-get", "update", "-q"]),
        (
            "apt-get install " + " ".join(spec.apt_packages),
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *spec.apt_packages],
        ),
        ("python3 -m venv", ["python3", "-m", "venv", VENV_DIR]),
        ("pip install wheels", [*install, "--requirement", f"{WHEELHOUSE_IN_ROOT}/requirements.txt"]),
        ("apt-get clean", ["apt-get", "clean"]),
    ]


def import_changes(spec: BaseSpec) -> list[str]:
    """Dockerfile instructions applied by ``docker import``."""
    return [
        f"ENV PATH={IMAGE_PATH}",
        f"ENV VIRTUAL_ENV={VENV_DIR}",
        "ENV LANG=C.UTF-8",
        f"LABEL {BASE_HASH_LABEL}={spec.content_hash()}",
        'CMD ["python"]',
    ]


# ---------------------------------------------------------------- side effects


@contextlib.contextmanager
def _step(log: Log, what: str) -> Iterator[None]:
    """Log ``what``, then its duration."""
    log(f"[base] {what} ...")
    start = time.monotonic()
    yield
    log(f"[base] {what}: done in {time.monotonic() - start:.1f} s")


def _run(argv: list[str]) -> None:
    """Run a command quietly; on failure raise with the tail of its output."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except OSError as exc:
        raise BaseImageError(f"cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise BaseImageError(f"`{' '.join(argv[:6])} ...` failed with exit {proc.returncode}:\n{tail}")


def check_host() -> None:
    """Fail early, with the fix, when this host cannot build the base."""
    if os.geteuid() != 0:
        raise BaseImageError(
            "building the offline base image needs root (debootstrap, chroot): run the build as "
            "root (sudo), or pass --base-image IMAGE to build on an image from your registry"
        )
    missing = [tool for tool in ("debootstrap", "chroot", "tar") if shutil.which(tool) is None]
    if missing:
        raise BaseImageError(
            f"missing {', '.join(missing)}: `apt-get install -y debootstrap` (scripts/setup.sh does)"
        )


def ensure_wheelhouse(spec: BaseSpec, cache_dir: Path, log: Log) -> Path:
    """The wheels for ``spec`` in a cached directory, downloaded once per pin set."""
    root = cache_dir / "wheelhouse"
    house = root / spec.content_hash()
    if (house / _COMPLETE).is_file():
        log(f"[base] wheelhouse {house}: cached")
        return house
    house.mkdir(parents=True, exist_ok=True)
    requirements = house / "requirements.txt"
    requirements.write_text("\n".join(spec.requirements) + "\n")
    with _step(log, f"pip download into {house}"):
        _run(pip_download_command(sys.executable, house, requirements))
    (house / _COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
    for stale in root.iterdir():
        # Other pin sets are several GB each and never used again.
        if stale.is_dir() and stale != house:
            log(f"[base] removing stale wheelhouse {stale}")
            shutil.rmtree(stale, ignore_errors=True)
    return house


def _link_tree(source: Path, dest: Path) -> None:
    """Hard-link (copy across file systems) the files of ``source`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if not item.is_file():
            continue
        try:
            os.link(item, dest / item.name)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM):
                raise
            shutil.copy2(item, dest / item.name)


def _clean_rootfs(root: Path) -> None:
    """Delete caches and docs the image does not need."""
    for pattern in _CLEAN_GLOBS:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def build_rootfs(spec: BaseSpec, wheelhouse: Path, root: Path, log: Log) -> None:
    """Debian minbase with Python and the venv of pinned wheels, in ``root``."""
    with _step(log, f"debootstrap {spec.suite} (minbase)"):
        _run(debootstrap_command(spec, root))
    # Hard links, not a bind mount: nothing is mounted, so deleting the tree is always safe.
    _link_tree(wheelhouse, root / WHEELHOUSE_IN_ROOT.lstrip("/"))
    for name, argv in chroot_steps(spec):
        with _step(log, name):
            _run(chroot_command(root, *argv))
    with _step(log, "remove caches and docs"):
        _clean_rootfs(root)


def _tar_chunks(root: Path, errors: IO[bytes], chunk: int = 1 << 20) -> Iterator[bytes]:
    """Stream ``tar -C root -c .`` (stderr to ``errors``); raise if tar fails."""
    proc = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(root), "-cf", "-", "."],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=errors,
    )
    stdout = proc.stdout
    assert stdout is not None
    try:
        yield from iter(lambda: stdout.read(chunk), b"")
    except GeneratorExit:
        proc.kill()  # the engine stopped reading: do not leave tar behind
        raise
    finally:
        stdout.close()
        code = proc.wait()
    if code != 0:
        errors.seek(0)
        detail = errors.read().decode(errors="replace")[-2000:]
        raise BaseImageError(f"tar of the base rootfs failed (exit {code}): {detail}")


def import_rootfs(client: docker.DockerClient, spec: BaseSpec, root: Path, log: Log) -> None:
    """``tar | docker import`` with the image settings, tagged ``spec.tag``."""
    repository, tag = spec.tag.split(":")
    with _step(log, f"docker import {spec.tag}"), tempfile.TemporaryFile() as errors:
        client.api.import_image_from_stream(
            _tar_chunks(root, errors), repository=repository, tag=tag, changes=import_changes(spec)
        )
    if not base_image_exists(client, spec):
        raise BaseImageError(f"docker import finished but {spec.tag} is missing or unlabelled")


def base_image_exists(client: docker.DockerClient, spec: BaseSpec) -> bool:
    """Whether ``spec.tag`` is present with the matching hash label."""
    try:
        image = client.images.get(spec.tag)
    except docker.errors.ImageNotFound:
        return False
    return (image.labels or {}).get(BASE_HASH_LABEL) == spec.content_hash()


def ensure_base_image(
    client: docker.DockerClient,
    *,
    spec: BaseSpec | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
    log: Log = print,
) -> str:
    """The offline base image's tag, built only when missing (or ``force``)."""
    spec = spec or default_spec()
    if not force and base_image_exists(client, spec):
        log(f"[base] {spec.tag}: up to date")
        return spec.tag
    check_host()
    cache_dir = cache_dir or default_cache_dir()
    start = time.monotonic()
    wheelhouse = ensure_wheelhouse(spec, cache_dir, log)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="rootfs-") as tmp:
        root = Path(tmp) / "root"
        build_rootfs(spec, wheelhouse, root, log)
        import_rootfs(client, spec, root, log)
    log(f"[base] {spec.tag}: built in {time.monotonic() - start:.1f} s")
    return spec.tag
