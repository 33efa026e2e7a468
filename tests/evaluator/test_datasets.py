"""Every dataset loader through its real code path, on tiny files in the real on-disk formats."""

from __future__ import annotations

import gzip
import re
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluator import datasets
from evaluator.datasets import available_datasets, load_dataset
from evaluator.errors import DataError, UsageError

# ------------------------------------------------------------------ writers of real formats


def _idx_bytes(array: np.ndarray) -> bytes:
    """The idx format: two zero bytes, type 0x08 (uint8), ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b  # SHORT_BINSTRING: a Python 2 str


def _py2_pickle(entry: dict[str, object]) -> bytes:
    """A dict pickled as Python 2 with numpy 1.x wrote CIFAR's batches (str, not bytes)."""
    out = b"\x80\x02}("  # PROTO 2, EMPTY_DICT, MARK
    for key, value in entry.items():
        out += _py2_str(key.encode())
        if isinstance(value, np.ndarray):  # numpy.core.multiarray._reconstruct + __setstate__
            raw = value.astype(np.uint8).tobytes()
            out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
            out += b"(K\x01" + b"".join(b"J" + struct.pack("<i", d) for d in value.shape) + b"\x86"
            out += b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R(K\x03" + _py2_str(b"|")
            out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T" + struct.pack("<I", len(raw)) + raw + b"tb"
        else:  # a list of small ints or of str
            items = [b"K" + bytes([v]) if isinstance(v, int) else _py2_str(v.encode()) for v in value]  # type: ignore[union-attr]
            out += b"](" + b"".join(items) + b"e"
    return out + b"u."


def _dump(entry: dict[str, object], protocol: int | str) -> bytes:
    if protocol == "py2":
        return _py2_pickle(entry)
    return pickle.dumps({k.encode(): v for k, v in entry.items()}, protocol=int(protocol))


def _write_cifar10(root: Path, per_batch: int, protocol: int | str) -> tuple[np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
    labels = [i % 10 for i in range(per_batch)]
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = first if i == 0 else rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        entry = {"batch_label": [name], "labels": labels, "data": data}
        (folder / name).write_bytes(_dump(entry, protocol))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": [per_batch]}
    (folder / "batches.meta").write_bytes(_dump(meta, protocol))
    return first, labels


def _write_cifar100(root: Path, n: int) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for name in ("train", "test"):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "fine_labels": [i % 100 for i in range(n)], "coarse_labels": [i % 20 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))


def _write_images(folder: Path, classes: dict[str, int], mode: str, size: tuple[int, int]) -> None:
    for k, (name, count) in enumerate(classes.items()):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            colour = (40 * k, 10 * i, 200) if mode == "RGB" else 30 * k + i
            Image.new(mode, size, colour).save(folder / name / f"{i}.png")


# ------------------------------------------------------------------ built-in


@pytest.mark.parametrize(
    ("name", "shape", "n", "classes", "kind"),
    [
        ("digits", (1, 8, 8), 1797, 10, "image"),
        ("iris", (4,), 150, 3, "table"),
        ("wine", (13,), 178, 3, "table"),
        ("breast_cancer", (30,), 569, 2, "table"),
    ],
)
def test_scikit_learn_builtins(name: str, shape: tuple[int, ...], n: int, classes: int, kind: str) -> None:
    ds = load_dataset(name)
    assert (ds.input_shape, len(ds.y), ds.num_classes, ds.kind) == (shape, n, classes, kind)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64 and not ds.has_official_test
    assert sorted(np.unique(ds.y).tolist()) == list(range(classes))


def test_digits_is_the_default_and_in_unit_range() -> None:
    ds = load_dataset(datasets.DEFAULT_DATASET)
    assert ds.name == "digits" and ds.x.min() == 0.0 and ds.x.max() == 1.0


def test_fashion_mnist_from_the_debian_package() -> None:
    from torchvision.datasets import FashionMNIST

    ds = load_dataset("fashion-mnist")  # alias of fashion_mnist
    assert ds.x.shape == (60000, 1, 28, 28) and ds.x_test is not None and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.class_names == tuple(FashionMNIST.classes)
    assert np.bincount(ds.y).tolist() == [6000] * 10
    assert ds.y_test is not None and np.bincount(ds.y_test).tolist() == [1000] * 10
    assert 0.0 <= ds.x.min() and ds.x.max() == 1.0 and 0.2 < ds.x.mean() < 0.4
    assert "/usr/share/datasets/fashion-mnist" in ds.source


# ------------------------------------------------------------------ MNIST family


def test_mnist_raw_idx_through_torchvision(tmp_path: Path) -> None:
    arrays = _write_mnist(tmp_path / "MNIST" / "raw", 30, 20, gz=False)
    ds = load_dataset("mnist", tmp_path)
    assert ds.x.shape == (30, 1, 28, 28) and ds.x_test is not None and ds.x_test.shape == (20, 1, 28, 28)
    np.testing.assert_allclose(ds.x[:, 0] * 255, arrays["train-images-idx3-ubyte"], atol=1e-3)
    assert ds.y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.class_names == tuple(str(i) for i in range(10))


def test_mnist_gzipped_idx(tmp_path: Path) -> None:
    arrays = _write_mnist(tmp_path / "MNIST" / "raw", 25, 15, gz=True, seed=3)
    ds = load_dataset("mnist", str(tmp_path))
    assert ds.x_test is not None and ds.y_test is not None
    np.testing.assert_allclose(ds.x_test[:, 0] * 255, arrays["t10k-images-idx3-ubyte"], atol=1e-3)
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_fashion_mnist_from_a_data_dir_in_torchvision_layout(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "FashionMNIST" / "raw", 20, 10, gz=False)
    ds = load_dataset("fashion_mnist", tmp_path)
    assert len(ds.y) == 20 and ds.class_names[0] == "T-shirt/top" and str(tmp_path) in ds.source


def test_corrupt_idx_is_a_data_error(tmp_path: Path) -> None:
    arrays = _write_mnist(tmp_path / "MNIST" / "raw", 10, 10, gz=True)
    del arrays
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
    with pytest.raises(DataError, match="idx header says"):
        load_dataset("mnist", tmp_path)


# ------------------------------------------------------------------ CIFAR


@pytest.mark.parametrize("protocol", ["py2", 2, pickle.DEFAULT_PROTOCOL, 5])
def test_cifar10_python_batches(tmp_path: Path, protocol: int | str) -> None:
    first, labels = _write_cifar10(tmp_path, per_batch=8, protocol=protocol)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x.shape == (40, 3, 32, 32) and ds.x_test is not None and ds.x_test.shape == (8, 3, 32, 32)
    # rows are stored as 1024 red, 1024 green, 1024 blue values
    np.testing.assert_allclose(ds.x[0, 1].reshape(-1) * 255, first[0, 1024:2048], atol=1e-3)
    assert ds.y[:8].tolist() == labels and ds.class_names == tuple(f"class{i}" for i in range(10))


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    _write_cifar100(tmp_path, n=120)
    fine = load_dataset("cifar100", tmp_path)
    coarse = load_dataset("cifar100", tmp_path, coarse=True)
    assert fine.num_classes == 100 and fine.class_names[5] == "fine5" and fine.y.max() == 99
    assert coarse.num_classes == 20 and coarse.y.tolist() == [i % 20 for i in range(120)]


def test_cifar_pickle_that_names_code_is_refused(tmp_path: Path) -> None:
    _write_cifar10(tmp_path, per_batch=4, protocol=2)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            import os

            return (os.system, (f"touch {marker}",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": Exploit()}))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------ image folder


def test_image_folder_rgb_resized(tmp_path: Path) -> None:
    _write_images(tmp_path, {"cat": 3, "dog": 4}, "RGB", (20, 14))
    ds = load_dataset("imagefolder", tmp_path, image_size=16)
    assert ds.x.shape == (7, 3, 16, 16) and ds.class_names == ("cat", "dog")
    assert ds.y.tolist() == [0, 0, 0, 1, 1, 1, 1] and not ds.has_official_test
    assert ds.x[3, 2].max() == pytest.approx(200 / 255)  # the blue channel of a dog


def test_image_folder_grey_with_train_and_test(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"a": 2, "b": 2, "c": 2}, "L", (9, 9))
    _write_images(tmp_path / "test", {"a": 1, "b": 1, "c": 1}, "L", (9, 9))
    ds = load_dataset("imagefolder", tmp_path, image_size=8)
    assert ds.x.shape == (6, 1, 8, 8) and ds.x_test is not None and ds.x_test.shape == (3, 1, 8, 8)
    assert ds.y_test is not None and ds.y_test.tolist() == [0, 1, 2]


def test_image_folder_splits_with_other_classes_are_refused(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"a": 1, "b": 1}, "L", (4, 4))
    _write_images(tmp_path / "test", {"a": 1, "z": 1}, "L", (4, 4))
    with pytest.raises(DataError, match="differ"):
        load_dataset("imagefolder", tmp_path)


# ------------------------------------------------------------------ CSV and NPZ


def test_csv_with_header_string_labels_and_named_target(tmp_path: Path) -> None:
    path = tmp_path / "flowers.csv"
    path.write_text("species,len,width\nsetosa,1.0,2\nvirginica,3.5,4\nsetosa,0.5,1\n")
    ds = load_dataset("csv", path, target="species")
    assert ds.class_names == ("setosa", "virginica") and ds.y.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(ds.x, np.array([[1, 2], [3.5, 4], [0.5, 1]], dtype=np.float32))
    assert ds.kind == "table" and ds.name == "flowers"


def test_csv_without_header_semicolons_last_column_label(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("0.1;0.2;7\n0.3;0.4;9\n0.5;0.6;7\n")
    ds = load_dataset("csv", path)
    assert ds.x.shape == (3, 2) and ds.class_names == ("7", "9") and ds.y.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a,b,label\n1,,x\n2,3,y\n", "missing value"),
        ("a,b,label\n1,red,x\n2,3,y\n", "not a number"),
        ("a,b,label\n1,2,x\n2,3\n", "fields"),
        ("a,b,label\n1,2,x\n2,3,x\n", "two classes"),
    ],
)
def test_csv_problems_name_line_and_column(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=needle):
        load_dataset("csv", path)


def test_csv_unknown_target(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,0\n2,1\n")
    with pytest.raises(DataError, match="no target column 'c'"):
        load_dataset("csv", path, target="c")


def test_npz_train_test_layout_with_class_names_and_images(tmp_path: Path) -> None:
    path = tmp_path / "arrays.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((12, 5, 5)), y_train=np.arange(12) % 3,
             x_test=rng.random((6, 5, 5)), y_test=np.arange(6) % 3, class_names=np.array(["r", "g", "b"]))
    ds = load_dataset("npz", path)
    assert ds.x.shape == (12, 1, 5, 5) and ds.kind == "image" and ds.class_names == ("r", "g", "b")
    assert ds.y_test is not None and ds.y_test.tolist() == [0, 1, 2, 0, 1, 2]


def test_npz_plain_table_with_sparse_labels(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    np.savez(path, x=np.ones((4, 3)), y=np.array([10, 20, 10, 20]))
    ds = load_dataset("npz", path)
    assert ds.kind == "table" and ds.class_names == ("10", "20") and ds.y.tolist() == [0, 1, 0, 1]


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataError, match="pickled"):
        load_dataset("npz", path)


# ------------------------------------------------------------------ missing data and bad names


def test_missing_debian_fashion_mnist_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist")
    assert not {i.name: i for i in available_datasets()}["fashion_mnist"].available


def test_fashion_mnist_falls_back_to_debian_when_the_data_dir_lacks_it(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    assert "/usr/share/datasets/fashion-mnist" in load_dataset("fashion_mnist", tmp_path).source


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("mnist", "MNIST/raw/"),
        ("fashion_mnist", "FashionMNIST/raw/ (torchvision's layout)"),
        ("cifar10", "cifar-10-batches-py/, e.g. `tar xzf cifar-10-python.tar.gz"),
        ("cifar100", "cifar-100-python/"),
        ("imagefolder", "<class>/<image>"),
        ("csv", ".csv file itself"),
    ],
)
def test_missing_files_say_where_to_put_what(
    tmp_path: Path, name: str, needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DataError, match=re.escape(needle)):
        load_dataset(name, tmp_path)


def test_dataset_that_needs_a_data_dir_says_so() -> None:
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cifar10")


@pytest.mark.parametrize(("written", "name"), [
    ("CIFAR-10", "cifar10"), ("cifar 100", "cifar100"), ("FashionMNIST", "fashion_mnist"), ("f-mnist", "fashion_mnist"),
    ("Fashion MNIST", "fashion_mnist"), ("breast-cancer", "breast_cancer"), ("MNIST", "mnist"), ("digits", "digits"),
])
def test_canonical_names_of_usual_spellings(written: str, name: str) -> None:
    assert datasets.canonical_name(written) == name


@pytest.mark.parametrize("name", datasets.DOWNLOADABLE)
def test_what_is_missing_says_how_to_fetch_it(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    for where in (None, tmp_path):
        message = datasets.missing(name, where)
        assert message is not None and f"`researcher data get {name}`" in message and "--download" in message
    assert "pass --data-dir DIR" in (datasets.missing(name) or "")
    assert datasets.missing("digits") is None


def test_unknown_name_and_option_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="digits"):
        load_dataset("imagenet")
    with pytest.raises(UsageError, match="no option"):
        load_dataset("digits", image_size=3)


def test_available_datasets_reports_what_loads(tmp_path: Path) -> None:
    _write_cifar10(tmp_path, per_batch=2, protocol=2)
    infos = {i.name: i for i in available_datasets(tmp_path)}
    assert set(infos) == set(datasets.dataset_names())
    assert infos["digits"].available and infos["fashion_mnist"].available
    assert infos["cifar10"].available and not infos["cifar100"].available
    assert "cifar-100-python" in infos["cifar100"].detail
    assert not {i.name: i for i in available_datasets()}["cifar10"].available


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("imagefolder", "no image folder given: pass --data-dir DIR laid out as DIR/<class>/<image>"),
        ("csv", "no .csv file given: pass the file itself as --data-dir, e.g. --data-dir data.csv"),
        ("npz", "no .npz file given: pass the file itself as --data-dir, e.g. --data-dir data.npz"),
    ],
)
def test_own_files_without_a_data_dir_say_what_to_pass(name: str, needle: str) -> None:
    with pytest.raises(DataError) as caught:
        load_dataset(name, None)
    assert needle in str(caught.value)
    assert "None" not in str(caught.value)


def test_a_directory_given_for_a_csv_file_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(f"(got {tmp_path}: a directory)")):
        load_dataset("csv", tmp_path)
    with pytest.raises(DataError, match=re.escape(f"(got {tmp_path / 'x.npz'}: no such file)")):
        load_dataset("npz", tmp_path / "x.npz")
