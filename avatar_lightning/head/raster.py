"""Exact coverage of triangles over a pixel grid (pixel centres at j + 0.5, i + 0.5), in torch.

Shared by UV-space rasterisation (where the "image" is the UV map) and by the mesh depth buffer
used for visibility when back-projecting images onto UV. Enumerates (triangle, pixel) pairs inside
each triangle's bounding box, in chunks, and keeps the pairs whose centre lies inside (closed
triangle): no approximation, so coverage can be tested against exact areas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TrianglePixels:
    """Pixels whose centre lies inside a triangle.

    Attributes:
        face: LongTensor  # [P] triangle index.
        row: LongTensor  # [P] pixel row i.
        col: LongTensor  # [P] pixel column j.
        bary: Tensor  # [P, 3] barycentric coordinates of the pixel centre (sum to 1).
    """

    face: Tensor
    row: Tensor
    col: Tensor
    bary: Tensor


def triangle_pixels(tri: Tensor, height: int, width: int, chunk: int = 4096) -> TrianglePixels:
    """Enumerate (triangle, pixel) pairs with the pixel centre inside the triangle.

    Args:
        tri: Tensor  # [F, 3, 2] triangle corners in pixel units (x right, y down).
        height, width: grid size.
        chunk: triangles per chunk (bounds memory).

    Returns:
        :class:`TrianglePixels`; degenerate (zero-area) triangles cover nothing.
    """
    out: list[tuple[Tensor, ...]] = []
    for start in range(0, tri.shape[0], chunk):
        t = tri[start:start + chunk].detach()
        lo = (t.amin(1) - 0.5).ceil().clamp_min(0).long()  # first centre ≥ min
        hi = (t.amax(1) - 0.5).floor().long()
        hi[:, 0].clamp_(max=width - 1)
        hi[:, 1].clamp_(max=height - 1)
        nx, ny = (hi[:, 0] - lo[:, 0] + 1).clamp_min(0), (hi[:, 1] - lo[:, 1] + 1).clamp_min(0)
        counts = nx * ny
        face = torch.repeat_interleave(torch.arange(t.shape[0], device=t.device), counts)
        if face.numel() == 0:
            continue
        first = torch.cumsum(counts, 0) - counts
        k = torch.arange(face.numel(), device=t.device) - first[face]
        col = lo[face, 0] + k % nx[face]
        row = lo[face, 1] + torch.div(k, nx[face], rounding_mode="floor")
        p = torch.stack([col, row], -1).to(t.dtype) + 0.5
        bary = barycentric(p, t[face])
        keep = (bary >= -1e-9).all(-1) & _area(t[face]).abs().gt(1e-12)
        out.append((face[keep] + start, row[keep], col[keep], bary[keep]))
    if not out:
        empty = torch.zeros(0, dtype=torch.long, device=tri.device)
        return TrianglePixels(empty, empty, empty, tri.new_zeros(0, 3))
    f, r, c, b = (torch.cat(x) for x in zip(*out, strict=True))
    return TrianglePixels(f, r, c, b)


def _area(t: Tensor) -> Tensor:
    e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    return 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])


def barycentric(p: Tensor, t: Tensor) -> Tensor:
    """Barycentric coordinates of 2D points in triangles.

    Args:
        p: Tensor  # [P, 2]
        t: Tensor  # [P, 3, 2]

    Returns:
        Tensor  # [P, 3]
    """
    a, b, c = t.unbind(1)
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = torch.where(den.abs() < 1e-20, torch.full_like(den, 1e-20), den)
    w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    return torch.stack([1 - w1 - w2, w1, w2], -1)


@dataclass
class DepthBuffer:
    """Nearest surface per pixel of a mesh seen by a pinhole camera.

    Attributes:
        depth: Tensor  # [H, W] camera z of the nearest surface (inf where empty).
        face: LongTensor  # [H, W] its triangle (−1 where empty).
        bary: Tensor  # [H, W, 3] perspective-correct barycentrics of the pixel centre in it.
    """

    depth: Tensor
    face: Tensor
    bary: Tensor


def mesh_depth(verts_cam: Tensor, faces: Tensor, K: Tensor, height: int, width: int, near: float = 0.01
               ) -> DepthBuffer:
    """Z-buffer of a triangle mesh (perspective-correct depth), no gradients.

    Args:
        verts_cam: Tensor  # [V, 3] vertices in OpenCV camera coordinates.
        faces: LongTensor  # [F, 3]
        K: Tensor  # [3, 3] intrinsics in pixels.
        height, width: image size.
        near: triangles with a vertex closer than this are dropped.
    """
    v = verts_cam.detach()
    z = v[:, 2]
    pix = (v @ K.detach().T)[:, :2] / z.clamp_min(1e-9)[:, None]
    ok = (z[faces] > near).all(1)
    fidx = torch.nonzero(ok).squeeze(1)
    tp = triangle_pixels(pix[faces[fidx]], height, width)
    inv_z = (tp.bary / z[faces[fidx[tp.face]]]).sum(-1)
    depth_flat = torch.full((height * width,), float("inf"), dtype=v.dtype, device=v.device)
    lin = tp.row * width + tp.col
    pz = 1 / inv_z
    depth_flat.scatter_reduce_(0, lin, pz, reduce="amin")
    winner = pz <= depth_flat[lin]
    face_flat = torch.full((height * width,), -1, dtype=torch.long, device=v.device)
    face_flat[lin[winner]] = fidx[tp.face[winner]]
    # screen-space barycentrics → perspective-correct ones: weight by 1/z and renormalise
    persp = tp.bary / z[faces[fidx[tp.face]]] * pz[:, None]
    bary_flat = v.new_zeros(height * width, 3)
    bary_flat[lin[winner]] = persp[winner]
    return DepthBuffer(depth_flat.view(height, width), face_flat.view(height, width),
                       bary_flat.view(height, width, 3))
