"""Batch augmentation on tensors, and the dataset's rule on flips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evaluator.augment import (
    AUGMENTS,
    default_crop_px,
    flips_preserve_labels,
    hflip,
    make_augmenter,
    random_erase,
    translate,
)


def _images(b: int = 64, c: int = 1, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    """Distinct, strictly positive pixels: no image equals its mirror or a shift of itself."""
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed)) + 0.5


def _shifts(x: torch.Tensor, p: int, mode: str) -> list[torch.Tensor]:
    """Every translation of ``x`` (C, H, W) by -p..p in both axes (a crop of the padded image)."""
    _, h, w = x.shape
    padded = F.pad(x[None], (p, p, p, p), mode="reflect" if mode == "reflect" else "constant")[0]
    return [padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]


def _is_shift(out: torch.Tensor, x: torch.Tensor, p: int, mode: str) -> bool:
    return any(torch.equal(out, s) for s in _shifts(x, p, mode))


@pytest.mark.parametrize("name", ["digits", "mnist", "MNIST", "svhn", "emnist", "breast_cancer", "csv", ""])
def test_digits_mnist_and_unknown_data_never_flip(name: str) -> None:
    assert flips_preserve_labels(name) is False


@pytest.mark.parametrize("name", ["fashion_mnist", "Fashion-MNIST", "fashionmnist", "cifar10", "CIFAR-100",
                                  "cifar_10", "imagefolder"])
def test_fashion_and_cifar_flip(name: str) -> None:
    assert flips_preserve_labels(name) is True


def test_default_crop_follows_the_image_size() -> None:
    assert [default_crop_px(s, s) for s in (8, 15, 16, 28, 32, 64)] == [1, 1, 2, 2, 4, 4]


@pytest.mark.parametrize("augment", ["crop_flip", "crop_flip_erase"])
def test_a_flip_is_dropped_when_the_dataset_forbids_it(augment: str) -> None:
    x = _images(b=64)
    aug = make_augmenter(augment, (1, 8, 8), hflip_ok=False, pad_mode="reflect", seed=0)
    assert aug is not None and not aug.flip
    out = aug(x)
    for i in range(x.shape[0]):
        if augment == "crop_flip":  # every image is a shift of itself, never of its mirror
            assert _is_shift(out[i], x[i], 1, "reflect")
        assert not any(torch.equal(out[i], s) for s in _shifts(x[i].flip(-1), 1, "reflect"))


def test_crop_flip_on_fashion_flips_about_half_and_shifts_the_rest() -> None:
    x = _images(b=200, h=28, w=28)
    aug = make_augmenter("crop_flip", (1, 28, 28), hflip_ok=flips_preserve_labels("fashion_mnist"), seed=0)
    assert aug is not None and aug.flip and aug.crop_px == 2
    out = aug(x)
    flipped = [_is_shift(out[i], x[i].flip(-1), 2, "reflect") for i in range(200)]
    plain = [_is_shift(out[i], x[i], 2, "reflect") for i in range(200)]
    assert all(f != p for f, p in zip(flipped, plain))  # exactly one of the two, each time
    assert 70 < sum(flipped) < 130


@pytest.mark.parametrize("augment", AUGMENTS[1:])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("pad_mode", ["zero", "reflect"])
def test_shape_dtype_and_device_are_kept(augment: str, shape: tuple[int, int, int], pad_mode: str) -> None:
    x = _images(b=16, c=shape[0], h=shape[1], w=shape[2])
    aug = make_augmenter(augment, shape, hflip_ok=True, pad_mode=pad_mode, seed=3)
    assert aug is not None
    out = aug(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.is_contiguous() and torch.isfinite(out).all()


@pytest.mark.parametrize("augment", AUGMENTS[1:])
def test_the_same_seed_augments_the_same_way(augment: str) -> None:
    x = _images(b=32, c=3, h=32, w=32)
    runs = [make_augmenter(augment, (3, 32, 32), hflip_ok=True, seed=s) for s in (5, 5, 6)]
    a, b, c = ([aug(x), aug(x)] for aug in runs)  # two batches each: the generator advances
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_translate_is_an_exact_shift_within_the_bound(mode: str) -> None:
    x = _images(b=48, c=2, h=10, w=12)
    out = translate(x, 2, torch.Generator().manual_seed(0), pad_mode=mode)
    assert all(_is_shift(out[i], x[i], 2, mode) for i in range(48))
    assert bool((out == 0).any()) == (mode == "zero")  # zero padding shows; reflect copies pixels
    assert not torch.equal(out, x)


def test_translate_keeps_tiny_images_valid() -> None:
    x = _images(b=4, h=2, w=2)
    out = translate(x, 4, torch.Generator().manual_seed(0), pad_mode="reflect")  # clamped to 1 px
    assert out.shape == x.shape and all(_is_shift(out[i], x[i], 1, "reflect") for i in range(4))


def test_hflip_mirrors_exactly_the_chosen_images() -> None:
    x = _images(b=400)
    out = hflip(x, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(out[i], x[i].flip(-1)) for i in range(400)]
    assert all(m or torch.equal(out[i], x[i]) for i, m in enumerate(mirrored))
    assert 150 < sum(mirrored) < 250


def test_random_erase_zeroes_one_rectangle_in_about_half_the_images() -> None:
    x = _images(b=400, c=3, h=32, w=32)
    out = random_erase(x, torch.Generator().manual_seed(0))
    zero = out == 0  # (B, C, H, W); the inputs have no zeros
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])  # all channels
    assert torch.equal(out[~zero], x[~zero])  # nothing else changes
    erased = zero[:, 0].flatten(1).any(dim=1)
    assert 150 < int(erased.sum()) < 250
    for m in zero[erased, 0]:
        rows, cols = m.any(dim=1).nonzero().flatten(), m.any(dim=0).nonzero().flatten()
        assert int(m.sum()) == len(rows) * len(cols)  # one full rectangle
        assert len(rows) == int(rows[-1] - rows[0]) + 1 and len(cols) == int(cols[-1] - cols[0]) + 1
        assert 0.01 <= int(m.sum()) / (32 * 32) <= 0.45  # scale 0.02..0.33, with rounding and clamping


def test_tables_and_none_are_not_augmented_and_bad_names_are_refused() -> None:
    assert make_augmenter("crop_flip", (13,), hflip_ok=True) is None
    assert make_augmenter("none", (1, 28, 28), hflip_ok=True) is None
    with pytest.raises(ValueError, match="unknown augment 'mixup'"):
        make_augmenter("mixup", (1, 28, 28), hflip_ok=True)
    with pytest.raises(ValueError, match="unknown pad_mode 'edge'"):
        make_augmenter("shift", (1, 28, 28), hflip_ok=True, pad_mode="edge")
    with pytest.raises(ValueError, match="crop_px"):
        make_augmenter("shift", (1, 28, 28), hflip_ok=True, crop_px=-1)


def test_shift_never_flips_even_where_flips_are_allowed() -> None:
    aug = make_augmenter("shift", (1, 8, 8), hflip_ok=True, crop_px=2, pad_mode="zero", seed=1)
    assert aug is not None and not aug.flip and not aug.erase
    x = _images(b=32)
    out = aug(x)
    assert all(_is_shift(out[i], x[i], 2, "zero") for i in range(32))
