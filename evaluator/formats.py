"""Readers for on-disk dataset formats: idx (MNIST family), CIFAR python batches, image folders.

Every reader returns plain numpy arrays and raises ``DataError`` with the path and
what was expected. Tables (CSV, NPZ) live in ``evaluator.tables``.
"""

from __future__ import annotations

import codecs
import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluator.errors import DataError



# idx type byte -> big-endian numpy dtype (Yann LeCun's format, as torchvision reads it)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Split:
    """Images (N, C, H, W) as uint8 and labels (N,) as int64."""

    x: np.ndarray
    y: np.ndarray


# ------------------------------------------------------------------ idx (MNIST, Fashion-MNIST)


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file, gzipped (``.gz``) or raw, into a native-endian array."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an idx file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: idx header says {dims} ({expected} bytes) but the file has {len(raw)}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def find_idx_dir(candidates: list[Path]) -> tuple[Path, bool] | None:
    """The first folder holding all four MNIST-style idx files; True when they are gzipped."""
    for folder in candidates:
        for gz in (False, True):
            if all((folder / name).is_file() for name in idx_file_names(gz)):
                return folder, gz
    return None


def idx_file_names(gz: bool) -> list[str]:
    """The four file names of the MNIST layout (train/t10k images and labels)."""
    suffix = ".gz" if gz else ""
    return [
        f"{split}-{part}-ubyte{suffix}"
        for split in ("train", "t10k")
        for part in ("images-idx3", "labels-idx1")
    ]


def read_idx_split(folder: Path, train: bool, gz: bool) -> Split:
    """Images and labels of the train or t10k split from ``folder``."""
    prefix = "train" if train else "t10k"
    suffix = ".gz" if gz else ""
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}")
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not match"
        )
    return Split(x=images[:, None].astype(np.uint8), y=labels.astype(np.int64))


# ------------------------------------------------------------------ CIFAR python batches


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals an array pickle may name, resolved from numpy itself (1.x and 2.x names)."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = np.array(0).__reduce__()[0]
        allowed[(f"{core}.multiarray", "scalar")] = np.float64(0).__reduce__()[0]
        allowed[(f"{core}.numeric", "_frombuffer")] = np.zeros(1).__reduce_ex__(5)[0]
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists, strings, numbers and numpy arrays; refuses code.

    CIFAR's python batches exist only as pickles. torchvision reads them with plain
    ``pickle.load`` after an md5 check, which rejects any re-packed copy; this reader
    accepts any file in the layout but resolves no global except numpy's array
    rebuilders (taken from numpy itself, so the names of every numpy version work).
    """

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only numpy's array rebuilders; anything else is refused."""
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise DataError(
                f"refusing to unpickle {module}.{name}: a CIFAR batch holds only arrays, lists and strings"
            )
        return target


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR python batch or meta file as a dict (latin1 strings, as torchvision reads it)."""
    if not path.is_file():
        raise DataError(f"{path}: file missing")
    with path.open("rb") as fh:
        try:
            obj = _ArrayUnpickler(fh, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: not a CIFAR python batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_cifar_batches(folder: Path, names: list[str], label_key: str) -> Split:
    """Concatenate CIFAR batches into (N, 3, 32, 32) uint8 images and int64 labels."""
    xs, ys = [], []
    for name in names:
        entry = read_cifar_pickle(folder / name)
        if "data" not in entry or label_key not in entry:
            raise DataError(f"{folder / name}: needs keys 'data' and {label_key!r}, has {sorted(entry)}")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
            raise DataError(f"{folder / name}: data {data.shape} / labels {labels.shape} are not CIFAR's")
        xs.append(data.reshape(-1, 3, 32, 32))  # rows are stored channel-major (C, H, W)
        ys.append(labels)
    return Split(x=np.concatenate(xs), y=np.concatenate(ys))


def read_cifar_names(path: Path, key: str) -> tuple[str, ...]:
    """Class names from a CIFAR meta file."""
    meta = read_cifar_pickle(path)
    if key not in meta:
        raise DataError(f"{path}: no {key!r} entry (has {sorted(meta)})")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[key])


# ------------------------------------------------------------------ image folders


def read_image_folder(root: Path, size: int, classes: list[str] | None = None) -> tuple[Split, list[str]]:
    """Class sub-folders of images, resized to ``size`` x ``size``; grey if every image is."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root), allow_empty=False)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"{root}: not an image folder ({exc}); expected <root>/<class>/<image>") from exc
    if classes is not None and folder.classes != classes:
        raise DataError(f"{root}: classes {folder.classes} differ from the training split's {classes}")
    images, grey = [], True
    for path, _ in folder.samples:
        try:
            with Image.open(path) as im:
                grey &= im.mode in ("1", "L", "I", "I;16", "F")
                rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                images.append(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))  # (C, H, W)
        except OSError as exc:
            raise DataError(f"{path}: unreadable image ({exc})") from exc
    x = np.stack(images)
    x = x[:, :1] if grey else x
    y = np.asarray(folder.targets, dtype=np.int64)
    return Split(x=x, y=y), list(folder.classes)
