"""Tile binning for the torch rasteriser: which Gaussians can touch which tile, front to back.

A Gaussian counts for a pixel iff ``o·exp(−σ) ≥ 1/255`` (and σ ≥ 0), i.e. inside the ellipse
``dᵀ Σ⁻¹ d ≤ 2·log(255·o)``. That ellipse's bounding box has half-widths
``sqrt(2·log(255·o)·Σ_xx)`` and ``sqrt(2·log(255·o)·Σ_yy)`` — the same opacity-aware extent gsplat
1.5 uses — so binning by the box drops nothing the per-pixel test would keep ("no other footprint
cut-off"). A small slack keeps the box conservative under floating-point rounding; the exact test
is applied per pixel afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0


@dataclass
class TileBins:
    """Gaussian ids per tile, each tile's run sorted front to back by camera z.

    Attributes:
        gauss: Tensor  # [I] int32 flat Gaussian ids (view·N + n), grouped by tile.
        start: Tensor  # [V·T] offset of each tile's run in ``gauss``.
        count: Tensor  # [V·T] length of each tile's run.
        tiles_x: tiles per row (T = tiles_x · tiles_y per view).
        tiles_y: tiles per column.
        tile_size: tile edge in pixels.
    """

    gauss: Tensor
    start: Tensor
    count: Tensor
    tiles_x: int
    tiles_y: int
    tile_size: int


@torch.no_grad()
def bin_gaussians(means2d: Tensor, conics: Tensor, opacities: Tensor, depths: Tensor,
                  width: int, height: int, tile_size: int = 4) -> TileBins:
    """Assign Gaussians to the tiles their visible footprint overlaps.

    Args:
        means2d: Tensor  # [V, N, 2] pixel coordinates.
        conics: Tensor  # [V, N, 3] inverse 2D covariance (a, b, c).
        opacities: Tensor  # [V, N] (0 for culled Gaussians, which are then skipped).
        depths: Tensor  # [V, N] camera z, the front-to-back sort key.
        width: image width W.
        height: image height H.
        tile_size: tile edge in pixels.

    Returns:
        :class:`TileBins`.
    """
    v, n = opacities.shape
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    a, b, c = conics.unbind(-1)
    det = a * c - b * b
    ok = (opacities >= ALPHA_MIN) & (det > 0) & torch.isfinite(means2d).all(-1)
    extent = 2.0 * torch.log((opacities * 255.0).clamp_min(1.0))
    det_safe = torch.where(ok, det, torch.ones_like(det))
    radius = torch.stack([(extent * c / det_safe).clamp_min(0).sqrt(),
                          (extent * a / det_safe).clamp_min(0).sqrt()], -1)  # [V,N,2]
    mean = torch.where(ok[..., None], means2d, torch.zeros_like(means2d))
    slack = 1e-3 + 1e-5 * (mean.abs() + radius)
    # pixel j has centre j + 0.5: it lies in [lo, hi] iff ceil(lo - 0.5) <= j <= floor(hi - 0.5)
    lo = torch.ceil(mean - radius - 0.5 - slack)
    hi = torch.floor(mean + radius - 0.5 + slack)
    size = torch.tensor([width - 1, height - 1], dtype=lo.dtype, device=lo.device)
    ok &= ((lo <= hi) & (hi >= 0) & (lo <= size)).all(-1)
    lo = torch.minimum(lo.clamp_min(0), size).long() // tile_size
    hi = torch.minimum(hi.clamp_min(0), size).long() // tile_size
    span = ((hi - lo + 1) * ok[..., None]).flatten(0, 1)  # [V·N, 2]
    lo = lo.flatten(0, 1)
    # Expand Gaussians front to back, so that a *stable* sort by tile keeps each tile's run in depth
    # order; int32 throughout halves the memory of these per-intersection arrays.
    order = torch.argsort(depths.flatten(), stable=True)
    per_gauss = (span[:, 0] * span[:, 1])[order]
    gid = torch.repeat_interleave(order.to(torch.int32), per_gauss)  # [I]
    first = (torch.cumsum(per_gauss, 0) - per_gauss).to(torch.int32)
    local = torch.arange(gid.numel(), dtype=torch.int32, device=gid.device)
    local -= torch.repeat_interleave(first, per_gauss)
    span_x = span[:, 0].to(torch.int32).index_select(0, gid)
    tx = lo[:, 0].to(torch.int32).index_select(0, gid) + local % span_x
    ty = lo[:, 1].to(torch.int32).index_select(0, gid) + local // span_x
    del local, span_x
    tile = torch.div(gid, n, rounding_mode="floor") * (tiles_x * tiles_y) + ty * tiles_x + tx
    del tx, ty
    tile, perm = torch.sort(tile, stable=True)
    count = torch.bincount(tile, minlength=v * tiles_x * tiles_y)
    return TileBins(gauss=gid[perm], start=torch.cumsum(count, 0) - count, count=count,
                    tiles_x=tiles_x, tiles_y=tiles_y, tile_size=tile_size)
