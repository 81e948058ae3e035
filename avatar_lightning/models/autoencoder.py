"""SynShot's encoder branches E_id, E_expr and decoder branches D_feat, D_id, D_expr (§3.2, Fig. 2).

Each branch is a VQGAN-style convolutional stack (Esser et al.): residual blocks with stride-2
down-sampling to the latent grid, and the mirror image with up-sampling back to map resolution.
The branches are separate modules so that the inversion (§3.3) can optimise E_id alone, then
fine-tune D_feat, D_id and D_expr with E_expr frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avatar_lightning.models.blocks import Downsample, ResBlock, Upsample, group_norm, num_levels


class ConvEncoder(nn.Module):
    """Map [B, C_in, H, W] → latent grid [B, n, h, w] with h = H / 2**levels.

    Args:
        in_channels: input channels.
        latent_channels: n, the code dimension of the latent grid.
        resolution: H (= W) of the input map.
        latent_resolution: h (= w) of the latent grid.
        channels: channel width at full resolution; doubles per level up to ``max_channels``.
        max_channels: cap on the channel width.
        blocks_per_level: residual blocks before each down-sampling.
    """

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        resolution: int,
        latent_resolution: int,
        channels: int = 32,
        max_channels: int = 256,
        blocks_per_level: int = 1,
    ) -> None:
        super().__init__()
        levels = num_levels(resolution, latent_resolution)
        widths = [min(channels * 2**i, max_channels) for i in range(levels + 1)]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for i in range(levels):
            layers += [ResBlock(widths[i], widths[i]) for _ in range(blocks_per_level)]
            layers += [Downsample(widths[i]), ResBlock(widths[i], widths[i + 1])]
        layers += [ResBlock(widths[-1], widths[-1]), group_norm(widths[-1]), nn.SiLU()]
        layers += [nn.Conv2d(widths[-1], latent_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C_in, H, W] → z: [B, n, h, w]."""
        return self.net(x)


class ConvDecoder(nn.Module):
    """Map a latent grid [B, n, h, w] → [B, C_out, H, W], the mirror image of :class:`ConvEncoder`.

    Args:
        latent_channels: n, input channels.
        out_channels: output channels.
        resolution: H (= W) of the output.
        latent_resolution: h (= w) of the input grid.
        channels: channel width at full resolution; doubles per level up to ``max_channels``.
        max_channels: cap on the channel width.
        blocks_per_level: residual blocks after each up-sampling.
    """

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        resolution: int,
        latent_resolution: int,
        channels: int = 32,
        max_channels: int = 256,
        blocks_per_level: int = 1,
    ) -> None:
        super().__init__()
        levels = num_levels(resolution, latent_resolution)
        widths = [min(channels * 2**i, max_channels) for i in range(levels + 1)][::-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, widths[0], 3, padding=1), ResBlock(widths[0], widths[0])]
        for i in range(levels):
            layers += [ResBlock(widths[i], widths[i + 1]), Upsample(widths[i + 1])]
            layers += [ResBlock(widths[i + 1], widths[i + 1]) for _ in range(blocks_per_level)]
        layers += [group_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """z: [B, n, h, w] → [B, C_out, H, W]."""
        return self.net(z)


class IdentityEncoder(ConvEncoder):
    """E_id(x_tex, x_verts) → z_id: texture and neutral position map, stacked on channels."""

    def __init__(self, latent_channels: int, resolution: int, latent_resolution: int, **kwargs: int) -> None:
        super().__init__(6, latent_channels, resolution, latent_resolution, **kwargs)

    def forward(self, x_tex: Tensor, x_verts: Tensor) -> Tensor:  # type: ignore[override]
        """x_tex: [B, 3, H, W], x_verts: [B, 3, H, W] → z_id: [B, n_id, h, w]."""
        return super().forward(torch.cat([x_tex, x_verts], dim=1))


class ExpressionEncoder(ConvEncoder):
    """E_expr(x_exp) → z_expr from the expression-offset map."""

    def __init__(self, latent_channels: int, resolution: int, latent_resolution: int, **kwargs: int) -> None:
        super().__init__(3, latent_channels, resolution, latent_resolution, **kwargs)


class FeatureDecoder(ConvDecoder):
    """D_feat(q(z_id), q(z_expr)) → x̂_feat [B, F, H, W]: both codes stacked on channels."""

    def __init__(self, n_id: int, n_expr: int, feature_channels: int, resolution: int, latent_resolution: int,
                 **kwargs: int) -> None:
        super().__init__(n_id + n_expr, feature_channels, resolution, latent_resolution, **kwargs)

    def forward(self, q_id: Tensor, q_expr: Tensor) -> Tensor:  # type: ignore[override]
        """q_id: [B, n_id, h, w], q_expr: [B, n_expr, h, w] → [B, F, H, W]."""
        return super().forward(torch.cat([q_id, q_expr], dim=1))


@dataclass
class IdentityMaps:
    """D_id's output.

    Attributes:
        tex: x̂_tex, texture map [B, 3, H, W] (unbounded; the loss pulls it to [0, 1]).
        verts: x̂_verts, neutral position map [B, 3, H, W] in 3DMM space.
    """

    tex: Tensor
    verts: Tensor


class IdentityDecoder(ConvDecoder):
    """D_id(q(z_id)) → {x̂_tex, x̂_verts}."""

    def __init__(self, n_id: int, resolution: int, latent_resolution: int, **kwargs: int) -> None:
        super().__init__(n_id, 6, resolution, latent_resolution, **kwargs)

    def forward(self, q_id: Tensor) -> IdentityMaps:  # type: ignore[override]
        """q_id: [B, n_id, h, w] → :class:`IdentityMaps` at [B, 3, H, W] each."""
        tex, verts = super().forward(q_id).split(3, dim=1)
        return IdentityMaps(tex=tex, verts=verts)


class ExpressionDecoder(ConvDecoder):
    """D_expr(q(z_expr)) → x̂_expr [B, 3, H, W], the expression offsets from the neutral mesh."""

    def __init__(self, n_expr: int, resolution: int, latent_resolution: int, **kwargs: int) -> None:
        super().__init__(n_expr, 3, resolution, latent_resolution, **kwargs)
