"""Splits are stratified and seeded, statistics come from train only, test labels stay home."""

from __future__ import annotations

import stat
from pathlib import Path

import msgspec
import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from evaluator.datasets import RawDataset, load_dataset
from evaluator.prepare import DatasetFacts, prepare
from evaluator.recipe import load_arrays
from evaluator.errors import DataError, UsageError


@pytest.fixture(scope="module")
def digits() -> RawDataset:
    return load_dataset("digits")


def _synthetic(n: int = 300, with_test: bool = False) -> RawDataset:
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 3).astype(np.int64)
    x = (rng.normal(size=(n, 2, 4, 4)) + y[:, None, None, None]).astype(np.float32)
    extra = {}
    if with_test:
        extra = {"x_test": np.full((30, 2, 4, 4), 1000.0, np.float32), "y_test": (np.arange(30) % 3).astype(np.int64)}
    return RawDataset(name="synthetic", x=x, y=y, class_names=("a", "b", "c"), kind="image", source="test", **extra)


def test_test_split_is_scikit_learns_stratified_split(digits: RawDataset) -> None:
    p = prepare(digits, seed=0)
    _, _, _, y_test = train_test_split(digits.x, digits.y, test_size=0.25, random_state=0, stratify=digits.y)
    np.testing.assert_array_equal(p.test_y, y_test)  # the split behind the published baselines
    assert len(p.test_y) == 450 and len(p.train_y) + len(p.val_y) + len(p.select_y) == 1347
    assert len(p.select_y) == 135  # 10% of the pool, held out like test
    for part in (p.train_y, p.val_y, p.select_y, p.test_y):
        share = np.bincount(part, minlength=10) / len(part)
        np.testing.assert_allclose(share, np.bincount(digits.y) / len(digits.y), atol=0.02)


def test_same_seed_same_split_and_hash_other_seed_differs(digits: RawDataset) -> None:
    a, b, c = prepare(digits, seed=5), prepare(digits, seed=5), prepare(digits, seed=6)
    assert a.content_hash == b.content_hash and len(a.content_hash) == 64
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    assert c.content_hash != a.content_hash and not np.array_equal(c.test_y, a.test_y)
    assert prepare(digits, seed=5, val_fraction=0.2).content_hash != a.content_hash


def test_normalisation_uses_train_statistics_only() -> None:
    raw = _synthetic(with_test=True)  # test inputs are all 1000: they must not move the mean
    p = prepare(raw, seed=1)
    np.testing.assert_allclose(p.train_x.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(p.train_x.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    assert p.mean.shape == (2,) and np.all(np.abs(p.mean) < 3)
    assert np.all(p.test_x > 100)  # normalised with train statistics, so still far out
    assert p.val_x.mean() == pytest.approx(0.0, abs=0.3)


def test_official_test_split_is_kept_and_validation_comes_from_train() -> None:
    raw = _synthetic(with_test=True)
    p = prepare(raw, val_fraction=0.2)
    np.testing.assert_array_equal(p.test_y, raw.y_test)
    assert (len(p.train_y), len(p.val_y), len(p.select_y)) == (216, 54, 30) and p.facts().official_test


def test_tables_are_normalised_per_feature() -> None:
    p = prepare(load_dataset("wine"), seed=0)
    assert p.mean.shape == (13,) and p.std.shape == (13,)
    np.testing.assert_allclose(p.train_x.mean(axis=0), 0.0, atol=1e-4)


def test_max_train_subsamples_stratified(digits: RawDataset) -> None:
    p = prepare(digits, max_train=200)
    assert len(p.train_y) == 200 and np.bincount(p.train_y).min() >= 18
    assert len(p.test_y) == 450  # test and validation untouched


def test_sandbox_dir_has_no_test_labels_and_is_readable(tmp_path: Path, digits: RawDataset) -> None:
    p = prepare(digits)
    spec = p.write_sandbox_dir(tmp_path / "data", mount_root="/data")
    folder = tmp_path / "data"
    assert spec.root == "/data"
    assert sorted(f.name for f in folder.iterdir()) == ["test_x.npy", "train_x.npy", "train_y.npy", "val_x.npy", "val_y.npy"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in folder.iterdir())
    for f in folder.iterdir():  # nothing written holds the test or selection labels
        arr = np.load(f, allow_pickle=False)
        for labels in (p.test_y, p.select_y):
            assert not (arr.shape == labels.shape and np.array_equal(arr, labels)), f.name
    local = msgspec.structs.replace(spec, root=str(folder))
    data = load_arrays(local)
    # the evaluation array: selection and test inputs in one shuffle
    assert data.test_x.shape == (450 + 135, 1, 8, 8) and data.train_x.dtype == np.float32
    assert data.train_y.dtype == np.int64 and not data.train_x.flags.writeable  # memory-mapped read-only
    np.testing.assert_array_equal(data.val_y, p.val_y)


def test_facts_are_plain_json(digits: RawDataset) -> None:
    p = prepare(digits)
    facts = msgspec.json.decode(msgspec.json.encode(p.facts()), type=DatasetFacts)
    assert facts == p.facts()
    assert (facts.num_classes, facts.input_shape, facts.n_test, facts.content_hash) == (10, (1, 8, 8), 450, p.content_hash)
    assert "test_y" not in msgspec.json.encode(facts).decode()


def test_bad_parameters_and_unsplittable_data() -> None:
    with pytest.raises(UsageError, match="test_fraction"):
        prepare(_synthetic(), test_fraction=1.5)
    lonely = RawDataset(name="lonely", x=np.zeros((7, 2), np.float32), y=np.array([0, 0, 0, 1, 1, 1, 2]),
                        class_names=("a", "b", "c"), kind="table", source="test")
    with pytest.raises(DataError, match="stratified"):
        prepare(lonely)


def test_selection_and_test_inputs_are_shuffled_together_and_split_back(digits: RawDataset) -> None:
    p = prepare(digits, seed=3)
    eval_x = p.eval_x
    assert len(eval_x) == p.n_eval == len(p.select_y) + len(p.test_y)
    # the sandbox sees no block structure: selection rows are spread over the whole array
    is_selection = p.eval_order < p.n_select
    assert 0.05 < is_selection[: len(eval_x) // 2].mean() < 0.45
    # logits that are just the row's own inputs come back in each split's order
    fake_logits = eval_x.reshape(len(eval_x), -1)[:, :10].copy()
    sel, test = p.split_eval(fake_logits)
    np.testing.assert_array_equal(sel, p.select_x.reshape(p.n_select, -1)[:, :10])
    np.testing.assert_array_equal(test, p.test_x.reshape(len(p.test_y), -1)[:, :10])
    with pytest.raises(ValueError, match="evaluation inputs"):
        p.split_eval(fake_logits[:-1])
    # selection never overlaps train, val or test
    rows = {tuple(x.ravel()) for x in p.select_x}
    assert not rows & {tuple(x.ravel()) for x in p.test_x}
