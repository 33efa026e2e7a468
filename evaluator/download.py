"""Fetch torchvision's datasets on the trusted host, checksums verified, never in a sandbox.

``fetch("cifar10", root)`` downloads torchvision's files with torchvision's own
``download_url`` (from torchvision's URLs, or from ``mirror``), checks each
against torchvision's md5, unpacks it and moves the result into ``root`` in
torchvision's on-disk layout, which ``evaluator.datasets.load_dataset`` reads:

    root/cifar-10-batches-py/   data_batch_1..5, test_batch, batches.meta
    root/cifar-100-python/      train, test, meta
    root/MNIST/raw/             train-images-idx3-ubyte, ... (the four idx files)
    root/FashionMNIST/raw/      the same four names

Everything is downloaded and unpacked in a hidden staging folder inside ``root``
first, and moved into place only once every file has passed its checksum, so a
failed or interrupted download leaves nothing behind. A mirror (``--mirror``,
for hosts without internet, and for tests) holds each dataset's files under a
folder named after it: ``MIRROR/cifar10/cifar-10-python.tar.gz``,
``MIRROR/mnist/train-images-idx3-ubyte.gz``, ...

The md5s come from torchvision's dataset classes (``torchvision_sources()``);
``sources=`` replaces that catalogue, which is how tests serve small archives.

    DataError
    └── DownloadError          a URL could not be fetched, or an archive is unusable
        └── ChecksumError      a file's md5 is not the catalogue's
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from evaluator.datasets import DOWNLOADABLE, canonical_name, missing
from evaluator.errors import DataError, UsageError

#: The variable that moves the cache; the data go to $XDG_CACHE_HOME/pytorch-researcher/data.
CACHE_VARIABLE = "XDG_CACHE_HOME"
Progress = Callable[[str], None]


class DownloadError(DataError):
    """A dataset could not be downloaded or unpacked; the message names the file and the URL."""


class ChecksumError(DownloadError):
    """A downloaded file's md5 is not the expected one."""


@dataclass(frozen=True)
class Remote:
    """One file to download and its md5."""

    filename: str
    md5: str


@dataclass(frozen=True)
class Source:
    """Where a dataset's files come from and what they unpack to under the data dir."""

    name: str  # evaluator.datasets name, e.g. "cifar10"; also its folder on a mirror
    bases: tuple[str, ...]  # URL prefixes tried in order: a file's URL is base + filename
    files: tuple[Remote, ...]
    folder: str  # where the unpacked files go under the data dir, e.g. "MNIST/raw"
    expect: tuple[str, ...]  # the files that must be in ``folder`` afterwards


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where datasets go without --data-dir: $XDG_CACHE_HOME/pytorch-researcher/data (~/.cache by default)."""
    env = os.environ if environ is None else environ
    base = env.get(CACHE_VARIABLE, "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser() / "pytorch-researcher" / "data"


def torchvision_sources() -> dict[str, Source]:
    """The catalogue: torchvision's URLs, file names and md5s for each downloadable dataset."""
    from torchvision import datasets as tvd

    sources = {}
    for name, cls in (("cifar10", tvd.CIFAR10), ("cifar100", tvd.CIFAR100)):
        base = cls.url[: -len(cls.filename)]
        expect = tuple(f for f, _ in cls.train_list + cls.test_list) + (cls.meta["filename"],)
        sources[name] = Source(name, (base,), (Remote(cls.filename, cls.tgz_md5),), cls.base_folder, expect)
    for name, cls in (("mnist", tvd.MNIST), ("fashion_mnist", tvd.FashionMNIST)):
        files = tuple(Remote(f, md5) for f, md5 in cls.resources)
        expect = tuple(f.removesuffix(".gz") for f, _ in cls.resources)
        sources[name] = Source(name, tuple(cls.mirrors), files, f"{cls.__name__}/raw", expect)
    return sources


def is_present(source: Source, root: Path) -> bool:
    """Whether ``root`` already holds every file the dataset unpacks to."""
    return all((root / source.folder / f).is_file() for f in source.expect)


def fetch(name: str, root: str | Path | None = None, *, mirror: str | None = None,
          sources: Mapping[str, Source] | None = None, progress: Progress | None = None) -> Path:
    """Download dataset ``name`` into ``root`` (default: ``cache_dir()``) unless it is there; returns ``root``."""
    source = _source(name, sources)
    target = Path(root).expanduser() if root is not None else cache_dir()
    say = progress or (lambda line: None)
    if is_present(source, target):
        say(f"{source.name}: already in {target / source.folder}")
        return target
    bases = (_mirror_base(mirror, source.name),) if mirror else source.bases
    made = [d for d in (target, *target.parents) if not d.exists()]  # removed again if the download fails
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=target) as staging:
            _stage_and_move(source, bases, Path(staging), target, say)
    except OSError as exc:
        _remove_empty(made)
        raise DownloadError(f"cannot write to {target} ({exc.strerror or exc}); choose another --data-dir") from exc
    except BaseException:  # DownloadError, Ctrl-C: nothing of ours stays
        _remove_empty(made)
        raise
    say(f"{source.name}: ready in {target / source.folder}")
    return target


def ensure(name: str, data_dir: str | None, *, download: bool = False, mirror: str | None = None,
           sources: Mapping[str, Source] | None = None, progress: Progress | None = None) -> str | None:
    """The data dir to load ``name`` from: as given, else the cache; downloads it there when asked.

    Raises DataError saying how to get the dataset when it is not available and not
    downloaded. Datasets that need no files (scikit-learn's) return ``data_dir`` as is.
    """
    lacking = missing(name, data_dir)
    if lacking is None:
        return data_dir
    key = canonical_name(name)
    cached = cache_dir()
    if data_dir is None and key in DOWNLOADABLE and missing(key, cached) is None:
        return str(cached)
    if not download:
        raise DataError(lacking)
    if key not in DOWNLOADABLE:
        raise DataError(f"--download fetches only {', '.join(DOWNLOADABLE)}; {key}: {lacking}")
    root = fetch(key, data_dir, mirror=mirror, sources=sources, progress=progress)
    if (still := missing(key, root)) is not None:  # the archive unpacked, yet the loader finds nothing
        raise DownloadError(f"{key} was downloaded into {root} but does not load: {still}")
    return str(root)


# ------------------------------------------------------------------ steps


def _source(name: str, sources: Mapping[str, Source] | None) -> Source:
    key = canonical_name(name)
    catalogue = torchvision_sources() if sources is None else sources
    if key not in catalogue:
        raise UsageError(f"{name!r} cannot be downloaded; `researcher data get` fetches {', '.join(DOWNLOADABLE)}")
    return catalogue[key]


def _mirror_base(mirror: str, name: str) -> str:
    """``MIRROR/NAME/``: each dataset in its own folder (MNIST and Fashion-MNIST share file names)."""
    if not mirror.startswith(("http://", "https://")):
        raise UsageError(f"--mirror {mirror!r} must be an http:// or https:// URL")
    return f"{mirror.rstrip('/')}/{name}/"


def _stage_and_move(source: Source, bases: tuple[str, ...], staging: Path, target: Path, say: Progress) -> None:
    """Download and check every file, unpack them in ``staging``, then move the result into ``target``."""
    for remote in source.files:
        _fetch_one(remote, bases, staging / "files", say)
    tree = staging / "tree"
    for remote in source.files:
        _unpack(staging / "files" / remote.filename, tree / source.folder)
    _check_unpacked(source, tree)
    _move_into(tree / source.folder, target / source.folder)


def _fetch_one(remote: Remote, bases: tuple[str, ...], into: Path, say: Progress) -> None:
    """Download ``remote`` from the first base that serves it with the right md5."""
    errors: list[DownloadError] = []
    for base in bases:
        url = base + remote.filename
        say(f"downloading {url}")
        try:
            _download(url, into, remote.filename)
            _verify(into / remote.filename, remote, url)
            return
        except DownloadError as exc:
            (into / remote.filename).unlink(missing_ok=True)
            errors.append(exc)
    checksum = [e for e in errors if isinstance(e, ChecksumError)]
    if len(errors) == 1 or checksum:
        raise (checksum or errors)[0]
    raise DownloadError(f"could not download {remote.filename}: " + "; ".join(str(e) for e in errors))


def _download(url: str, into: Path, filename: str) -> None:
    """torchvision's own downloader (with its progress bar); its errors become DownloadError."""
    from torchvision.datasets.utils import download_url

    try:
        download_url(url, str(into), filename=filename, md5=None)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response and its socket
        raise DownloadError(f"{url}: the server answered {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"{url}: cannot connect ({exc.reason}); check the URL, or use --mirror with "
                            "a server you can reach") from exc
    except (OSError, RuntimeError, ValueError) as exc:  # a dropped connection, a bad URL
        raise DownloadError(f"{url}: download failed ({type(exc).__name__}: {exc})") from exc


def _verify(path: Path, remote: Remote, url: str) -> None:
    from torchvision.datasets.utils import calculate_md5

    actual = calculate_md5(path)
    if actual != remote.md5:
        raise ChecksumError(f"checksum mismatch for {remote.filename} from {url}: expected md5 {remote.md5}, "
                            f"got {actual}; the file was discarded and nothing was written")


def _unpack(archive: Path, folder: Path) -> None:
    """A .tar.gz into ``folder``'s parent (it holds ``folder``); a lone .gz into ``folder``."""
    try:
        if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
            folder.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive) as tar:
                tar.extractall(folder.parent, filter="data")  # no links out, no absolute paths
        elif archive.suffix == ".gz":
            folder.mkdir(parents=True, exist_ok=True)
            with gzip.open(archive, "rb") as src, (folder / archive.name.removesuffix(".gz")).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive, folder / archive.name)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DownloadError(f"{archive.name}: cannot unpack ({exc})") from exc


def _check_unpacked(source: Source, tree: Path) -> None:
    lacking = [f for f in source.expect if not (tree / source.folder / f).is_file()]
    if lacking:
        raise DownloadError(f"{', '.join(r.filename for r in source.files)} unpacked without "
                            f"{source.folder}/{', '.join(lacking)}; nothing was written")


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed download made, deepest first, where they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _move_into(src: Path, dst: Path) -> None:
    """Move each unpacked file into place (a rename on the same file system: never half-written)."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, out)
