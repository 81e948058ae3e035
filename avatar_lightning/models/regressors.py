"""Per-part regressors R_color and R_gauss (SynShot §3.2, Eq. 3-4).

SynShot samples the feature map per region r ∈ {face, hair}, s_r = B(x̂_feat, u_r, v_r), and
regresses h_r ∈ R^{h×w×16×3} and Δ = {δφ_r, δθ_r, δσ_r, δα_r} with "lightweight regressors composed
of four stacked convolutional blocks with skip connections". The outputs are indexed h×w, and the
initial rotations come from image-space gradients ∂φ_r/∂u, ∂φ_r/∂v of the sampled positions (Eq. 2):
so each part's sample points form a regular grid in UV (the part's UV region resampled at its own
density), and the sampled features are an image [B, F, h_r, w_r] on which 3×3 convolutions see
neighbouring primitives. That is the default (``kernel_size=3``). Sample points that do not form
a grid (scattered UV points [N, 2]) can be processed as a [B, F, N, 1] image with ``kernel_size=1``:
the same network then acts as a per-primitive MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

from einops import rearrange
from torch import Tensor, nn

from avatar_lightning.models.blocks import group_norm


class SkipConvBlock(nn.Module):
    """x + conv(SiLU(norm(x))): one of the regressor's four blocks.

    Args:
        channels: width.
        kernel_size: 3 for sample grids, 1 for scattered samples.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, h, w] → [B, C, h, w]."""
        return x + self.conv(nn.functional.silu(self.norm(x)))


class SkipConvRegressor(nn.Module):
    """Input conv, ``num_blocks`` skip blocks, output conv: [B, F, h, w] → [B, C_out, h, w].

    Args:
        in_channels: F, the sampled feature width.
        out_channels: regressed channels.
        hidden: width of the blocks.
        num_blocks: SynShot uses four.
        kernel_size: 3 for sample grids, 1 for scattered samples (see module docstring).
        zero_init: start the output conv at zero, so offsets start at zero and the initial
            Gaussians (nearest-neighbour scale, opacity 0.7, TBN rotation) are what renders first.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        num_blocks: int = 4,
        kernel_size: int = 3,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"regressor kernel_size must be odd (same padding), got {kernel_size}")
        pad = kernel_size // 2
        self.conv_in = nn.Conv2d(in_channels, hidden, kernel_size, padding=pad)
        self.blocks = nn.Sequential(*[SkipConvBlock(hidden, kernel_size) for _ in range(num_blocks)])
        self.conv_out = nn.Sequential(group_norm(hidden), nn.SiLU(), nn.Conv2d(hidden, out_channels, 1))
        if zero_init:
            nn.init.zeros_(self.conv_out[-1].weight)
            nn.init.zeros_(self.conv_out[-1].bias)

    def forward(self, s: Tensor) -> Tensor:
        """s: [B, F, h, w] → [B, C_out, h, w]."""
        return self.conv_out(self.blocks(self.conv_in(s)))


@dataclass
class GaussianOffsets:
    """R_gauss's additive offsets Δ, on the part's sample grid.

    Attributes:
        position: δφ [B, 3, h, w], added to the sampled positions φ_r.
        rotation: δθ [B, R, h, w]; R = 4 (wxyz quaternion, added to the TBN quaternion) or
            3 (axis-angle, composed with the TBN rotation).
        scale: δσ [B, 3, h, w], added to the log of the nearest-neighbour scale.
        opacity: δα [B, 1, h, w], added to the logit of the initial opacity 0.7.
    """

    position: Tensor
    rotation: Tensor
    scale: Tensor
    opacity: Tensor


@dataclass
class PartPrediction:
    """Both regressors' outputs for one part.

    Attributes:
        sh: h_r, spherical-harmonic coefficients [B, K, 3, h, w], K = (degree + 1)².
        offsets: Δ, see :class:`GaussianOffsets`.
    """

    sh: Tensor
    offsets: GaussianOffsets


class PartRegressors(nn.Module):
    """R_color and R_gauss of one part, as two separately addressable submodules.

    Args:
        feature_channels: F.
        hidden: regressor width.
        num_blocks: skip blocks per regressor (SynShot: 4).
        kernel_size: 3 for sample grids, 1 for scattered samples.
        sh_degree: SH degree of R_color's output (SynShot: 3 → 16 × 3).
        rotation_dim: 4 for a wxyz quaternion offset, 3 for an axis-angle offset.
        color_zero_init: start R_color's output at zero (when it predicts a residual on a base colour).
    """

    def __init__(
        self,
        feature_channels: int,
        hidden: int = 64,
        num_blocks: int = 4,
        kernel_size: int = 3,
        sh_degree: int = 3,
        rotation_dim: int = 4,
        color_zero_init: bool = False,
    ) -> None:
        super().__init__()
        if rotation_dim not in (3, 4):
            raise ValueError(f"rotation_dim must be 4 (quaternion) or 3 (axis-angle), got {rotation_dim}")
        self.num_sh = (sh_degree + 1) ** 2
        self.split = (3, rotation_dim, 3, 1)
        self.color = SkipConvRegressor(feature_channels, 3 * self.num_sh, hidden, num_blocks, kernel_size,
                                       zero_init=color_zero_init)
        self.gauss = SkipConvRegressor(feature_channels, sum(self.split), hidden, num_blocks, kernel_size,
                                       zero_init=True)

    def forward(self, s: Tensor) -> PartPrediction:
        """s: sampled features [B, F, h, w] → :class:`PartPrediction`."""
        sh = rearrange(self.color(s), "b (k c) h w -> b k c h w", c=3)
        position, rotation, scale, opacity = self.gauss(s).split(self.split, dim=1)
        return PartPrediction(sh=sh, offsets=GaussianOffsets(position, rotation, scale, opacity))
