"""Batch augmentation on the data's device: no per-image Python, no DataLoader workers.

``cifar_crop_flip`` is the standard CIFAR augmentation (He et al. 2016): a random 32x32 crop of
the image zero-padded by 4 pixels, and a horizontal flip with probability 1/2, drawn per image.
The whole batch is padded once, and each output pixel is gathered from the padded batch at its
image's random offset (the flip folded into the column index): one pad and one gather, on the
CPU or the GPU alike. The inputs are normalised already, so zero padding is the mean colour.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# (batch, generator) -> augmented batch of the same shape, on the batch's device
Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def crop_flip_indices(n: int, h: int, w: int, pad: int, device: torch.device,
                      generator: torch.Generator | None = None, flip: bool = True
                      ) -> torch.Tensor:
    """Flat indices (n, h*w) into each image's padded (h+2p) x (w+2p) plane."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n, 1), device=device, generator=generator)
    rows = offsets[0] + torch.arange(h, device=device)  # (n, h)
    cols = torch.arange(w, device=device).expand(n, w)
    if flip:
        flips = torch.rand(n, 1, device=device, generator=generator) < 0.5
        cols = torch.where(flips, cols.flip(1), cols)
    cols = cols + offsets[1]  # (n, w)
    return (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).reshape(n, h * w)


def cifar_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4,
                    flip: bool = True) -> torch.Tensor:
    """Random crop with ``pad`` pixels of zero padding, and random horizontal flips, of a batch
    ``x`` (N, C, H, W). Deterministic for a seeded ``generator`` (on ``x``'s device)."""
    if x.dim() != 4:
        raise ValueError(f"crop-and-flip augmentation needs images (N, C, H, W), but got "
                         f"{tuple(x.shape)=}.")
    n, c, h, w = x.shape
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and c > 1
    padded = F.pad(x, (pad, pad, pad, pad)).reshape(n, c, -1)
    index = crop_flip_indices(n, h, w, pad, x.device, generator, flip)
    out = padded.gather(2, index[:, None, :].expand(n, c, h * w)).view(n, c, h, w)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


AUGMENTS: dict[str, Augment | None] = {"none": None, "cifar": cifar_crop_flip}
