"""UV-space toolkit: rasterise the mesh into UV once, then build and sample maps.

The UV convention, stated here once and used by every module that reads a UV map (the priors'
densification, the baseline's colour initialisation, the synthetic generator's textures): the
FLAME ``.obj``'s ``uv`` in [0, 1], u → column, v **up**, so a map's row is ``(1 − v)·h``
(:func:`uv_to_pixels`), texel (i, j) has centre ``u = (j + 0.5)/w``, ``v = 1 − (i + 0.5)/h``
(:func:`texel_grid`), ``grid_sample`` reads it at x = 2u − 1, y = 1 − 2v (:func:`uv_to_grid`,
:func:`sample_uv`), and ∂/∂v is minus the derivative along rows (:func:`tangent_frames`).
Dimension letters: h w UV map, V vertices, F faces, B batch, N sample points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from avatar_lightning.head.raster import triangle_pixels


@dataclass
class UVRaster:
    """Per-texel triangle id and barycentrics of a UV layout at one resolution (compute once).

    Attributes:
        face: LongTensor  # [h, w] triangle covering the texel centre, −1 where none.
        bary: Tensor  # [h, w, 3] barycentrics of the texel centre in that triangle (0 where none).
        valid: BoolTensor  # [h, w] texel covered by some triangle.
    """

    face: Tensor
    bary: Tensor
    valid: Tensor

    @property
    def size(self) -> tuple[int, int]:
        return self.face.shape[0], self.face.shape[1]

    def to(self, device: torch.device | str) -> UVRaster:
        return UVRaster(self.face.to(device), self.bary.to(device), self.valid.to(device))


def uv_to_pixels(uv: Tensor, height: int, width: int) -> Tensor:
    """OBJ uv ``[..., 2]`` → continuous pixel coordinates (x right, y down) ``[..., 2]``."""
    return torch.stack([uv[..., 0] * width, (1 - uv[..., 1]) * height], -1)


def uv_to_grid(uv: Tensor) -> Tensor:
    """OBJ uv ``[..., 2]`` → ``grid_sample`` coordinates ``[..., 2]`` (``align_corners=False``):
    :func:`uv_to_pixels` of a 1 × 1 map, scaled to [−1, 1]."""
    return torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], dim=-1)


def texel_grid(resolution: int, device: torch.device | None = None) -> Tensor:
    """UV coordinates of the texel centres of a resolution² map, ``[h, w, 2]`` (u, v) in (0, 1).

    Sampling at these points returns the map itself: the "No Sampling" ablation of SynShot's
    Table 1 (one primitive per texel, the count tied to the map resolution).
    """
    centres = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution
    rows, u = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([u, 1 - rows], dim=-1)  # row i holds v = 1 − (i + 0.5)/h


def sample_uv(maps: Tensor, uv: Tensor, padding_mode: str = "border") -> Tensor:
    """Bilinear samples of UV maps (SynShot's B(·, u, v)), border-clamped by default.

    Args:
        maps: Tensor  # [B, C, h, w] in the convention of this module (texel centres sample back
            the texel values exactly).
        uv: Tensor  # [N, 2] points, [h', w', 2] a grid, or [B, h', w', 2] a grid per map.
        padding_mode: ``grid_sample``'s, for points within half a texel of the square's edge.

    Returns:
        Tensor  # [B, C, N] or [B, C, h', w'], float32 (float64 for float64 maps) whatever the
        autocast or the maps' dtype.
    """
    if uv.shape[-1] != 2 or uv.ndim not in (2, 3, 4):
        raise ValueError(f"uv must be [N, 2], [h, w, 2] or [B, h, w, 2], got {list(uv.shape)}")
    # Never in half precision: bf16 keeps 8 mantissa bits, so at a 512² grid neighbouring sample
    # coordinates in [-1, 1] round to the same value (only 386 of 512 columns stay distinct) and
    # their Gaussians coincide. Half-precision maps are sampled in float32 instead.
    dtype = torch.promote_types(maps.dtype, torch.float32)
    points = uv.ndim == 2
    grid = uv[:, None] if points else uv
    with torch.autocast(device_type=maps.device.type, enabled=False):
        grid = uv_to_grid(grid).to(dtype)
        grid = grid.expand(maps.shape[0], *grid.shape) if grid.ndim == 3 else grid
        out = F.grid_sample(maps.to(dtype), grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out[..., 0] if points else out


def uv_rasterize(uv_coords: Tensor, uv_faces: Tensor, size: int | tuple[int, int]) -> UVRaster:
    """Rasterise the UV layout: which triangle, and where in it, each texel centre falls.

    Args:
        uv_coords: Tensor  # [Vt, 2] in [0, 1].
        uv_faces: LongTensor  # [F, 3]
        size: ``h = w = size`` or ``(h, w)``.

    Returns:
        :class:`UVRaster` (float64 barycentrics are computed, stored in ``uv_coords``' dtype).
    """
    h, w = (size, size) if isinstance(size, int) else size
    tri = uv_to_pixels(uv_coords.double(), h, w)[uv_faces]
    tp = triangle_pixels(tri, h, w)
    face = torch.full((h * w,), -1, dtype=torch.long, device=uv_coords.device)
    bary = uv_coords.new_zeros(h * w, 3)
    lin = tp.row * w + tp.col
    face[lin] = tp.face  # overlap-free layouts cover each centre once; on shared edges one side wins
    bary[lin] = tp.bary.to(bary.dtype)
    return UVRaster(face.view(h, w), bary.view(h, w, 3), (face >= 0).view(h, w))



def interpolate(raster: UVRaster, attrs: Tensor, faces: Tensor) -> Tensor:
    """Barycentric interpolation of per-vertex attributes into UV.

    Args:
        raster: the UV raster.
        attrs: Tensor  # [V, C] or [B, V, C]
        faces: LongTensor  # [F, 3] vertex indices (the mesh's, not the UV faces).

    Returns:
        Tensor  # [C, h, w] or [B, C, h, w], zero where no triangle.
    """
    batched = attrs.dim() == 3
    a = attrs if batched else attrs[None]
    f = faces.to(a.device)[raster.face.clamp_min(0)]  # [h, w, 3]
    vals = a[:, f]  # [B, h, w, 3, C]
    out = (vals * raster.bary[None, ..., None].to(a.dtype)).sum(-2)
    out = out * raster.valid[None, ..., None]
    out = rearrange(out, "b h w c -> b c h w")
    return out if batched else out[0]


def position_map(raster: UVRaster, vertices: Tensor, faces: Tensor) -> Tensor:
    """XYZ position map (SynShot's x_verts when ``vertices`` is the neutral identity).

    ``vertices [V, 3] | [B, V, 3] -> [3, h, w] | [B, 3, h, w]``.
    """
    return interpolate(raster, vertices, faces)


def expression_map(head, raster: UVRaster, expr: Tensor) -> Tensor:
    """Expression offset map x_exp = R_uv(γ·B_expr) (also 3DRealHead's canonical expression offsets).

    Args:
        head: a :class:`~avatar_lightning.head.HeadModel`.
        raster: its UV raster.
        expr: Tensor  # [E] or [B, E]

    Returns:
        Tensor  # [3, h, w] or [B, 3, h, w]
    """
    e = expr if expr.dim() == 2 else expr[None]
    out = interpolate(raster, head.expression_offsets(e), head.faces)
    return out if expr.dim() == 2 else out[0]


def region_masks(raster: UVRaster, faces: Tensor, regions: dict[str, Tensor], num_vertices: int
                 ) -> dict[str, Tensor]:
    """UV masks of vertex regions: the region's vertex indicator interpolated into UV, thresholded
    at 0.5 (as VHAP does, so neighbouring regions do not overlap).

    Returns:
        name -> Tensor  # [h, w] float in {0, 1}
    """
    out = {}
    for name, idx in regions.items():
        ind = torch.zeros(num_vertices, 1, dtype=raster.bary.dtype, device=raster.face.device)
        ind[idx.to(ind.device)] = 1.0
        out[name] = (interpolate(raster, ind, faces)[0] > 0.5).to(ind.dtype)
    return out


def part_masks(raster: UVRaster, head) -> dict[str, Tensor]:
    """The two densification parts of SynShot: ``hair`` (scalp) and ``face`` (every other covered
    texel: face, ears, neck, eyes, mouth). Disjoint, and together they cover the layout.

    Returns:
        {"face": [h, w], "hair": [h, w]} float in {0, 1}
    """
    hair = region_masks(raster, head.faces, {"hair": head.regions["scalp"]}, head.num_vertices)["hair"]
    hair = hair * raster.valid
    return {"face": raster.valid.to(hair.dtype) - hair, "hair": hair}


def tangent_frames(pos: Tensor, valid: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-texel frames [T/|T|, B/|B|, N/|N|] from image-space gradients of a position map
    (SynShot Eq. 2: T = ∂φ/∂u, B = ∂φ/∂v, N = T × B).

    Central differences inside the covered area, one-sided at its border (never across it).
    ``u`` grows with the column and ``v`` upwards, with decreasing row (the module's convention).

    Args:
        pos: Tensor  # [B, 3, h, w] position map.
        valid: BoolTensor  # [h, w] or [B, h, w] covered texels.

    Returns:
        Tensor  # [B, h, w, 3, 3] columns T, B, N (zero where undefined).
    """
    v = (valid if valid.dim() == 3 else valid[None]).expand(pos.shape[0], -1, -1).to(pos.dtype)[:, None]
    du = _one_sided_diff(pos, v, dim=-1)
    dv = -_one_sided_diff(pos, v, dim=-2)  # rows grow downwards, v grows upwards
    T = F.normalize(du, dim=1, eps=eps)
    B = F.normalize(dv, dim=1, eps=eps)
    N = F.normalize(torch.cross(du, dv, dim=1), dim=1, eps=eps)
    frames = torch.stack([T, B, N], -1)  # [B, 3, h, w, 3]
    return rearrange(frames, "b c h w k -> b h w c k") * v[:, 0, ..., None, None]


def _one_sided_diff(x: Tensor, m: Tensor, dim: int) -> Tensor:
    """Derivative along ``dim`` per texel: central where both neighbours are valid, else one-sided."""
    def shift(t: Tensor, s: int) -> Tensor:
        pad = [0, 0, 0, 0]
        idx = 0 if dim == -1 else 2
        pad[idx + (0 if s > 0 else 1)] = 1
        t = F.pad(t, pad)
        n = t.shape[dim]
        return t.narrow(dim, 0, n - 1) if s > 0 else t.narrow(dim, 1, n - 1)

    xp, xm = shift(x, -1), shift(x, 1)  # value at +1 and −1
    mp, mm = shift(m, -1) * m, shift(m, 1) * m
    central = (xp - xm) / 2
    fwd, bwd = xp - x, x - xm
    both = mp * mm
    return both * central + (1 - both) * (mp * fwd + (1 - mp) * mm * bwd)
