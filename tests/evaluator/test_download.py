"""Downloads on the trusted host, against a loopback HTTP server serving tiny archives in the real formats.

The mirror serves ``/<dataset>/<torchvision's file name>``: a cifar-10-python.tar.gz
with the real directory and pickled batches, cifar-100-python.tar.gz, and the four
gzipped idx files of MNIST and Fashion-MNIST. The tests hand ``fetch`` a catalogue
with torchvision's names and layout but these files' md5s (the override hook).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import socket
import struct
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from evaluator import download
from evaluator.datasets import load_dataset
from evaluator.download import ChecksumError, DownloadError, Remote, Source, cache_dir, ensure, fetch
from evaluator.errors import DataError, UsageError

# ------------------------------------------------------------------ tiny files in the real formats


def _idx_gz(array: np.ndarray) -> bytes:
    """An idx file (uint8, big-endian dims), gzipped as torchvision downloads it."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def _idx_files(n_train: int, n_test: int, seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte.gz": _idx_gz(rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte.gz": _idx_gz(np.arange(n_train, dtype=np.uint8) % 10),
        "t10k-images-idx3-ubyte.gz": _idx_gz(rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte.gz": _idx_gz(np.arange(n_test, dtype=np.uint8) % 10),
    }


def _tar_gz(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _batch(rng: np.random.Generator, n: int, label_key: str, classes: int) -> bytes:
    """A CIFAR python batch: a pickled dict with bytes keys, as the real (Python 2) files have."""
    entry = {b"batch_label": b"tiny batch", label_key.encode(): [i % classes for i in range(n)],
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    return pickle.dumps(entry, protocol=2)


def _cifar10_archive(per_batch: int = 4) -> bytes:
    rng = np.random.default_rng(10)
    folder = "cifar-10-batches-py/"
    members = {folder + f"data_batch_{i}": _batch(rng, per_batch, "labels", 10) for i in range(1, 6)}
    members[folder + "test_batch"] = _batch(rng, per_batch, "labels", 10)
    members[folder + "batches.meta"] = pickle.dumps(
        {b"num_cases_per_batch": per_batch, b"label_names": [f"class{i}".encode() for i in range(10)],
         b"num_vis": 3072}, protocol=2)
    members[folder + "readme.html"] = b"<html>tiny CIFAR-10</html>"
    return _tar_gz(members)


def _cifar100_archive(n: int = 100) -> bytes:
    rng = np.random.default_rng(100)
    folder = "cifar-100-python/"
    members = {}
    for split in ("train", "test"):
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [i % 100 for i in range(n)], b"coarse_labels": [i % 20 for i in range(n)]}
        members[folder + split] = pickle.dumps(entry, protocol=2)
    members[folder + "meta"] = pickle.dumps({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                             b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return _tar_gz(members)


def mirror_files() -> dict[str, bytes]:
    """URL path (dataset/file) -> content, in the layout ``--mirror`` expects."""
    files = {"cifar10/cifar-10-python.tar.gz": _cifar10_archive(), "cifar100/cifar-100-python.tar.gz": _cifar100_archive()}
    files.update({f"mnist/{k}": v for k, v in _idx_files(20, 10, seed=1).items()})
    files.update({f"fashion_mnist/{k}": v for k, v in _idx_files(30, 10, seed=2).items()})
    return files


def catalogue(files: dict[str, bytes]) -> dict[str, Source]:
    """torchvision's catalogue with the served files' md5s in place of the real ones."""
    out = {}
    for name, source in download.torchvision_sources().items():
        remotes = tuple(Remote(r.filename, hashlib.md5(files[f"{name}/{r.filename}"]).hexdigest())
                        for r in source.files)
        out[name] = dataclasses.replace(source, files=remotes)
    return out


# ------------------------------------------------------------------ the loopback mirror


@dataclasses.dataclass
class Mirror:
    """A loopback HTTP server over ``root``, recording the paths it was asked for."""

    url: str
    root: Path
    requests: list[str]
    sources: dict[str, Source]

    def corrupt(self, path: str) -> None:
        """Change a served file after its md5 went into the catalogue."""
        target = self.root / path
        target.write_bytes(target.read_bytes() + b"tampered")


@pytest.fixture
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """Serve the tiny archives on 127.0.0.1 in a thread (from outside tmp_path); shut it down afterwards."""
    root = tmp_path_factory.mktemp("mirror")
    files = mirror_files()
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep the test output clean
            requests.append(self.path)

        def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
            try:  # torchvision probes for redirects with a GET it closes after the headers
                super().copyfile(source, outputfile)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Mirror(f"http://127.0.0.1:{server.server_address[1]}", root, requests, catalogue(files))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (hidden ones too), relative."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ------------------------------------------------------------------ downloads that work


def test_cifar10_downloads_into_torchvisions_layout_and_loads(mirror: Mirror, tmp_path: Path) -> None:
    lines: list[str] = []
    root = fetch("CIFAR-10", tmp_path / "data", mirror=mirror.url, sources=mirror.sources, progress=lines.append)
    assert root == tmp_path / "data"
    assert tree(root) == ["cifar-10-batches-py", *(f"cifar-10-batches-py/{f}" for f in sorted(
        ["batches.meta", "readme.html", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]))]
    ds = load_dataset("cifar10", root)
    assert ds.x.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)  # type: ignore[union-attr]
    assert ds.class_names == tuple(f"class{i}" for i in range(10))
    assert lines[0] == f"downloading {mirror.url}/cifar10/cifar-10-python.tar.gz"
    assert lines[-1] == f"cifar10: ready in {root / 'cifar-10-batches-py'}"


def test_cifar100_downloads_and_loads_fine_and_coarse(mirror: Mirror, tmp_path: Path) -> None:
    root = fetch("cifar100", tmp_path, mirror=mirror.url, sources=mirror.sources)
    assert load_dataset("cifar100", root).num_classes == 100
    assert load_dataset("cifar100", root, coarse=True).num_classes == 20


def test_mnist_and_fashion_mnist_share_file_names_but_not_folders(mirror: Mirror, tmp_path: Path) -> None:
    for name in ("mnist", "fashion-mnist"):
        fetch(name, tmp_path, mirror=mirror.url, sources=mirror.sources)
    names = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    assert tree(tmp_path) == ["FashionMNIST", "FashionMNIST/raw", *(f"FashionMNIST/raw/{n}" for n in names),
                              "MNIST", "MNIST/raw", *(f"MNIST/raw/{n}" for n in names)]
    mnist = load_dataset("mnist", tmp_path)
    fashion = load_dataset("fashion_mnist", tmp_path)
    assert (len(mnist.y), len(mnist.y_test)) == (20, 10)  # type: ignore[arg-type]
    assert (len(fashion.y), len(fashion.y_test)) == (30, 10)  # type: ignore[arg-type]
    assert str(tmp_path / "FashionMNIST" / "raw") in fashion.source  # not Debian's copy
    import torchvision

    assert len(torchvision.datasets.MNIST(str(tmp_path), train=False)) == 10  # torchvision reads it as its own


def test_data_already_there_is_not_downloaded_again(mirror: Mirror, tmp_path: Path) -> None:
    fetch("mnist", tmp_path, mirror=mirror.url, sources=mirror.sources)
    asked = len(mirror.requests)
    lines: list[str] = []
    fetch("mnist", tmp_path, mirror=mirror.url, sources=mirror.sources, progress=lines.append)
    assert len(mirror.requests) == asked
    assert lines == [f"mnist: already in {tmp_path / 'MNIST' / 'raw'}"]


def test_a_source_with_several_bases_falls_through_to_one_that_works(mirror: Mirror, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/mnist/"
    sources = {"mnist": dataclasses.replace(mirror.sources["mnist"], bases=(dead, f"{mirror.url}/mnist/"))}
    fetch("mnist", tmp_path, sources=sources)
    assert load_dataset("mnist", tmp_path).num_classes == 10


# ------------------------------------------------------------------ failures leave nothing behind


def test_a_corrupted_file_fails_its_checksum_and_leaves_nothing(mirror: Mirror, tmp_path: Path) -> None:
    mirror.corrupt("mnist/t10k-images-idx3-ubyte.gz")  # the third of four files: two were fine
    expected = mirror.sources["mnist"].files[2].md5
    actual = hashlib.md5((mirror.root / "mnist/t10k-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    target = tmp_path / "data"
    with pytest.raises(ChecksumError) as exc:
        fetch("mnist", target, mirror=mirror.url, sources=mirror.sources)
    message = str(exc.value)
    assert "t10k-images-idx3-ubyte.gz" in message and f"expected md5 {expected}" in message
    assert f"got {actual}" in message and actual != expected
    assert tree(tmp_path) == []  # not even the data dir it made
    assert isinstance(exc.value, DataError)


def test_a_corrupt_archive_in_an_existing_dir_leaves_the_dir_as_it_was(mirror: Mirror, tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("kept")
    mirror.corrupt("cifar10/cifar-10-python.tar.gz")
    with pytest.raises(ChecksumError, match="cifar-10-python.tar.gz"):
        fetch("cifar10", tmp_path, mirror=mirror.url, sources=mirror.sources)
    assert tree(tmp_path) == ["mine.txt"]


def test_production_keeps_torchvisions_real_md5s(mirror: Mirror, tmp_path: Path) -> None:
    """Without the test catalogue the tiny archive is refused: its md5 is not CIFAR-10's."""
    with pytest.raises(ChecksumError, match="expected md5 c58f30108f718f92721af3b95e74349a"):
        fetch("cifar10", tmp_path, mirror=mirror.url)
    assert tree(tmp_path) == []
    real = download.torchvision_sources()
    assert real["cifar10"].bases == ("https://www.cs.toronto.edu/~kriz/",)
    assert real["mnist"].files[0] == Remote("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873")
    assert real["fashion_mnist"].folder == "FashionMNIST/raw" and real["cifar100"].folder == "cifar-100-python"


def test_an_unreachable_mirror_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(DownloadError, match=r"cifar-10-python.tar.gz: cannot connect \(.*refused"):
        fetch("cifar10", tmp_path / "data", mirror=url)
    assert tree(tmp_path) == []


def test_a_file_the_mirror_lacks_is_a_clear_error(mirror: Mirror, tmp_path: Path) -> None:
    (mirror.root / "fashion_mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DownloadError, match="train-labels-idx1-ubyte.gz: the server answered 404"):
        fetch("fashion_mnist", tmp_path, mirror=mirror.url, sources=mirror.sources)
    assert tree(tmp_path) == []


def test_an_archive_that_reaches_outside_its_folder_is_refused(mirror: Mirror, tmp_path: Path) -> None:
    evil = _tar_gz({"../../escaped": b"x", "cifar-10-batches-py/test_batch": b""})
    (mirror.root / "cifar10" / "cifar-10-python.tar.gz").write_bytes(evil)
    sources = {"cifar10": dataclasses.replace(mirror.sources["cifar10"],
                                              files=(Remote("cifar-10-python.tar.gz", hashlib.md5(evil).hexdigest()),))}
    with pytest.raises(DownloadError, match="cannot unpack"):
        fetch("cifar10", tmp_path / "data", mirror=mirror.url, sources=sources)
    assert tree(tmp_path) == []


def test_an_archive_without_the_expected_files_is_refused(mirror: Mirror, tmp_path: Path) -> None:
    thin = _tar_gz({"cifar-10-batches-py/test_batch": b""})
    (mirror.root / "cifar10" / "cifar-10-python.tar.gz").write_bytes(thin)
    sources = {"cifar10": dataclasses.replace(mirror.sources["cifar10"],
                                              files=(Remote("cifar-10-python.tar.gz", hashlib.md5(thin).hexdigest()),))}
    with pytest.raises(DownloadError, match="unpacked without cifar-10-batches-py/data_batch_1"):
        fetch("cifar10", tmp_path, mirror=mirror.url, sources=sources)
    assert tree(tmp_path) == []


@pytest.mark.parametrize(("name", "mirror_url", "needle"), [
    ("digits", "http://127.0.0.1:1", "cannot be downloaded"),
    ("imagenet", "http://127.0.0.1:1", "unknown dataset"),
    ("mnist", "ftp://127.0.0.1/", "must be an http:// or https:// URL"),
])
def test_what_cannot_be_fetched_is_a_usage_error(tmp_path: Path, name: str, mirror_url: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        fetch(name, tmp_path, mirror=mirror_url)


# ------------------------------------------------------------------ the cache and ensure()


def test_the_cache_follows_xdg_cache_home(tmp_path: Path) -> None:
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "pytorch-researcher" / "data"
    assert cache_dir({"XDG_CACHE_HOME": " "}) == Path.home() / ".cache" / "pytorch-researcher" / "data"


def test_ensure_downloads_into_the_cache_once_then_finds_it_there(
        mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "pytorch-researcher" / "data"
    with pytest.raises(DataError, match="researcher data get cifar10"):
        ensure("cifar10", None)
    assert ensure("cifar10", None, download=True, mirror=mirror.url, sources=mirror.sources) == str(cache)
    assert ensure("cifar10", None) == str(cache)  # no --data-dir: the cache is looked in
    assert load_dataset("cifar10", cache).num_classes == 10
    given = tmp_path / "given"
    assert ensure("cifar10", str(given), download=True, mirror=mirror.url, sources=mirror.sources) == str(given)


def test_ensure_leaves_built_in_data_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ensure("digits", None, download=True, mirror="http://127.0.0.1:1") is None
    with pytest.raises(DataError, match="--download fetches only"):
        ensure("csv", str(tmp_path / "absent.csv"), download=True)
    assert tree(tmp_path) == []
