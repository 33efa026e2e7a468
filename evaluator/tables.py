"""Readers for tabular and array files a user brings: CSV and NPZ.

Both return float32 features and int64 labels 0..C-1 with the class names the
labels had in the file. ``DataError`` names the file, row and column at fault.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluator.errors import DataError

_MISSING = {"", "na", "nan", "n/a", "null", "none", "?"}


@dataclass(frozen=True)
class Table:
    """Features, labels, class names, and an official test split where the file had one."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def encode_labels(values: np.ndarray, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map labels (ints or strings) to 0..C-1 in sorted order, with their names."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise DataError(f"{where}: labels must be integers or class names, found {values[:5]}")
        values = values.astype(np.int64)
    if values.dtype.kind not in "iuUS":
        raise DataError(f"{where}: labels must be integers or strings, found dtype {values.dtype}")
    classes, y = np.unique(values, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{where}: needs at least two classes, found {classes.tolist()}")
    names = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist())
    return y.astype(np.int64).reshape(-1), names


# ------------------------------------------------------------------ CSV


def read_csv(path: Path, target: str | int | None = None, header: bool | None = None) -> Table:
    """A CSV file of numeric features; the label is ``target`` (name or index) or the last column."""
    rows = _read_rows(path)
    has_header = _looks_like_header(rows) if header is None else header
    names = [c.strip() for c in rows[0]] if has_header else [f"col{i}" for i in range(len(rows[0]))]
    body = rows[1:] if has_header else rows
    if not body:
        raise DataError(f"{path}: no data rows")
    col = _target_index(path, names, target)
    for line, row in enumerate(body, start=2 if has_header else 1):
        if len(row) != len(names):
            raise DataError(f"{path}: line {line} has {len(row)} fields, expected {len(names)}")
    labels = np.array([row[col].strip() for row in body])
    if all(_is_int(v) for v in labels):
        labels = labels.astype(np.int64)
    y, class_names = encode_labels(labels, f"{path} column {names[col]!r}")
    features = [i for i in range(len(names)) if i != col]
    x = np.empty((len(body), len(features)), dtype=np.float32)
    for j, i in enumerate(features):
        x[:, j] = _numeric_column(path, names[i], [row[i] for row in body], 2 if has_header else 1)
    return Table(x=x, y=y, class_names=class_names, feature_names=tuple(names[i] for i in features))


def _read_rows(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as UTF-8 text ({exc})") from exc
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel  # a single column or an unusual file: plain commas
    rows = [r for r in csv.reader(text.splitlines(), dialect) if any(c.strip() for c in r)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise DataError(f"{path}: expected a header (optional) and rows of at least two columns")
    return rows


def _looks_like_header(rows: list[list[str]]) -> bool:
    """A header has a non-number where the next row has a number."""
    first, second = rows[0], rows[1]
    return any(not _is_float(a) and _is_float(b) for a, b in zip(first, second))


def _target_index(path: Path, names: list[str], target: str | int | None) -> int:
    if target is None:
        return len(names) - 1
    if isinstance(target, str) and target in names:
        return names.index(target)
    if isinstance(target, int) or target.lstrip("-").isdigit():
        index = int(target)
        if -len(names) <= index < len(names):
            return index % len(names)
    raise DataError(f"{path}: no target column {target!r}; columns are {names}")


def _numeric_column(path: Path, name: str, cells: list[str], first_line: int) -> np.ndarray:
    out = np.empty(len(cells), dtype=np.float32)
    for k, cell in enumerate(cells):
        text = cell.strip()
        if text.lower() in _MISSING:
            raise DataError(
                f"{path}: line {first_line + k}, column {name!r}: missing value; fill or drop such rows"
            )
        try:
            out[k] = float(text)
        except ValueError:
            raise DataError(
                f"{path}: line {first_line + k}, column {name!r}: {text!r} is not a number; "
                "encode categorical features as numbers first"
            ) from None
    if not np.all(np.isfinite(out)):
        raise DataError(f"{path}: column {name!r} has infinite values (or values beyond float32)")
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


# ------------------------------------------------------------------ NPZ

_NPZ_LAYOUTS = (("x", "y", None, None), ("x_train", "y_train", "x_test", "y_test"))


def read_npz(path: Path) -> Table:
    """Arrays ``x``/``y``, or ``x_train``/``y_train`` (+ ``x_test``/``y_test``); ``class_names`` optional."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k.lower(): npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a numeric .npz file without pickled objects ({exc})") from exc
    for xk, yk, xtk, ytk in _NPZ_LAYOUTS:
        if xk in arrays and yk in arrays:
            break
    else:
        raise DataError(f"{path}: needs arrays 'x' and 'y' or 'x_train' and 'y_train'; has {sorted(arrays)}")
    test = (arrays.get(xtk), arrays.get(ytk)) if xtk else (None, None)
    if (test[0] is None) != (test[1] is None):
        raise DataError(f"{path}: 'x_test' and 'y_test' go together")
    x, labels = _npz_features(path, arrays[xk]), arrays[yk].reshape(-1)
    if test[1] is not None:
        labels = np.concatenate([labels, test[1].reshape(-1)])
    y, names = encode_labels(labels, f"{path} {yk!r}")
    if "class_names" in arrays:
        names = _npz_class_names(path, arrays["class_names"], labels, names)
    n = len(x)
    if len(y) != n + (0 if test[0] is None else len(test[0])):
        raise DataError(f"{path}: {n} inputs but {len(arrays[yk].reshape(-1))} labels")
    x_test = None if test[0] is None else _npz_features(path, test[0])
    return Table(x=x, y=y[:n], class_names=names, feature_names=(), x_test=x_test,
                 y_test=None if x_test is None else y[n:])


def _npz_features(path: Path, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "iufb" or x.ndim < 2:
        raise DataError(f"{path}: inputs must be a numeric array (N, ...), found {x.dtype} {x.shape}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: inputs contain NaN or infinite values")
    return x


def _npz_class_names(
    path: Path, given: np.ndarray, labels: np.ndarray, found: tuple[str, ...]
) -> tuple[str, ...]:
    """Names from the file, valid when labels are 0..K-1 indices into them."""
    if given.dtype.kind not in "US":
        raise DataError(f"{path}: 'class_names' must be an array of strings, found {given.dtype}")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in given.reshape(-1).tolist())
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= len(names):
        raise DataError(f"{path}: 'class_names' has {len(names)} names but labels are {found}")
    return tuple(names[int(c)] for c in found)
