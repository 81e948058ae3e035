"""Bind UV sample points to the head mesh: which triangle each lies in, and per-part sample grids.

A Gaussian sampled at UV point (u, v) belongs to the mesh triangle whose UV triangle contains
(u, v); its barycentric coordinates there tie it to that triangle's vertices, and through them to
their skinning transforms (:func:`avatar_lightning.lit.render_step.pose_gaussians`). The binding
depends only on the UV layout, so it is computed once per model, not per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avatar_lightning.models.densify import PartGrid


@dataclass
class UVLocation:
    """Where UV points fall on the mesh.

    Attributes:
        face: [N] triangle index, −1 for points outside every UV triangle.
        bary: [N, 3] barycentric coordinates in that triangle (zeros outside).
    """

    face: Tensor
    bary: Tensor


def _barycentric(p: Tensor, tri: Tensor) -> Tensor:
    """Barycentric coordinates of points p [..., 2] in triangles tri [..., 3, 2] → [..., 3] (nan if degenerate)."""
    a, e1, e2 = tri[..., 0, :], tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :]
    d = p - a
    det = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
    b1 = (d[..., 0] * e2[..., 1] - d[..., 1] * e2[..., 0]) / det
    b2 = (e1[..., 0] * d[..., 1] - e1[..., 1] * d[..., 0]) / det
    return torch.stack([1 - b1 - b2, b1, b2], dim=-1)


def grid_points(lo: Tensor, hi: Tensor, samples: int) -> Tensor:
    """Cell centres of a samples × samples grid over the UV box [lo, hi], [S, S, 2] (u, v).

    Columns increase u and rows decrease v, the row layout of every UV map here.
    """
    t = (torch.arange(samples, dtype=lo.dtype, device=lo.device) + 0.5) / samples
    vv, uu = torch.meshgrid(hi[1] - t * (hi[1] - lo[1]), lo[0] + t * (hi[0] - lo[0]), indexing="ij")
    return torch.stack([uu, vv], dim=-1)


@torch.no_grad()
def locate_grid(lo: Tensor, hi: Tensor, samples: int, uv_coords: Tensor, uv_faces: Tensor, eps: float = 1e-6
                ) -> UVLocation:
    """Locate the points of :func:`grid_points` on the mesh by rasterising UV triangles onto the grid.

    Each triangle is tested only against the grid points inside its bounding box, so the cost is
    O(F · k²) for triangles spanning k cells, not O(F · S²).

    Args:
        lo, hi: [2] UV box corners.
        samples: S.
        uv_coords: [Vt, 2] UV vertices.
        uv_faces: [F, 3] indices into ``uv_coords``.
        eps: barycentric tolerance, so points on shared edges are found.

    Returns:
        :class:`UVLocation` over the S² points in row-major order; where UV triangles overlap,
        the lowest triangle index wins.
    """
    tri = uv_coords[uv_faces].to(lo)  # [F, 3, 2]
    size = (hi - lo).clamp_min(1e-12)
    col = (tri[..., 0] - lo[0]) / size[0] * samples - 0.5  # continuous grid coordinates
    row = (hi[1] - tri[..., 1]) / size[1] * samples - 0.5
    c0, c1 = col.min(1).values.ceil().long(), col.max(1).values.floor().long()
    r0, r1 = row.min(1).values.ceil().long(), row.max(1).values.floor().long()
    k = int(max((c1 - c0).max(), (r1 - r0).max(), 0)) + 1
    offs = torch.arange(k, device=lo.device)
    ci = (c0[:, None, None] + offs[None, None, :]).expand(-1, k, k)  # [F, k, k]
    ri = (r0[:, None, None] + offs[None, :, None]).expand(-1, k, k)
    ok = (ci <= c1[:, None, None]) & (ri <= r1[:, None, None]) & (ci >= 0) & (ri >= 0)
    ok &= (ci < samples) & (ri < samples)
    points = grid_points(lo, hi, samples)
    pid = (ri.clamp(0, samples - 1) * samples + ci.clamp(0, samples - 1))
    bary = _barycentric(points.view(-1, 2)[pid], tri[:, None, None])
    ok &= (bary >= -eps).all(-1)
    fid = torch.arange(tri.shape[0], device=lo.device)[:, None, None].expand_as(pid)
    best = torch.full((samples * samples,), tri.shape[0], dtype=torch.long, device=lo.device)
    best.scatter_reduce_(0, pid[ok], fid[ok], reduce="amin")
    found = best < tri.shape[0]
    face = torch.where(found, best, -1)
    b = _barycentric(points.view(-1, 2), tri[best.clamp_max(tri.shape[0] - 1)]).clamp(0, 1)
    b = torch.where(found[:, None], b / b.sum(-1, keepdim=True).clamp_min(1e-12), 0.0)
    return UVLocation(face=face, bary=b)


def part_faces(regions: dict[str, Tensor], faces: Tensor, parts: dict[str, list[str] | None]) -> dict[str, Tensor]:
    """Assign every triangle to one part by its vertices' regions.

    Args:
        regions: vertex-index sets by name (``HeadModel.regions``).
        faces: [F, 3] mesh triangles.
        parts: part name → region names whose triangles it takes (a triangle belongs to a region
            when all three vertices do), or None for "every triangle no other part took"; at most
            one part may be None.

    Returns:
        part name → [F] bool.
    """
    n_vertices = int(faces.max()) + 1
    taken = torch.zeros(faces.shape[0], dtype=torch.bool)
    out: dict[str, Tensor] = {}
    for name, names in parts.items():
        if names is None:
            continue
        members = torch.zeros(n_vertices, dtype=torch.bool)
        for region in names:
            if region not in regions:
                raise KeyError(f"part {name!r}: the head model has no region {region!r}; it has {sorted(regions)}")
            members[regions[region]] = True
        out[name] = members[faces.cpu()].all(dim=1) & ~taken
        taken |= out[name]
    rest = [name for name, names in parts.items() if names is None]
    if len(rest) > 1:
        raise ValueError(f"at most one part may take the remaining triangles, got {rest}")
    if rest:
        out[rest[0]] = ~taken
    return {name: out[name] for name in parts}


@dataclass
class PartBinding:
    """A part's sample grid and the mesh binding of its valid points.

    Attributes:
        grid: the UV sample grid and its validity mask [h, w].
        face: [N_r] triangle of each valid point (row-major over the grid).
        bary: [N_r, 3] its barycentric coordinates.
    """

    grid: PartGrid
    face: Tensor
    bary: Tensor


def bind_part(face_mask: Tensor, uv_coords: Tensor, uv_faces: Tensor, samples: int, full_square: bool = False
              ) -> PartBinding:
    """A samples × samples grid over the UV bounding box of a part's triangles, bound to the mesh.

    Args:
        face_mask: [F] bool, the part's triangles.
        uv_coords: [Vt, 2].
        uv_faces: [F, 3].
        samples: grid side (the part's primitive density; N_r ≤ samples²).
        full_square: grid over all of [0, 1]² instead of the bounding box: with samples = H the
            points are the texel centres of an H × H map (the "No Sampling" ablation).
    """
    if not face_mask.any():
        raise ValueError("bind_part: the part has no triangles")
    corners = uv_coords[uv_faces[face_mask.to(uv_faces.device)].reshape(-1)]
    lo, hi = corners.min(dim=0).values, corners.max(dim=0).values
    if full_square:
        lo, hi = torch.zeros_like(lo), torch.ones_like(hi)
    uv = grid_points(lo, hi, samples)
    loc = locate_grid(lo, hi, samples, uv_coords, uv_faces)
    hit = loc.face >= 0
    valid = hit & face_mask.to(loc.face.device)[loc.face.clamp_min(0)]
    return PartBinding(grid=PartGrid(uv=uv, valid=valid.view(samples, samples)),
                       face=loc.face[valid], bary=loc.bary[valid])
