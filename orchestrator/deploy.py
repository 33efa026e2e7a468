"""The orchestrator's own image, for compose.yaml: ``researcher`` in a container.

``build_orchestrator_image()`` mirrors ``orchestrator.sandbox.image.build_image``: without
``base_image`` it builds ``orchestrator/Dockerfile`` on the offline base (the sandbox's,
from Debian packages) with ``--network none``; the wheels of the project's dependencies
that the base lacks come from a wheelhouse the host's pip downloads once::

    installed metadata (this Python) ──> pins: project deps' closure minus the base's
    pip download --no-deps (host pip) ──> ~/.cache/pytorch-researcher/orchestrator-wheelhouse/<hash>
    tar(Dockerfile, pyproject.toml, README.md, packages' *.py, wheelhouse/*.whl)
        ──> docker build --network none, INSTALL_DEPS=0 ──> pytorch-researcher:latest

With ``base_image`` (a public Python image from the user's registry) pip fetches
everything. The image is cached by a content hash of the files, the pins, the base id
and the build args, as the sandbox image is. Errors are ``SandboxUnavailable``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import docker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from orchestrator.exceptions import SandboxUnavailable
from orchestrator.sandbox.image import (
    HOST_ONLY_MODULES,
    ImageInfo,
    Log,
    build_inputs,
    build_once,
    content_hash,
    inspect_image,
    offline_builder,
    stream_build,
    write_tar,
)
from sandbox_image.protocol import PROTOCOL_VERSION

ORCHESTRATOR_IMAGE = "pytorch-researcher:latest"
DOCKERFILE = "orchestrator/Dockerfile"
PACKAGES = ("orchestrator", "evaluator", "sandbox_image")
PROJECT_FILES = ("pyproject.toml", "README.md")
WHEELHOUSE = "wheelhouse"  # its name in the build context (the Dockerfile's `wheelhous[e]`)
REBUILD_HINT = "build it with `researcher image build --orchestrator` (scripts/setup.sh does)"
_COMPLETE = ".complete"


def context_files(root: Path) -> list[str]:
    """The project's files sent to the build (relative to ``root``), Dockerfile first."""
    missing = [name for name in (DOCKERFILE, *PROJECT_FILES) if not (root / name).is_file()]
    if missing:
        raise SandboxUnavailable(
            f"{', '.join(missing)} not found in {root}: build the orchestrator image from a source checkout"
        )
    modules = sorted(
        path.relative_to(root).as_posix()
        for package in PACKAGES
        for path in (root / package).rglob("*.py")
        if "__pycache__" not in path.parts
    )
    return [DOCKERFILE, *PROJECT_FILES, *(m for m in modules if m not in HOST_ONLY_MODULES)]


def project_requirements(root: Path) -> list[str]:
    """``[project].dependencies`` of the checkout's pyproject.toml."""
    try:
        return list(tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise SandboxUnavailable(f"cannot read the dependencies in {root / 'pyproject.toml'}: {exc}") from exc


def installed_closure(requirements: Iterable[str]) -> dict[str, str]:
    """Canonical name -> version installed in this Python, for ``requirements`` and all they need."""
    found: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo = [(_requirement(text), "") for text in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        wanted = {(name, e) for e in ("", *req.extras)} - seen
        if not wanted:
            continue
        seen |= wanted
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as exc:
            raise SandboxUnavailable(
                f"{req.name} (needed by the orchestrator image) is not installed in {sys.executable}: "
                "the wheels are pinned to this environment's versions; run scripts/setup.sh"
            ) from exc
        found[name] = dist.version
        for line in dist.requires or ():
            todo.extend((_requirement(line), e) for _, e in wanted)
    return found


def _requirement(text: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise SandboxUnavailable(f"cannot parse the requirement {text!r}: {exc}") from exc


def wheel_pins(root: Path, base_requirements: Iterable[str]) -> tuple[str, ...]:
    """``name==version`` of what the project needs beyond the base's packages, sorted."""
    have = installed_closure(base_requirements)
    need = installed_closure(project_requirements(root))
    return tuple(sorted(f"{name}=={version}" for name, version in need.items() if name not in have))


def ensure_wheelhouse(pins: tuple[str, ...], cache_dir: Path, log: Log) -> Path:
    """The wheels of exactly ``pins`` (no dependencies resolved), downloaded once per pin set."""
    builder = offline_builder()
    root = cache_dir / "orchestrator-wheelhouse"
    house = root / hashlib.sha256("\n".join(pins).encode()).hexdigest()[:16]
    if (house / _COMPLETE).is_file():
        log(f"[orchestrator] wheelhouse {house}: cached")
        return house
    house.mkdir(parents=True, exist_ok=True)
    requirements = house / "requirements.txt"
    requirements.write_text("\n".join(pins) + "\n")
    # --no-deps: the pins are the whole closure already; resolving would fetch torch again (GBs).
    argv = [*builder.pip_download_command(sys.executable, house, requirements), "--no-deps"]
    log(f"[orchestrator] pip download {len(pins)} wheels into {house} ...")
    start = time.monotonic()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SandboxUnavailable(
            f"pip download of the orchestrator's wheels failed (exit {proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr)[-3000:]}"
        )
    (house / _COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
    log(f"[orchestrator] pip download: done in {time.monotonic() - start:.1f} s")
    for stale in root.iterdir():
        if stale.is_dir() and stale != house:
            log(f"[orchestrator] removing stale wheelhouse {stale}")
            shutil.rmtree(stale, ignore_errors=True)
    return house


def check_orchestrator_image(client: docker.DockerClient, tag: str = ORCHESTRATOR_IMAGE) -> ImageInfo:
    """The image's info when it exists; SandboxUnavailable saying how to build it otherwise."""
    info = inspect_image(client, tag)
    if info is None:
        raise SandboxUnavailable(f"orchestrator image {tag!r} not found: {REBUILD_HINT}")
    if info.protocol != PROTOCOL_VERSION:
        raise SandboxUnavailable(
            f"orchestrator image {tag!r} speaks protocol {info.protocol}, this checkout "
            f"{PROTOCOL_VERSION}: re{REBUILD_HINT[1:]}"
        )
    return info


def build_orchestrator_image(
    *,
    force: bool = False,
    base_image: str | None = None,
    tag: str = ORCHESTRATOR_IMAGE,
    log: Log = print,
    client: docker.DockerClient | None = None,
    root: Path | None = None,
) -> ImageInfo:
    """Build (or reuse, by content hash) the orchestrator's image and tag it ``tag``."""
    b = build_inputs(context_files, base_image=base_image, force=force, log=log, client=client, root=root)
    pins = wheel_pins(b.root, offline_builder().default_spec().requirements) if b.offline else ()
    args = {"BASE_IMAGE": b.base_name, "INSTALL_DEPS": "0" if b.offline else "1",
            "PROTOCOL_VERSION": str(PROTOCOL_VERSION)}
    digest = content_hash(b.root, b.files, b.base_id, {**args, "wheels": " ".join(pins)})

    def build() -> None:
        wheels = sorted(ensure_wheelhouse(pins, offline_builder().default_cache_dir(), log).glob("*.whl")) \
            if b.offline else []
        entries = [(name, b.root / name) for name in b.files]
        entries += [(f"{WHEELHOUSE}/{wheel.name}", wheel) for wheel in wheels]
        with tempfile.TemporaryFile() as context:  # the wheels make it ~100 MB: not in memory
            write_tar(context, entries)
            context.seek(0)
            stream_build(b.client, context, tag, {**args, "SOURCE_HASH": digest}, offline=b.offline, force=force,
                         log=log, dockerfile=DOCKERFILE, what="orchestrator image")

    build_once(b.client, tag, digest, build, force=force, log=log, label="orchestrator", what="orchestrator image",
               start=b.start)
    return check_orchestrator_image(b.client, tag)
