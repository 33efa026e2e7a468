"""Datasets: the built-in real ones and those read from a user's data directory.

Built in, offline: scikit-learn's ``digits`` (8x8 images, the default), ``iris``,
``wine``, ``breast_cancer`` (tables) and ``fashion_mnist`` from Debian's
``dataset-fashion-mnist`` package. From ``data_dir``: torchvision's on-disk
``cifar10``/``cifar100``, ``mnist``/``fashion_mnist`` (idx files), an
``imagefolder``, and ``csv``/``npz`` files. Images come as float32 (N, C, H, W)
in [0, 1]; tables as float32 (N, F). Labels are int64 0..C-1. ``evaluator.download``
fetches the ``DOWNLOADABLE`` ones into that layout on the trusted host.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluator import formats, tables
from evaluator.errors import DataError, UsageError

DEFAULT_DATASET = "digits"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: As ``torchvision.datasets.FashionMNIST.classes``.
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_SKLEARN = ("digits", "iris", "wine", "breast_cancer")
_ALIASES = {"fashionmnist": "fashion_mnist", "f_mnist": "fashion_mnist", "fmnist": "fashion_mnist",
            "cifar_10": "cifar10", "cifar_100": "cifar100", "breastcancer": "breast_cancer",
            "image_folder": "imagefolder"}  # fmt: skip
#: Datasets that ``researcher data get`` (and ``--download``) can fetch, as in torchvision.
DOWNLOADABLE = ("cifar10", "cifar100", "mnist", "fashion_mnist")


@dataclass(frozen=True)
class RawDataset:
    """A loaded dataset, before splitting: inputs, labels and the official test split if any."""

    name: str
    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    kind: str  # "image" | "table"
    source: str
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    input_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.x.shape[1:]))
        _check_arrays(self)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def has_official_test(self) -> bool:
        """Whether the dataset ships its own test split."""
        return self.x_test is not None


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset the loader knows, and whether it can be loaded now."""

    name: str
    kind: str
    description: str
    needs_data_dir: bool
    options: tuple[str, ...]
    available: bool = False
    detail: str = ""


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    load: Callable[..., RawDataset]
    probe: Callable[[Path | None], str | None]  # None when loadable, else what is missing


def load_dataset(name: str, data_dir: str | Path | None = None, **opts: Any) -> RawDataset:
    """Load dataset ``name`` (from ``data_dir`` where it needs one); options per dataset."""
    entry = _entry(name)
    unknown = sorted(set(opts) - set(entry.info.options))
    if unknown:
        allowed = ", ".join(entry.info.options) or "none"
        raise UsageError(f"dataset {entry.info.name!r} takes no option {unknown}; options: {allowed}")
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if entry.info.needs_data_dir and root is None:
        raise DataError(f"dataset {entry.info.name!r} reads from --data-dir: {entry.probe(None)}")
    return entry.load(root, **opts)


def available_datasets(data_dir: str | Path | None = None) -> list[DatasetInfo]:
    """Every known dataset with whether it loads here (for ``researcher doctor``)."""
    root = Path(data_dir).expanduser() if data_dir is not None else None
    out = []
    for entry in _REGISTRY.values():
        missing = entry.probe(root)
        detail = missing or ("found under " + str(root) if entry.info.needs_data_dir else "built in")
        out.append(dataclasses.replace(entry.info, available=missing is None, detail=detail))
    return out


def dataset_names() -> list[str]:
    """Names ``load_dataset`` accepts."""
    return list(_REGISTRY)


def canonical_name(name: str) -> str:
    """The registry's name for ``name`` as people write it (``CIFAR-10`` -> ``cifar10``); UsageError if unknown."""
    return _entry(name).info.name


def missing(name: str, data_dir: str | Path | None = None) -> str | None:
    """None when ``name`` loads from ``data_dir`` (or built in), else what is missing and how to get it."""
    entry = _entry(name)
    return entry.probe(Path(data_dir).expanduser() if data_dir is not None else None)


# ------------------------------------------------------------------ checks


def _entry(name: str) -> _Entry:
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def _check_arrays(ds: RawDataset) -> None:
    """Reject inconsistent arrays with a message naming the dataset."""
    pairs = [(ds.x, ds.y, "")] + ([(ds.x_test, ds.y_test, " test")] if ds.x_test is not None else [])
    if (ds.x_test is None) != (ds.y_test is None):
        raise DataError(f"{ds.name}: x_test and y_test go together")
    for x, y, which in pairs:
        assert x is not None and y is not None
        if x.dtype != np.float32 or y.dtype != np.int64 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{ds.name}{which}: need float32 x (N, ...) and int64 y (N,), got "
                            f"{x.dtype} {x.shape} and {y.dtype} {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= ds.num_classes):
            raise DataError(f"{ds.name}{which}: labels must lie in 0..{ds.num_classes - 1}")
        if x.shape[1:] != ds.input_shape:
            raise DataError(f"{ds.name}{which}: input shape {x.shape[1:]} != {ds.input_shape}")


def _images(split: formats.Split) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images to float32 in [0, 1]."""
    return (split.x.astype(np.float32) / np.float32(255.0)), split.y


# ------------------------------------------------------------------ scikit-learn


def _load_sklearn(name: str, root: Path | None) -> RawDataset:
    import sklearn
    from sklearn import datasets as skd

    bunch = getattr(skd, f"load_{name}")()
    names = tuple(str(n) for n in bunch.target_names)
    y = np.asarray(bunch.target, dtype=np.int64)
    source = f"scikit-learn {sklearn.__version__} bundled copy ({len(y)} samples)"
    if name == "digits":  # 8x8 images with values 0..16
        x = (bunch.images[:, None] / 16.0).astype(np.float32)
        return RawDataset(name=name, x=x, y=y, class_names=names, kind="image", source=source)
    x = np.asarray(bunch.data, dtype=np.float32)
    return RawDataset(name=name, x=x, y=y, class_names=names, kind="table", source=source)


# ------------------------------------------------------------------ MNIST family (idx)


def _idx_candidates(root: Path | None, folder: str) -> list[Path]:
    """The user's folder first; Fashion-MNIST falls back to the Debian package."""
    found = [root / folder / "raw", root] if root is not None else []
    return found + ([DEBIAN_FASHION_MNIST] if folder == "FashionMNIST" else [])


def _idx_missing(root: Path | None, folder: str) -> str | None:
    if formats.find_idx_dir(_idx_candidates(root, folder)) is not None:
        return None
    files = ", ".join(formats.idx_file_names(False))
    where = f"{root}/{folder}/raw/" if root is not None else f"DIR/{folder}/raw/"
    hint = (f"{'' if root is not None else 'pass --data-dir DIR and '}put {files} (or the same with .gz) in "
            f"{where} (torchvision's layout)")
    if folder == "FashionMNIST":
        return (f"Fashion-MNIST is not installed: run `sudo apt-get install dataset-fashion-mnist` "
                f"(idx files in {DEBIAN_FASHION_MNIST}), or {hint}, "
                f"{_fetch_hint('fashion_mnist')}")
    return f"{folder} not found: {hint}, {_fetch_hint(folder.lower())}"


def _fetch_hint(name: str) -> str:
    """How to fetch a downloadable dataset on this (trusted) host."""
    return f"or fetch it with `researcher data get {name}` or the --download flag of run and check"


def _load_idx(name: str, folder: str, classes: tuple[str, ...], root: Path | None) -> RawDataset:
    found = formats.find_idx_dir(_idx_candidates(root, folder))
    if found is None:
        raise DataError(_idx_missing(root, folder) or "")
    where, gz = found
    if root is not None and where == root / folder / "raw" and not gz:
        train, test = _torchvision_idx(folder, root)
    else:
        train, test = formats.read_idx_split(where, True, gz), formats.read_idx_split(where, False, gz)
    x, y = _images(train)
    x_test, y_test = _images(test)
    source = f"{folder} idx files in {where} ({len(y)} train / {len(y_test)} test)"
    return RawDataset(name=name, x=x, y=y, class_names=classes, kind="image", source=source,
                      x_test=x_test, y_test=y_test)


def _torchvision_idx(folder: str, root: Path) -> tuple[formats.Split, formats.Split]:
    """Read torchvision's own layout with torchvision's own class (download off)."""
    from torchvision import datasets as tvd

    cls = getattr(tvd, folder)
    splits = []
    for train in (True, False):
        ds = cls(str(root), train=train, download=False)
        splits.append(formats.Split(x=ds.data.numpy()[:, None], y=ds.targets.numpy().astype(np.int64)))
    return splits[0], splits[1]


# ------------------------------------------------------------------ CIFAR


_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}  # fmt: skip


def _cifar_dir(name: str, root: Path | None) -> Path | None:
    folder, train, test, meta, _, _ = _CIFAR[name]
    if root is None:
        return None
    for where in (root / folder, root):
        if all((where / f).is_file() for f in [*train, *test, meta]):
            return where
    return None


def _cifar_missing(name: str, root: Path | None) -> str | None:
    if _cifar_dir(name, root) is not None:
        return None
    folder, train, test, meta, _, _ = _CIFAR[name]
    archive = f"{name[:5]}-{name[5:]}-python.tar.gz"  # torchvision's download name
    put = "put" if root is not None else "pass --data-dir DIR and put"
    return (f"{name} not found: {put} torchvision's python batches ({', '.join([*train, *test, meta])}) "
            f"in {root or 'DIR'}/{folder}/, e.g. `tar xzf {archive} -C {root or 'DIR'}`, {_fetch_hint(name)}")


def _load_cifar(name: str, root: Path | None, coarse: bool = False) -> RawDataset:
    where = _cifar_dir(name, root)
    if where is None:
        raise DataError(_cifar_missing(name, root) or "")
    _, train, test, meta, label_key, names_key = _CIFAR[name]
    if coarse and name == "cifar100":
        label_key, names_key = "coarse_labels", "coarse_label_names"
    x, y = _images(formats.read_cifar_batches(where, train, label_key))
    x_test, y_test = _images(formats.read_cifar_batches(where, test, label_key))
    classes = formats.read_cifar_names(where / meta, names_key)
    return RawDataset(name=name, x=x, y=y, class_names=classes, kind="image",
                      source=f"{name} python batches in {where}", x_test=x_test, y_test=y_test)


# ------------------------------------------------------------------ image folder, CSV, NPZ


def _folder_missing(root: Path | None) -> str | None:
    if root is not None and root.is_dir() and any(p.is_dir() for p in root.iterdir()):
        return None
    layout = "DIR/<class>/<image> or DIR/{train,test}/<class>/<image>"
    if root is None:
        return f"no image folder given: pass --data-dir DIR laid out as {layout}"
    return f"no image folder at {root}: expected {layout}"


def _load_imagefolder(root: Path | None, image_size: int = 32) -> RawDataset:
    if (missing := _folder_missing(root)) is not None or root is None:
        raise DataError(missing or "")
    if not 4 <= int(image_size) <= 1024:
        raise UsageError(f"image_size must be between 4 and 1024, got {image_size}")
    size = int(image_size)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, classes = formats.read_image_folder(root / "train", size)
        test, _ = formats.read_image_folder(root / "test", size, classes)
        if train.x.shape[1] != test.x.shape[1]:  # one split grey, the other colour
            train, test = formats.Split(_rgb(train.x), train.y), formats.Split(_rgb(test.x), test.y)
        x_test, y_test = _images(test)
    else:
        train, classes = formats.read_image_folder(root, size)
        x_test = y_test = None
    x, y = _images(train)
    return RawDataset(name="imagefolder", x=x, y=y, class_names=tuple(classes), kind="image",
                      source=f"image folder {root} resized to {size}x{size}", x_test=x_test, y_test=y_test)


def _rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x


def _file_missing(root: Path | None, suffix: str) -> str | None:
    if root is not None and root.is_file():
        return None
    if root is None:
        return f"no {suffix} file given: pass the file itself as --data-dir, e.g. --data-dir data{suffix}"
    what = "a directory" if root.is_dir() else "no such file"
    return f"pass the {suffix} file itself as --data-dir (got {root}: {what})"


def _load_csv(root: Path | None, target: str | int | None = None, header: bool | None = None) -> RawDataset:
    if (missing := _file_missing(root, ".csv")) is not None or root is None:
        raise DataError(missing or "")
    table = tables.read_csv(root, target=target, header=header)
    return RawDataset(name=root.stem, x=table.x, y=table.y, class_names=table.class_names,
                      kind="table", source=f"CSV file {root}")


def _load_npz(root: Path | None) -> RawDataset:
    if (missing := _file_missing(root, ".npz")) is not None or root is None:
        raise DataError(missing or "")
    t = tables.read_npz(root)
    x, x_test = t.x, t.x_test
    kind = "image" if x.ndim >= 3 else "table"
    if x.ndim == 3:  # (N, H, W) greyscale images
        x, x_test = x[:, None], None if x_test is None else x_test[:, None]
    return RawDataset(name=root.stem, x=x, y=t.y, class_names=t.class_names, kind=kind,
                      source=f"NPZ file {root}", x_test=x_test, y_test=t.y_test)


# ------------------------------------------------------------------ registry


def _info(name: str, kind: str, text: str, needs: bool, options: tuple[str, ...] = ()) -> DatasetInfo:
    return DatasetInfo(name=name, kind=kind, description=text, needs_data_dir=needs, options=options)


def _build_registry() -> dict[str, _Entry]:
    reg: dict[str, _Entry] = {}
    for name in _SKLEARN:
        kind = "image" if name == "digits" else "table"
        reg[name] = _Entry(_info(name, kind, f"scikit-learn {name}", False),
                           lambda root, _n=name: _load_sklearn(_n, root), lambda root: None)
    reg["fashion_mnist"] = _Entry(
        _info("fashion_mnist", "image", "Fashion-MNIST 60k/10k 28x28 (Debian package or DIR)", False),
        lambda root: _load_idx("fashion_mnist", "FashionMNIST", FASHION_CLASSES, root),
        lambda root: _idx_missing(root, "FashionMNIST"))
    reg["mnist"] = _Entry(
        _info("mnist", "image", "MNIST idx files in DIR/MNIST/raw", True),
        lambda root: _load_idx("mnist", "MNIST", tuple(str(i) for i in range(10)), root),
        lambda root: _idx_missing(root, "MNIST"))
    for name in _CIFAR:
        reg[name] = _Entry(
            _info(name, "image", f"{name} python batches in DIR", True, ("coarse",) if name == "cifar100" else ()),
            lambda root, _n=name, **kw: _load_cifar(_n, root, **kw),
            lambda root, _n=name: _cifar_missing(_n, root))
    reg["imagefolder"] = _Entry(_info("imagefolder", "image", "DIR/<class>/<image>", True, ("image_size",)),
                                _load_imagefolder, _folder_missing)
    reg["csv"] = _Entry(_info("csv", "table", "a CSV file (label: last or --target column)", True,
                              ("target", "header")), _load_csv, lambda root: _file_missing(root, ".csv"))
    reg["npz"] = _Entry(_info("npz", "table", "an NPZ file with x, y (or x_train, y_train, x_test, y_test)",
                              True), _load_npz, lambda root: _file_missing(root, ".npz"))
    return reg


_REGISTRY = _build_registry()
