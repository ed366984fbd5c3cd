"""tuner.augment: random crop (4-pixel zero padding) and flip, for a whole batch at once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tuner.augment import cifar_crop_flip


def reference_crops(image: torch.Tensor, pad: int = 4) -> list[torch.Tensor]:
    """Every crop-and-flip the augmentation may produce from one (C, H, W) image."""
    _, h, w = image.shape
    padded = F.pad(image, (pad,) * 4)
    crops = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            crops += [crop, crop.flip(2)]
    return crops


def test_shape_dtype_and_device_are_kept() -> None:
    x = torch.randn(16, 3, 32, 32)
    out = cifar_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device


def test_each_output_is_a_shifted_possibly_flipped_copy_within_the_padding() -> None:
    x = torch.randn(24, 3, 10, 12)  # distinct values: a match identifies the crop
    out = cifar_crop_flip(x, torch.Generator().manual_seed(1))
    shifts = set()
    for image, result in zip(x, out, strict=True):
        matches = [i for i, c in enumerate(reference_crops(image)) if torch.equal(c, result)]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 10  # offsets and flips vary from image to image


def test_content_never_moves_more_than_the_padding() -> None:
    x = torch.ones(64, 1, 16, 16)
    out = cifar_crop_flip(x, torch.Generator().manual_seed(2))
    # at most 4 rows and 4 columns of zeros per image: the centre 4..11 is always image
    assert (out[:, :, 4:12, 4:12] == 1).all()
    zero_rows = (out == 0).all(dim=3).sum(dim=2)
    zero_cols = (out == 0).all(dim=2).sum(dim=2)
    assert zero_rows.max() <= 4 and zero_cols.max() <= 4
    assert ((out == 0).sum() > 0) and ((out == 1).sum() > out.numel() // 2)


def test_seeded_generator_makes_it_deterministic() -> None:
    x = torch.randn(32, 3, 16, 16)
    a = cifar_crop_flip(x, torch.Generator().manual_seed(5))
    b = cifar_crop_flip(x, torch.Generator().manual_seed(5))
    c = cifar_crop_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_about_half_the_images_are_flipped() -> None:
    x = torch.arange(16.0).repeat(2000, 1, 16, 1)  # rows 0..15: a flip reverses them
    out = cifar_crop_flip(x, torch.Generator().manual_seed(3), pad=0)
    flipped = (out[:, 0, 0, 0] == 15).float().mean().item()
    assert 0.45 < flipped < 0.55
    assert torch.equal(out[:, :, :, :].sort(dim=3).values, x)  # pad=0: only flips


def test_channels_last_stays_channels_last() -> None:
    x = torch.randn(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    out = cifar_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_needs_images() -> None:
    with pytest.raises(ValueError, match="needs images"):
        cifar_crop_flip(torch.randn(4, 1, 40))
