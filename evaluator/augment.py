"""Image augmentation on the device, per batch, as tensor ops; and which of it a dataset allows.

Runs INSIDE the sandbox (imported by ``evaluator.recipe``), so it imports only torch and
the standard library. Every function takes a whole batch ``(B, C, H, W)`` and draws its
random numbers from a CPU ``torch.Generator`` (a few numbers per sample, moved to the
batch's device), so a seed gives the same augmentation on CPU and CUDA and no per-sample
Python loop runs.

Whether a flip preserves labels is the DATASET's rule, decided on the trusted side by
:func:`flips_preserve_labels` and carried to the sandbox as ``TrainSpec.hflip_ok``: a
mirrored 2 is not a 2, a mirrored shoe is still a shoe. Unknown data never flips.

The inputs are normalised per channel (``evaluator.prepare``), so the zero that pads a
shift or fills an erased patch is the training set's mean pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sandbox_image.protocol import AUGMENTS, PAD_MODES

#: Datasets whose classes survive a horizontal flip (names compared without case, '-' or '_').
_FLIP_SAFE = frozenset({"fashionmnist", "cifar10", "cifar100", "imagefolder"})

#: Random erasing as torchvision's ``RandomErasing`` defaults: probability, area, aspect ratio.
ERASE_P = 0.5
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)


def flips_preserve_labels(dataset_name: str) -> bool:
    """True when a horizontal flip keeps every label of ``dataset_name`` (never for digits, MNIST, unknown data)."""
    key = dataset_name.strip().lower().replace("-", "").replace("_", "")
    return key in _FLIP_SAFE


def default_crop_px(height: int, width: int) -> int:
    """The usual largest shift for an image size: 1 px under 16 px, 2 under 32 (28x28), else 4 (32x32)."""
    side = min(height, width)
    return 1 if side < 16 else 2 if side < 32 else 4


def translate(x: torch.Tensor, max_px: int, generator: torch.Generator, pad_mode: str = "reflect") -> torch.Tensor:
    """Shift each image by its own random (dy, dx) in -max_px..max_px: a random crop of the padded batch."""
    if pad_mode not in PAD_MODES:
        raise ValueError(f"unknown pad_mode {pad_mode!r}; use one of {', '.join(PAD_MODES)}")
    b, c, h, w = x.shape
    p = min(max_px, h - 1, w - 1)  # reflect padding needs pad < size
    if p <= 0:
        return x
    padded = F.pad(x, (p, p, p, p), mode="reflect" if pad_mode == "reflect" else "constant")  # (B, C, H+2p, W+2p)
    offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator).to(x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
    picked = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * p))  # (B, C, H, W+2p)
    return picked.gather(3, cols[:, None, None, :].expand(b, c, h, w))  # (B, C, H, W)


def hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_erase(
    x: torch.Tensor,
    generator: torch.Generator,
    p: float = ERASE_P,
    scale: tuple[float, float] = ERASE_SCALE,
    ratio: tuple[float, float] = ERASE_RATIO,
) -> torch.Tensor:
    """Zero one random rectangle (area ``scale`` of the image, aspect ``ratio``) per image with probability ``p``."""
    b, _, h, w = x.shape
    u = torch.rand(5, b, generator=generator, dtype=torch.float64).to(x.device)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = (u[2] * (h - eh + 1)).floor()
    left = (u[3] * (w - ew + 1)).floor()
    apply = u[4] < p
    r = torch.arange(h, dtype=torch.float64, device=x.device)
    q = torch.arange(w, dtype=torch.float64, device=x.device)
    in_rows = (r >= top[:, None]) & (r < (top + eh)[:, None])  # (B, H)
    in_cols = (q >= left[:, None]) & (q < (left + ew)[:, None])  # (B, W)
    mask = apply[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
    return x.masked_fill(mask[:, None], 0.0)


class Augmenter:
    """One seed's augmentation of training batches: shift, then flip, then erase, as configured."""

    def __init__(self, *, crop_px: int, pad_mode: str, flip: bool, erase: bool, seed: int) -> None:
        self.crop_px, self.pad_mode, self.flip, self.erase = crop_px, pad_mode, flip, erase
        # Its own generator: the batch order is the same with or without augmentation.
        self.generator = torch.Generator().manual_seed(seed % 2**63 ^ 0x5DEECE66D)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The augmented batch ``(B, C, H, W)``, same shape, dtype and device."""
        x = translate(x, self.crop_px, self.generator, self.pad_mode)
        if self.flip:
            x = hflip(x, self.generator)
        if self.erase:
            x = random_erase(x, self.generator)
        return x


def make_augmenter(
    augment: str,
    input_shape: tuple[int, ...],
    *,
    hflip_ok: bool,
    crop_px: int = 0,
    pad_mode: str = "reflect",
    seed: int = 0,
) -> Augmenter | None:
    """The augmentation ``augment`` names for one example of ``input_shape``; None when there is none.

    Only images ``(C, H, W)`` are augmented (tables: none). A flip is dropped, never
    applied, when ``hflip_ok`` is False: ``crop_flip`` then shifts only.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; use one of {', '.join(AUGMENTS)}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"unknown pad_mode {pad_mode!r}; use one of {', '.join(PAD_MODES)}")
    if crop_px < 0:
        raise ValueError(f"crop_px must be >= 0, got {crop_px}")
    if augment == "none" or len(input_shape) != 3:
        return None
    _, h, w = input_shape
    return Augmenter(
        crop_px=crop_px or default_crop_px(h, w),
        pad_mode=pad_mode,
        flip=hflip_ok and augment in ("crop_flip", "crop_flip_erase"),
        erase=augment == "crop_flip_erase",
        seed=seed,
    )
