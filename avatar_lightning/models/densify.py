"""Part-based densification (SynShot §3.2, "Gaussian Primitives Regression").

Per region r ∈ {face, hair}: a regular UV sample grid (the UV square at the part's own resolution,
set in the config independently of the map resolution) masked to the region, positions
φ_r = B(φ, u_r, v_r), initial Gaussians — scale = nearest-neighbour distance, opacity 0.7,
rotation from the TBN frame of Eq. 2 — and the regressed offsets Δ applied on top. Everything
here is canonical (3DMM) space; posing comes later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from avatar_lightning.head.uv import sample_uv, tangent_frames, texel_grid
from avatar_lightning.models.regressors import GaussianOffsets, PartPrediction
from avatar_lightning.render import Gaussians, normalize_quat, quat_multiply, rotmat_to_quat


@dataclass
class PartGrid:
    """A part's UV sample grid.

    Attributes:
        uv: [h, w, 2] sample points (u, v) in [0, 1] (OBJ convention, v up).
        valid: [h, w] bool, True where the point lies in the region; these become Gaussians.
    """

    uv: Tensor
    valid: Tensor

    @property
    def num_gaussians(self) -> int:
        """N_r = number of valid sample points."""
        return int(self.valid.sum())


def part_grid(region: Tensor) -> PartGrid:
    """A part's sample grid: the texel centres of its region mask, rasterised at the part's resolution.

    SynShot samples "separate parameter maps for the face and scalp region": each part resamples the
    whole UV square at its own resolution (its primitive density, a config number independent of the
    decoder's map resolution), and the texels inside the region become Gaussians.

    Args:
        region: [S, S] region mask in UV at the part's resolution (OBJ layout), > 0.5 inside
            (e.g. ``avatar_lightning.head.uv.part_masks``).

    Returns:
        :class:`PartGrid` with ``uv`` = :func:`texel_grid` (S).
    """
    if region.ndim != 2 or region.shape[0] != region.shape[1]:
        raise ValueError(f"part_grid: region must be a square [S, S] mask, got {list(region.shape)}")
    if not (region > 0.5).any():
        raise ValueError("part_grid: the region mask is empty")
    return PartGrid(uv=texel_grid(region.shape[0], region.device), valid=region > 0.5)


def tbn_quaternions(phi: Tensor, valid: Tensor | None = None) -> Tensor:
    """Rotations from the image-space gradient of a sampled position grid (SynShot Eq. 2).

    T = ∂φ/∂u, B = ∂φ/∂v come from the head toolkit's :func:`tangent_frames` (central differences
    inside the region, one-sided at its border). T and B are generally not orthogonal, so B is
    Gram-Schmidt-orthogonalised against T and N = T̂ × B̂, giving a proper rotation [T̂ B̂ N̂].
    Degenerate frames (zero gradient, texels outside ``valid``) fall back to the identity.

    Args:
        phi: [B, 3, h, w] positions on a part grid (columns increase u, rows decrease v).
        valid: [h, w] bool region of the grid (None: all of it).

    Returns:
        [B, h, w, 4] unit wxyz quaternions.
    """
    if valid is None:
        valid = torch.ones(phi.shape[-2:], dtype=torch.bool, device=phi.device)
    frames = tangent_frames(phi, valid)  # [B, h, w, 3, 3], columns T, B, N
    t_hat = F.normalize(frames[..., 0], dim=-1)
    b = frames[..., 1]
    b_hat = F.normalize(b - (b * t_hat).sum(-1, keepdim=True) * t_hat, dim=-1)
    n_hat = torch.cross(t_hat, b_hat, dim=-1)
    rot = torch.stack([t_hat, b_hat, n_hat], dim=-1)
    ok = (n_hat.norm(dim=-1) > 0.5)[..., None]
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=phi.dtype, device=phi.device)
    return torch.where(ok, rotmat_to_quat(rot), identity)


@torch.no_grad()
def nearest_neighbor_distance(points: Tensor, chunk: int = 2048) -> Tensor:
    """Distance of each point to its nearest other point, min_{j≠i} ‖p_i − p_j‖, no gradient.

    Args:
        points: [B, N, 3] with N ≥ 2.
        chunk: query rows per block (memory is chunk × N per batch element).

    Returns:
        [B, N].
    """
    if points.shape[1] < 2:
        raise ValueError(f"nearest_neighbor_distance needs at least 2 points, got {points.shape[1]}")
    out = []
    for start in range(0, points.shape[1], chunk):
        d = torch.cdist(points[:, start:start + chunk], points)  # [B, c, N]
        idx = torch.arange(start, start + d.shape[1], device=points.device)
        d[:, torch.arange(d.shape[1], device=points.device), idx] = float("inf")
        out.append(d.min(dim=-1).values)
    return torch.cat(out, dim=1)


@torch.no_grad()
def grid_nearest_neighbor_distance(phi: Tensor, valid: Tensor, radius: int = 1) -> Tensor:
    """Nearest-neighbour distance of the valid points of a part grid, searched in the grid's window.

    The part's points lie on a regular UV grid over a smooth surface, so a point's nearest other
    point is one of its grid neighbours: this looks only at the (2·radius + 1)² − 1 texels around it,
    O(N·radius²) instead of the O(N²) all-pairs search of :func:`nearest_neighbor_distance` (at the
    paper's 512² face grid, ≈1.5·10⁵ points: 10⁶ instead of 2·10¹⁰ distances per sample). Points
    with no valid texel in their window (isolated texels) fall back to the all-pairs search, so the
    result equals :func:`nearest_neighbor_distance` whenever the nearest point in 3D is a grid
    neighbour. It differs where the surface folds back onto itself in 3D (lips, across UV seams):
    there the grid neighbour's distance is kept, which is the sampling density the scale should
    follow, rather than the distance to a point of another sheet. Runs in float32 at least.

    Args:
        phi: [B, 3, h, w] positions on the part grid.
        valid: [h, w] bool, the points that count (the part's Gaussians).
        radius: window half-size in texels (1: the 8-neighbourhood).

    Returns:
        [B, N_r], in the order of ``phi[..., valid]`` (row-major over the grid).
    """
    pts = phi.to(torch.promote_types(phi.dtype, torch.float32))
    h, w = valid.shape
    pad = (radius, radius, radius, radius)
    padded, padded_ok = F.pad(pts, pad), F.pad(valid, pad)
    best = torch.full((pts.shape[0], h, w), float("inf"), dtype=pts.dtype, device=pts.device)
    for di in range(-radius, radius + 1):
        for dj in range(-radius, radius + 1):
            if di == 0 and dj == 0:
                continue
            rows, cols = slice(radius + di, radius + di + h), slice(radius + dj, radius + dj + w)
            d = (pts - padded[..., rows, cols]).norm(dim=1)  # [B, h, w]
            best = torch.minimum(best, torch.where(padded_ok[rows, cols], d, float("inf")))
    out = best[:, valid]  # [B, N_r]
    lonely = ~torch.isfinite(out).all(dim=0)
    if bool(lonely.any()):  # no valid neighbour in the window: search all points
        points = rearrange(pts, "b c h w -> b h w c")[:, valid]
        d = torch.cdist(points[:, lonely], points)  # [B, M, N_r]
        d[:, torch.arange(d.shape[1], device=d.device), lonely.nonzero()[:, 0]] = float("inf")
        out[:, lonely] = d.min(dim=-1).values
    return out


def axis_angle_to_quat(axis_angle: Tensor) -> Tensor:
    """[..., 3] axis-angle → [..., 4] unit wxyz (smooth at zero)."""
    angle = axis_angle.norm(dim=-1, keepdim=True)
    half = angle / 2
    # sin(x/2)/x → 1/2 as x → 0; the series avoids 0/0.
    k = torch.where(angle < 1e-4, 0.5 - angle**2 / 48, torch.sin(half) / angle.clamp_min(1e-12))
    return torch.cat([torch.cos(half), axis_angle * k], dim=-1)


def part_gaussians(phi: Tensor, pred: PartPrediction, grid: PartGrid, init_opacity: float = 0.7,
                   min_scale: float = 1e-5, nn_radius: int | None = 1) -> Gaussians:
    """Initial Gaussians of one part with the regressed offsets applied (canonical space).

    means = φ_r + δφ; quats = q_TBN + δθ (quaternion offset) or q_TBN ⊗ exp(δθ) (axis-angle);
    scales = σ_nn · exp(δσ) (the offset is additive in log space, which keeps scales positive);
    opacities = sigmoid(logit(0.7) + δα) (additive in logit space, which keeps them in (0, 1)).

    Geometry (TBN, nearest neighbours) runs in float32 at least, with autocast off: half-precision
    positions make neighbouring samples coincide (their scale would clamp to ``min_scale``).

    Args:
        phi: sampled positions φ_r [B, 3, h, w].
        pred: the part's regressor outputs on the same grid.
        grid: the part's grid; only ``grid.valid`` points become Gaussians.
        init_opacity: initial opacity (SynShot: 0.7).
        min_scale: floor of the nearest-neighbour scale (coincident samples).
        nn_radius: σ_nn searched in the grid window of this half-size
            (:func:`grid_nearest_neighbor_distance`); None: over all points of the part
            (:func:`nearest_neighbor_distance`, O(N²), the reference).

    Returns:
        Batched :class:`Gaussians` [B, N_r, ...], float32 (float64 for float64 inputs).
    """
    with torch.autocast(device_type=phi.device.type, enabled=False):
        dtype = torch.promote_types(phi.dtype, torch.float32)
        pred = PartPrediction(sh=pred.sh.to(dtype), offsets=GaussianOffsets(
            *(t.to(dtype) for t in (pred.offsets.position, pred.offsets.rotation, pred.offsets.scale,
                                    pred.offsets.opacity))))
        return _part_gaussians(phi.to(dtype), pred, grid, init_opacity, min_scale, nn_radius)


def _part_gaussians(phi: Tensor, pred: PartPrediction, grid: PartGrid, init_opacity: float, min_scale: float,
                    nn_radius: int | None) -> Gaussians:
    """:func:`part_gaussians` with everything already in one full-precision dtype."""
    valid = grid.valid

    def pick(x: Tensor) -> Tensor:  # [B, C, h, w] → [B, N_r, C]
        return rearrange(x, "b c h w -> b h w c")[:, valid]

    phi_r = pick(phi)
    quat0 = tbn_quaternions(phi.detach(), valid)[:, valid]
    if nn_radius is None:
        sigma0 = nearest_neighbor_distance(phi_r.detach())
    else:
        sigma0 = grid_nearest_neighbor_distance(phi.detach(), valid, nn_radius)
    sigma0 = sigma0.clamp_min(min_scale)
    off = pred.offsets
    d_rot = pick(off.rotation)
    quats = quat0 + d_rot if d_rot.shape[-1] == 4 else quat_multiply(quat0, axis_angle_to_quat(d_rot))
    logit0 = math.log(init_opacity / (1 - init_opacity))
    return Gaussians(
        means=phi_r + pick(off.position),
        quats=normalize_quat(quats),
        scales=sigma0[..., None] * torch.exp(pick(off.scale)),
        opacities=torch.sigmoid(logit0 + pick(off.opacity)[..., 0]),
        sh=rearrange(pred.sh, "b k c h w -> b h w k c")[:, valid],
    )


def sample_part(maps: Tensor, grid: PartGrid) -> Tensor:
    """B(maps, u_r, v_r) on a part grid: [B, C, H, W] → [B, C, h, w]."""
    return sample_uv(maps, grid.uv.to(maps.device))
