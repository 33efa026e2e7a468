"""The sandbox image: build it (cached by content hash), inspect it, refuse a stale one.

``build_image()`` does the right thing by itself: without ``base_image`` it builds the
offline base from Debian packages (``sandbox_image.builder``, needs root) and then
``Dockerfile.sandbox`` on top with ``--network none``; with ``base_image`` it builds on
the user's image (from their registry) and lets pip fetch what the base lacks.

The final image carries two labels: the protocol version it speaks and a content
hash of everything that went into it (Dockerfile, sandbox code, recipe, protocol
version, base image id, build args). An image with the same hash is reused.

Docker SDK and builder errors are translated here into ``SandboxUnavailable``.
The ``image`` command (``researcher image``, ``python -m orchestrator.image``) is
``orchestrator.image``; it and ``orchestrator.deploy`` (the orchestrator's own image)
build on this module, which imports neither.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import docker
import docker.errors
import requests
from docker.models.images import Image

from orchestrator.exceptions import SandboxUnavailable
from orchestrator.sandbox.docker import connect
from sandbox_image.protocol import IMAGE_PROTOCOL_LABEL, PROTOCOL_VERSION

DEFAULT_IMAGE = "pytorch-researcher-sandbox:latest"
CONTENT_HASH_LABEL = "org.pytorch-researcher.content-hash"
DOCKERFILE = "Dockerfile.sandbox"
#: Files of the build context besides the sandbox_image/*.py modules; missing ones are skipped.
EXTRA_CONTEXT_FILES = ("evaluator/__init__.py", "evaluator/recipe.py", "evaluator/augment.py")
#: Host-only modules of sandbox_image/ that the image does not need (also in .dockerignore).
HOST_ONLY_MODULES = ("sandbox_image/builder.py",)
BUILD_TIMEOUT_S = 3600
REBUILD_HINT = "build it with `researcher image build`"

Log = Callable[[str], None]


@dataclass(frozen=True)
class ImageInfo:
    """What the orchestrator needs to know about a local sandbox image."""

    tag: str  # the name it was looked up by
    id: str  # sha256:...
    protocol: int | None  # protocol version label, None when absent or unreadable
    content_hash: str | None  # content hash label, None when built by hand
    size_bytes: int  # as `docker image ls` counts it
    created: str  # ISO timestamp from the engine


def project_root() -> Path:
    """The source checkout that holds Dockerfile.sandbox."""
    return Path(__file__).resolve().parents[2]


def context_files(root: Path) -> list[str]:
    """Paths (relative to ``root``) sent to the build, sorted; Dockerfile first."""
    if not (root / DOCKERFILE).is_file():
        raise SandboxUnavailable(
            f"{DOCKERFILE} not found in {root}: build the image from a source checkout "
            "(`pip install -e .`)"
        )
    modules = sorted(p.relative_to(root).as_posix() for p in (root / "sandbox_image").glob("*.py"))
    modules = [name for name in modules if name not in HOST_ONLY_MODULES]
    extras = [name for name in EXTRA_CONTEXT_FILES if (root / name).is_file()]
    return [DOCKERFILE, *modules, *extras]


def content_hash(root: Path, files: Iterable[str], base_id: str, build_args: dict[str, str]) -> str:
    """Hash of everything that determines the image (file names and bytes, base, args)."""
    digest = hashlib.sha256()
    for name in files:
        data = (root / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    digest.update(f"base\0{base_id}\0".encode())
    for key in sorted(build_args):
        digest.update(f"arg\0{key}={build_args[key]}\0".encode())
    return digest.hexdigest()[:24]


def context_tar(root: Path, files: Iterable[str]) -> bytes:
    """A deterministic tar of exactly ``files`` (world-readable, root-owned, mtime 0)."""
    buffer = io.BytesIO()
    write_tar(buffer, ((name, root / name) for name in files))
    return buffer.getvalue()


def write_tar(fileobj: IO[bytes], entries: Iterable[tuple[str, Path]]) -> None:
    """Write (name in the tar, file) pairs as a deterministic tar (mode 0644, mtime 0) to ``fileobj``."""
    with tarfile.open(fileobj=fileobj, mode="w") as tar:
        for name, path in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with path.open("rb") as data:
                tar.addfile(info, data)


def split_tag(tag: str) -> tuple[str, str]:
    """``repo[:tag]`` -> (repo, tag); a registry port is not a tag."""
    repo, sep, name = tag.rpartition(":")
    if not sep or "/" in name:
        return tag, "latest"
    return repo, name


def _info(tag: str, image: Image) -> ImageInfo:
    labels = image.labels or {}
    try:
        protocol: int | None = int(labels.get(IMAGE_PROTOCOL_LABEL, ""))
    except ValueError:
        protocol = None
    return ImageInfo(
        tag=tag,
        id=image.id,
        protocol=protocol,
        content_hash=labels.get(CONTENT_HASH_LABEL) or None,
        size_bytes=int(image.attrs.get("Size", 0)),
        created=str(image.attrs.get("Created", "")),
    )


def inspect_image(client: docker.DockerClient, tag: str) -> ImageInfo | None:
    """The image's info, or None when no image has that name."""
    try:
        return _info(tag, client.images.get(tag))
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(f"cannot inspect image {tag!r}: {exc}") from exc


def check_image(client: docker.DockerClient, tag: str = DEFAULT_IMAGE) -> ImageInfo:
    """The image's info when it exists and speaks our protocol; SandboxUnavailable otherwise."""
    info = inspect_image(client, tag)
    if info is None:
        raise SandboxUnavailable(f"sandbox image {tag!r} not found: {REBUILD_HINT}")
    if info.protocol != PROTOCOL_VERSION:
        spoken = "no known protocol" if info.protocol is None else f"protocol {info.protocol}"
        raise SandboxUnavailable(
            f"sandbox image {tag!r} speaks {spoken}, this orchestrator speaks "
            f"{PROTOCOL_VERSION}: rebuild with `researcher image build`"
        )
    return info


def find_by_hash(client: docker.DockerClient, digest: str) -> Image | None:
    """An existing image whose content-hash label is ``digest``."""
    try:
        found = client.images.list(filters={"label": f"{CONTENT_HASH_LABEL}={digest}"})
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(f"cannot list images: {exc}") from exc
    return found[0] if found else None


def offline_builder():
    """``sandbox_image.builder``, host-only: the orchestrator's image does not ship it."""
    try:
        from sandbox_image import builder
    except ImportError as exc:
        raise SandboxUnavailable(
            "this installation has no offline base-image builder (sandbox_image/builder.py, host-only): "
            "build images on the Docker host from a source checkout (scripts/setup.sh), or pass --base-image"
        ) from exc
    return builder


def resolve_base(client: docker.DockerClient, base_image: str | None, force: bool, log: Log) -> tuple[str, str]:
    """(name, id) of the base: the offline one built here, or the user's."""
    if base_image is None:
        builder = offline_builder()
        try:
            base_image = builder.ensure_base_image(client, force=force, log=log)
        except builder.BaseImageError as exc:
            raise SandboxUnavailable(f"cannot build the offline base image: {exc}") from exc
    try:
        return base_image, client.images.get(base_image).id
    except docker.errors.ImageNotFound:
        # Not local: the build pulls it from the user's registry; hash the name instead.
        return base_image, f"name:{base_image}"
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(f"cannot inspect base image {base_image!r}: {exc}") from exc


def build_args(base_image: str, offline: bool, digest: str = "") -> dict[str, str]:
    """The Dockerfile.sandbox build args (without SOURCE_HASH when ``digest`` is empty)."""
    args = {
        "BASE_IMAGE": base_image,
        "INSTALL_DEPS": "0" if offline else "1",
        "PROTOCOL_VERSION": str(PROTOCOL_VERSION),
    }
    if digest:
        args["SOURCE_HASH"] = digest
    return args


def stream_build(
    client: docker.DockerClient,
    context: bytes | IO[bytes],
    tag: str,
    args: dict[str, str],
    *,
    offline: bool,
    force: bool,
    log: Log,
    dockerfile: str = DOCKERFILE,
    what: str = "sandbox image",
) -> None:
    """Run the build of a tar ``context``, logging each step with the seconds since the start."""
    start, tail = time.monotonic(), []
    stream = client.api.build(
        fileobj=io.BytesIO(context) if isinstance(context, bytes) else context,
        custom_context=True,
        dockerfile=dockerfile,
        tag=tag,
        buildargs=args,
        network_mode="none" if offline else None,  # the offline base needs nothing from outside
        nocache=force,
        rm=True,
        forcerm=True,
        decode=True,
        timeout=BUILD_TIMEOUT_S,
    )
    for chunk in stream:
        if "errorDetail" in chunk or "error" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk.get("error")
            raise SandboxUnavailable(f"{what} build failed: {detail}\n{''.join(tail[-30:])}")
        text = chunk.get("stream", "")
        tail.append(text)
        if text.startswith("Step "):
            step = " ".join(text.split())
            step = step if len(step) <= 100 else step[:97] + "..."
            log(f"[image] {time.monotonic() - start:6.1f} s  {step}")


def build_image(
    *,
    force: bool = False,
    base_image: str | None = None,
    tag: str = DEFAULT_IMAGE,
    log: Log = print,
    client: docker.DockerClient | None = None,
    root: Path | None = None,
) -> ImageInfo:
    """Build (or reuse, by content hash) the sandbox image and tag it ``tag``."""
    b = build_inputs(context_files, base_image=base_image, force=force, log=log, client=client, root=root)
    digest = content_hash(b.root, b.files, b.base_id, build_args(b.base_name, b.offline))

    def build() -> None:
        context = context_tar(b.root, b.files)
        stream_build(b.client, context, tag, build_args(b.base_name, b.offline, digest), offline=b.offline,
                     force=force, log=log)

    build_once(b.client, tag, digest, build, force=force, log=log, label="image", what="sandbox image", start=b.start)
    return check_image(b.client, tag)


@dataclass(frozen=True)
class BuildInputs:
    """What every image build starts from: the engine, the project, its context files, the base."""

    client: docker.DockerClient
    root: Path
    files: list[str]
    base_name: str
    base_id: str
    offline: bool  # no --base-image: the base is made from Debian packages, the wheels come along
    start: float


def build_inputs(files_of: Callable[[Path], list[str]], *, base_image: str | None, force: bool, log: Log,
                 client: docker.DockerClient | None, root: Path | None) -> BuildInputs:
    """Connect, find the project and its context files (``files_of``), and resolve the base image."""
    start = time.monotonic()
    client = client or connect(timeout=BUILD_TIMEOUT_S)
    root = root or project_root()
    files = files_of(root)
    base_name, base_id = resolve_base(client, base_image, force, log)
    return BuildInputs(client, root, files, base_name, base_id, base_image is None, start)


def build_once(client: docker.DockerClient, tag: str, digest: str, build: Callable[[], None], *, force: bool,
               log: Log, label: str, what: str, start: float) -> None:
    """Tag our image of content hash ``digest`` as ``tag``, or ``build()`` it when there is none (or ``force``).

    Docker SDK and transport errors become ``SandboxUnavailable``; old builds the
    new one replaced are pruned afterwards.
    """
    cached = None if force else find_by_hash(client, digest)
    try:
        if cached is not None:
            cached.tag(*split_tag(tag))
            log(f"[{label}] {tag}: up to date ({digest})")
        else:
            build()
            log(f"[{label}] {tag}: built in {time.monotonic() - start:.1f} s ({digest})")
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise SandboxUnavailable(f"{what} build failed: {exc}") from exc
    prune_replaced(client, log)


def prune_replaced(client: docker.DockerClient, log: Log) -> None:
    """Remove our untagged old builds that no container uses (never anyone else's images)."""
    try:
        result = client.images.prune(filters={"dangling": True, "label": CONTENT_HASH_LABEL})
    except docker.errors.DockerException:
        return  # housekeeping only; the new image is in place
    removed = [d for d in result.get("ImagesDeleted") or [] if d.get("Deleted")]
    if removed:
        log(f"[image] removed {len(removed)} layer(s) of replaced images")
