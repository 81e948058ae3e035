"""Convolutional building blocks shared by the encoders, decoders and regressors.

Shapes use the glossary of ``render/``: B batch, C channels, h w a map's spatial size.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ 32 that divides ``channels``.

    Taming uses 32 groups; tiny CPU configs have fewer channels than that, so pick a divisor.
    """
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block (norm → SiLU → 3×3 conv, twice), as in VQGAN.

    Args:
        in_channels: input channels.
        out_channels: output channels; a 1×1 conv matches the skip when they differ.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C_in, h, w] → [B, C_out, h, w]."""
        y = self.conv1(F.silu(self.norm1(x)))
        y = self.conv2(F.silu(self.norm2(y)))
        return self.skip(x) + y


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3×3 conv (learned, unlike pooling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, h, w] → [B, C, h/2, w/2]."""
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour up-sampling then a 3×3 conv (no checkerboard)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, h, w] → [B, C, 2h, 2w]."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def num_levels(resolution: int, latent_resolution: int) -> int:
    """Number of ×2 resampling stages between a map and its latent grid.

    Raises:
        ValueError: if ``resolution / latent_resolution`` is not a power of two.
    """
    ratio = resolution // latent_resolution
    if latent_resolution <= 0 or ratio * latent_resolution != resolution or ratio & (ratio - 1):
        raise ValueError(
            f"map resolution {resolution} must be latent_resolution {latent_resolution} times a power of two"
        )
    return int(math.log2(ratio))
