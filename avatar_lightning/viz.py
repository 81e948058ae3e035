"""Image grids and error maps for logging (no torchvision dependency)."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor


def make_grid(images: Tensor, ncol: int | None = None, pad: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile images into one grid image.

    Args:
        images: ``[N, C, H, W]`` (C = 1 or 3; 1 is repeated to 3) in [0, 1].
        ncol: images per row; defaults to ``ceil(sqrt(N))``.
        pad: pixels between tiles.
        pad_value: colour of the padding.

    Returns:
        ``[3, rows * (H + pad) + pad, ncol * (W + pad) + pad]``.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"make_grid expects [N, 1|3, H, W], got {list(images.shape)}")
    images = images.detach().float().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, _, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    padded = images.new_full((nrow * ncol, 3, h + pad, w + pad), pad_value)
    padded[:n, :, pad:, pad:] = images
    grid = rearrange(padded, "(r c) ch h w -> ch (r h) (c w)", r=nrow, c=ncol)
    return torch.nn.functional.pad(grid, (0, pad, 0, pad), value=pad_value)


def error_map(pred: Tensor, target: Tensor, vmax: float = 0.25) -> Tensor:
    """Per-pixel L1 error as a heat map (black → red → yellow), ``[..., 3, H, W]`` in [0, 1].

    Args:
        pred: ``[..., 3, H, W]``.
        target: same shape as ``pred``.
        vmax: mean absolute error shown at full intensity.
    """
    e = ((pred - target).abs().mean(dim=-3, keepdim=True) / vmax).clamp(0, 1)
    return torch.cat([(2 * e).clamp(max=1), (2 * e - 1).clamp(min=0), torch.zeros_like(e)], dim=-3)
