"""Split, normalise and hash a dataset once per run; write the sandbox's read-only view.

Four splits: train and validation (their labels go into the sandbox: training and
early stopping), *selection* and test (their labels never do). Every decision of a
run - the planners, pruning, the stop rule, the choice of the best model - reads
selection metrics only; test metrics are recorded and reported and drive nothing,
so the reported result is not the maximum of many noisy test scores.

``write_sandbox_dir`` writes train and validation arrays with labels and one
*evaluation* array WITHOUT labels: the selection and test inputs mixed in a seeded
shuffle, so a model cannot tell which rows decide and which are reported. The host
splits the returned logits back (``split_eval``). Normalisation statistics come from
the training split only (per channel for images, per feature for tables).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from evaluator.datasets import RawDataset
from evaluator.errors import DataError, UsageError
from sandbox_image.protocol import DataSpec

if TYPE_CHECKING:
    from evaluator.recipe import TrainData

_FILE_MODE = 0o644
_DIR_MODE = 0o755


class DatasetFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What planners, reports and the registry may know about the prepared data."""

    name: str
    kind: str
    source: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    n_train: int
    n_val: int
    n_test: int
    official_test: bool
    seed: int
    test_fraction: float
    val_fraction: float
    max_train: int | None
    content_hash: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_select: int = 0  # the selection split (labels on the host only, like test)
    select_fraction: float = 0.0


@dataclass(frozen=True)
class PreparedData:
    """Normalised splits of one dataset; ``select_y`` and ``test_y`` never leave the host."""

    raw: RawDataset
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    seed: int
    test_fraction: float
    val_fraction: float
    max_train: int | None
    content_hash: str
    select_x: np.ndarray
    select_y: np.ndarray
    select_fraction: float
    eval_order: np.ndarray  # row i of eval_x is (selection ++ test)[eval_order[i]]

    @property
    def n_select(self) -> int:
        """Size of the selection split."""
        return len(self.select_y)

    @property
    def n_eval(self) -> int:
        """Rows of the evaluation array the sandbox predicts: selection and test inputs."""
        return self.n_select + len(self.test_y)

    @property
    def eval_x(self) -> np.ndarray:
        """Selection and test inputs in one seeded shuffle (what the sandbox gets, unlabelled)."""
        return np.ascontiguousarray(np.concatenate([self.select_x, self.test_x])[self.eval_order])

    def split_eval(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(selection logits, test logits) from logits over ``eval_x``'s rows."""
        if len(logits) != self.n_eval:
            raise ValueError(f"{len(logits)} rows of logits for {self.n_eval} evaluation inputs")
        ordered = np.empty_like(logits)
        ordered[self.eval_order] = logits
        return ordered[: self.n_select], ordered[self.n_select:]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.raw.num_classes

    def facts(self) -> DatasetFacts:
        """A JSON-ready summary: name, shapes, classes, split sizes and the content hash."""
        return DatasetFacts(
            name=self.raw.name, kind=self.raw.kind, source=self.raw.source,
            input_shape=self.raw.input_shape, num_classes=self.num_classes,
            class_names=self.raw.class_names, n_train=len(self.train_y), n_val=len(self.val_y),
            n_test=len(self.test_y), official_test=self.raw.has_official_test, seed=self.seed,
            test_fraction=self.test_fraction, val_fraction=self.val_fraction,
            max_train=self.max_train, content_hash=self.content_hash,
            mean=tuple(float(v) for v in self.mean), std=tuple(float(v) for v in self.std),
            n_select=self.n_select, select_fraction=self.select_fraction,
        )  # fmt: skip

    def train_data(self) -> TrainData:
        """The arrays a candidate may see (no test labels), for in-process training."""
        from evaluator.recipe import TrainData

        return TrainData(self.train_x, self.train_y, self.val_x, self.val_y, self.test_x)

    def write_sandbox_dir(self, path: str | Path, *, mount_root: str | None = None) -> DataSpec:
        """Write the sandbox's ``.npy`` files (never selection or test labels); ``mount_root`` is where it sees them.

        ``spec.test_x`` holds the evaluation array (selection and test inputs, shuffled):
        the worker predicts it whole, and the host splits the logits with ``split_eval``.
        """
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(_DIR_MODE)  # uid 65534 in the container must list and read it
        spec = DataSpec(root=mount_root or str(root))
        for name, array in (
            (spec.train_x, self.train_x), (spec.train_y, self.train_y), (spec.val_x, self.val_x),
            (spec.val_y, self.val_y), (spec.test_x, self.eval_x),
        ):  # fmt: skip
            _write_npy(root / name, array)
        return spec


def prepare(
    raw: RawDataset,
    *,
    seed: int = 0,
    test_fraction: float = 0.25,
    val_fraction: float = 0.15,
    max_train: int | None = None,
    select_fraction: float = 0.1,
) -> PreparedData:
    """Seeded stratified splits (the official test split when there is one), train-only normalisation.

    The pool (everything but test) gives ``select_fraction`` to the selection split,
    then ``val_fraction`` of the rest to validation; the remainder trains.
    """
    _check_params(test_fraction, val_fraction, max_train, select_fraction)
    if raw.x_test is not None and raw.y_test is not None:
        pool_x, pool_y, test_x, test_y = raw.x, raw.y, raw.x_test, raw.y_test
    else:
        pool, test = _split(raw.y, np.arange(len(raw.y)), test_fraction, seed, raw.name)
        pool_x, pool_y, test_x, test_y = raw.x[pool], raw.y[pool], raw.x[test], raw.y[test]
    rest, select = _split(pool_y, np.arange(len(pool_y)), select_fraction, seed, raw.name)
    train, val = _split(pool_y[rest], rest, val_fraction, seed, raw.name)
    if max_train is not None and max_train < len(train):
        train, _ = _split(pool_y[train], train, len(train) - max_train, seed, raw.name)
    mean, std = _norm_stats(pool_x[train], raw.kind)
    arrays = [_normalise(pool_x[train], mean, std), pool_y[train], _normalise(pool_x[val], mean, std),
              pool_y[val], _normalise(test_x, mean, std), test_y]  # fmt: skip
    select_x, select_y = _normalise(pool_x[select], mean, std), pool_y[select]
    # which evaluation rows are selection and which test: seeded, never written for the sandbox
    order = np.random.default_rng([seed, 0x5E1EC7]).permutation(len(select_y) + len(test_y))
    params = {"name": raw.name, "classes": raw.class_names, "seed": seed, "test_fraction": test_fraction,
              "val_fraction": val_fraction, "max_train": max_train, "official_test": raw.has_official_test,
              "select_fraction": select_fraction}  # fmt: skip
    return PreparedData(
        raw, *arrays, mean=mean, std=std, seed=seed, test_fraction=test_fraction,
        val_fraction=val_fraction, max_train=max_train,
        content_hash=content_hash([*arrays, select_x, select_y, order], params),
        select_x=select_x, select_y=select_y, select_fraction=select_fraction, eval_order=order,
    )  # fmt: skip


def content_hash(arrays: list[np.ndarray], params: dict[str, object]) -> str:
    """sha256 of the split parameters and every array's dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


# ------------------------------------------------------------------ internals


def _check_params(test_fraction: float, val_fraction: float, max_train: int | None, select_fraction: float) -> None:
    problems = [
        f"{name} must be in (0, 1), got {value}"
        for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction),
                            ("select_fraction", select_fraction))
        if not 0.0 < value < 1.0
    ]
    if max_train is not None and max_train < 2:
        problems.append(f"max_train must be at least 2, got {max_train}")
    if problems:
        raise UsageError("; ".join(problems))


def _split(
    y: np.ndarray, index: np.ndarray, held_out: float | int, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (keep, held_out) subsets of ``index``: a fraction, or a count when int."""
    from sklearn.model_selection import train_test_split

    try:
        keep, held = train_test_split(index, test_size=held_out, random_state=seed, stratify=y)
    except ValueError as exc:
        counts = dict(zip(*np.unique(y, return_counts=True)))
        raise DataError(
            f"{name}: cannot hold out {held_out:g} of {len(y)} samples stratified by class "
            f"(class counts {counts}); each class needs at least 2 samples in each part ({exc})"
        ) from exc
    return np.asarray(keep), np.asarray(held)


def _norm_stats(x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel (images, axis 1) or per feature (tables), float32."""
    axes = tuple(i for i in range(x.ndim) if i != 1) if kind == "image" else (0,)
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    std = np.where(std < 1e-8, 1.0, std)  # constant inputs: leave them at zero, no division blow-up
    return mean.astype(np.float32).reshape(-1), std.astype(np.float32).reshape(-1)


def _normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)  # broadcast over (N, C, ...) or (N, F)
    out = (x - mean.reshape(shape)) / std.reshape(shape)
    return np.ascontiguousarray(out, dtype=np.float32)


def _write_npy(path: Path, array: np.ndarray) -> None:
    """Write atomically with mode 0644 so the sandbox user can read and nobody sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
    tmp.chmod(_FILE_MODE)
    os.replace(tmp, path)
