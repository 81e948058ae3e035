"""UV-space toolkit: rasterise the mesh into UV once, then build maps from it.

UV convention (the FLAME ``.obj``'s): ``uv`` in [0, 1], u → column, v up, so texel (i, j) has
centre ``u = (j + 0.5)/w``, ``v = 1 − (i + 0.5)/h``; for ``grid_sample`` x = 2u − 1, y = 1 − 2v.
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


UVRasterizer = uv_rasterize  # the name used in the design notes


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
    ``u`` grows with the column and ``v`` grows upwards (decreasing row).

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


def sample_maps(maps: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples of maps at UV points (SynShot's B(·, u, v)).

    Args:
        maps: Tensor  # [B, C, h, w]
        uv: Tensor  # [N, 2] or [B, N, 2] OBJ-convention uv.

    Returns:
        Tensor  # [B, N, C]
    """
    u = uv if uv.dim() == 3 else uv[None].expand(maps.shape[0], -1, -1)
    grid = torch.stack([2 * u[..., 0] - 1, 1 - 2 * u[..., 1]], -1)[:, :, None]  # [B, N, 1, 2]
    out = F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return rearrange(out[..., 0], "b c n -> b n c")


def _halton(n: int, base: int, start: int) -> Tensor:
    i = torch.arange(start + 1, start + n + 1, dtype=torch.float64)
    f, r = torch.ones_like(i), torch.zeros_like(i)
    while bool((i > 0).any()):
        f = f / base
        r = r + f * (i % base)
        i = torch.div(i, base, rounding_mode="floor")
    return r


def sample_part_uv(mask: Tensor, num: int, max_rounds: int = 64) -> Tensor:
    """``num`` deterministic, evenly spread uv points inside a part mask (a Halton sequence,
    keeping the points whose nearest texel is inside). The count is a config number,
    independent of the map resolution — the densification of SynShot.

    Args:
        mask: Tensor  # [h, w] > 0.5 inside.
        num: number of points.

    Returns:
        Tensor  # [num, 2] float32 uv.
    """
    h, w = mask.shape
    inside = mask.detach().cpu() > 0.5
    if not bool(inside.any()):
        raise ValueError("sample_part_uv: the part mask is empty")
    frac = float(inside.float().mean())
    got, start = [], 0
    for _ in range(max_rounds):
        n = int(1.3 * (num - sum(len(g) for g in got)) / frac) + 16
        uv = torch.stack([_halton(n, 2, start), _halton(n, 3, start)], -1)
        start += n
        col = (uv[:, 0] * w).long().clamp(0, w - 1)
        row = ((1 - uv[:, 1]) * h).long().clamp(0, h - 1)
        got.append(uv[inside[row, col]])
        if sum(len(g) for g in got) >= num:
            return torch.cat(got)[:num].float().to(mask.device)
    raise RuntimeError(f"sample_part_uv: could not place {num} points in a mask covering {frac:.2%}")
