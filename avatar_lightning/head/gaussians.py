"""Posing canonical Gaussians with the head: bind them to the surface, then LBS + global pose.

Canonical Gaussians live in the 3DMM space (shape + expression, no pose: SynShot §3.2 factors
out global rotation, translation and LBS). Each is bound to a triangle by barycentrics (the
"binding" of GaussianAvatars); its transform is the barycentric blend of the vertex LBS
transforms. Positions take the full affine transform; rotations take its closest rotation
(polar factor), so a rigid motion of the head moves every Gaussian — centre and covariance —
rigidly, exactly as a camera moved the inverse way would see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avatar_lightning.head.raster import barycentric
from avatar_lightning.head.uv import UVRaster, uv_to_pixels
from avatar_lightning.render import Gaussians, quat_multiply, rotmat_to_quat


@dataclass
class SurfaceBinding:
    """Where points sit on the mesh.

    Attributes:
        face: LongTensor  # [N] triangle index.
        bary: Tensor  # [N, 3] barycentric coordinates (non-negative, sum to 1).
    """

    face: Tensor
    bary: Tensor


def bind_uv_points(raster: UVRaster, uv_coords: Tensor, uv_faces: Tensor, uv: Tensor) -> SurfaceBinding:
    """Triangle and barycentrics of UV points (e.g. from :func:`~avatar_lightning.head.uv.sample_part_uv`).

    The triangle is the one covering the nearest texel centre; barycentrics are exact in that UV
    triangle, clamped onto it (a point within half a texel of an edge may snap to it).

    Args:
        raster: UV raster of the layout (finer = fewer snaps).
        uv_coords: Tensor  # [Vt, 2]
        uv_faces: LongTensor  # [F, 3]
        uv: Tensor  # [N, 2]
    """
    h, w = raster.size
    pix = uv_to_pixels(uv.double(), h, w)
    col = pix[:, 0].floor().long().clamp(0, w - 1)
    row = pix[:, 1].floor().long().clamp(0, h - 1)
    face = raster.face[row, col]
    if bool((face < 0).any()):
        raise ValueError(f"bind_uv_points: {(face < 0).sum().item()} uv points fall outside the UV layout")
    tri = uv_to_pixels(uv_coords.double(), h, w)[uv_faces[face]]
    bary = barycentric(pix, tri).clamp_min(0)
    bary = bary / bary.sum(-1, keepdim=True)
    return SurfaceBinding(face, bary.to(uv.dtype))


def surface_points(vertices: Tensor, faces: Tensor, binding: SurfaceBinding) -> Tensor:
    """Bound points on a mesh: ``vertices [B, V, 3] -> [B, N, 3]``."""
    tri = vertices[:, faces[binding.face]]  # [B, N, 3, 3]
    return (tri * binding.bary[None, :, :, None].to(vertices.dtype)).sum(-2)


def point_transforms(vertex_transforms: Tensor, faces: Tensor, binding: SurfaceBinding) -> Tensor:
    """LBS transforms at bound points: ``[B, V, 4, 4] -> [B, N, 4, 4]`` (barycentric blend)."""
    tri = vertex_transforms[:, faces[binding.face]]  # [B, N, 3, 4, 4]
    return (tri * binding.bary[None, :, :, None, None].to(tri.dtype)).sum(2)


def closest_rotation(m: Tensor, iters: int = 5) -> Tensor:
    """Polar factor of near-rotation matrices by Newton's iteration R ← (R + R⁻ᵀ)/2.

    Unlike an SVD its gradient stays finite when singular values coincide (they all do for a
    rotation); for an exact rotation it returns the input. ``[..., 3, 3] -> [..., 3, 3]``.
    """
    r = m
    for _ in range(iters):
        r = 0.5 * (r + torch.linalg.inv(r).transpose(-1, -2))
    return r


def pose_gaussians(canonical: Gaussians, transforms: Tensor) -> Gaussians:
    """Move canonical Gaussians to world space with per-Gaussian transforms.

    Args:
        canonical: batched :class:`~avatar_lightning.render.Gaussians` (``means [B, N, 3]``...).
        transforms: Tensor  # [B, N, 4, 4] from :func:`point_transforms` (translation included).

    Returns:
        Gaussians with transformed ``means`` and rotated ``quats`` (scales, opacities, SH kept).
    """
    if not canonical.batched or transforms.shape[:2] != canonical.means.shape[:2]:
        raise ValueError(f"pose_gaussians: need batched Gaussians [B, N, ...] and transforms [B, N, 4, 4]; got "
                         f"means {list(canonical.means.shape)}, transforms {list(transforms.shape)}")
    A = transforms[..., :3, :3]
    means = (A @ canonical.means[..., None])[..., 0] + transforms[..., :3, 3]
    quats = quat_multiply(rotmat_to_quat(closest_rotation(A)), canonical.quats)
    return Gaussians(means=means, quats=quats, scales=canonical.scales, opacities=canonical.opacities,
                     sh=canonical.sh)
