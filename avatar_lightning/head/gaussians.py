"""Posing canonical Gaussians with the head: bind them to the surface, then LBS + global pose.

Canonical Gaussians live in the 3DMM space (shape + expression, no pose: SynShot §3.2 factors
out global rotation, translation and LBS). Each is bound to a triangle by barycentrics (the
"binding" of GaussianAvatars); its transform is the barycentric blend of the vertex LBS
transforms, and it takes the barycentric blend of the vertices' pose correctives before it, as the
mesh does (a Gaussian at a vertex lands exactly on the posed vertex). Positions take the full
affine transform; rotations take its closest rotation (polar factor), so a rigid motion of the
head moves every Gaussian — centre and covariance — rigidly, exactly as a camera moved the
inverse way would see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avatar_lightning.render import Gaussians, quat_multiply, rotmat_to_quat
from avatar_lightning.render.sh import sh_basis, sh_degree_from_bases


@dataclass
class MeshBinding:
    """Where Gaussians (or any points) sit on the mesh: the one link between mesh and splats.

    Attributes:
        face: LongTensor  # [N] triangle index.
        bary: Tensor  # [N, 3] barycentric coordinates in that triangle (non-negative, sum to 1).
    """

    face: Tensor
    bary: Tensor

    @staticmethod
    def cat(items: list[MeshBinding]) -> MeshBinding:
        """Concatenate along N (in the order ``Gaussians.cat`` concatenates their Gaussians)."""
        return MeshBinding(face=torch.cat([b.face for b in items]), bary=torch.cat([b.bary for b in items]))


def surface_points(vertices: Tensor, faces: Tensor, binding: MeshBinding) -> Tensor:
    """Bound points on a mesh: ``vertices [B, V, 3] -> [B, N, 3]``."""
    tri = vertices[:, faces[binding.face]]  # [B, N, 3, 3]
    return (tri * binding.bary[None, :, :, None].to(vertices.dtype)).sum(-2)


def point_transforms(vertex_transforms: Tensor, faces: Tensor, binding: MeshBinding) -> Tensor:
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


def pose_gaussians(canonical: Gaussians, transforms: Tensor, rest_offsets: Tensor | None = None) -> Gaussians:
    """Move canonical Gaussians to world space with per-Gaussian transforms.

    Args:
        canonical: batched :class:`~avatar_lightning.render.Gaussians` (``means [B, N, 3]``...).
        transforms: Tensor  # [B, N, 4, 4] from :func:`point_transforms` (translation included).
        rest_offsets: Tensor  # [B, N, 3] added to the means before the transform, as the mesh adds
            its pose correctives (:func:`surface_points` of ``HeadOutput.pose_offsets``); None: zero.

    Returns:
        Gaussians with transformed ``means`` and rotated ``quats`` (scales, opacities, SH kept).
    """
    if not canonical.batched or transforms.shape[:2] != canonical.means.shape[:2]:
        raise ValueError(f"pose_gaussians: need batched Gaussians [B, N, ...] and transforms [B, N, 4, 4]; got "
                         f"means {list(canonical.means.shape)}, transforms {list(transforms.shape)}")
    if rest_offsets is not None and rest_offsets.shape != canonical.means.shape:
        raise ValueError(f"pose_gaussians: rest_offsets must be {list(canonical.means.shape)} like the means, "
                         f"got {list(rest_offsets.shape)}")
    A = transforms[..., :3, :3]
    rest = canonical.means if rest_offsets is None else canonical.means + rest_offsets
    means = (A @ rest[..., None])[..., 0] + transforms[..., :3, 3]
    R = closest_rotation(A)
    quats = quat_multiply(rotmat_to_quat(R), canonical.quats)
    return Gaussians(means=means, quats=quats, scales=canonical.scales, opacities=canonical.opacities,
                     sh=rotate_sh(canonical.sh, R))


def _probe_dirs(n: int) -> Tensor:
    """``n`` fixed, well-spread unit directions (a Fibonacci sphere) to fit one SH band."""
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * k / n
    phi = k * torch.pi * (3 - 5**0.5) + 0.3
    r = (1 - z * z).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1)


def rotate_sh(sh: Tensor, R: Tensor) -> Tensor:
    """Rotate view-dependent colour with the Gaussians: c' such that f'(d) = f(Rᵀd).

    Rotations keep SH bands separate, so each band l is refitted exactly (least squares, over
    more probe directions than the band's 2l+1 coefficients): A c' = B c with A = Y_l(D),
    B = Y_l(Rᵀ D). Without this, a posed avatar's
    view-dependent colour would stay fixed in the world while its geometry turns.

    Args:
        sh: Tensor  # [..., K, 3]
        R: Tensor  # [..., 3, 3] rotations (broadcast with ``sh``'s leading axes).

    Returns:
        Tensor  # [..., K, 3]
    """
    degree = sh_degree_from_bases(sh.shape[-2])
    if degree == 0:
        return sh
    out = [sh[..., :1, :]]
    for band in range(1, degree + 1):
        lo, hi = band * band, (band + 1) ** 2
        D = _probe_dirs(4 * (hi - lo)).to(sh)
        A_pinv = torch.linalg.pinv(sh_basis(band, D)[:, lo:hi])  # [m, P]
        rotated = torch.einsum("...ji,kj->...ki", R, D)  # Rᵀ d for every probe
        B = sh_basis(band, rotated)[..., lo:hi]  # [..., P, m]
        M = A_pinv @ B  # [..., m, m]
        out.append(M @ sh[..., lo:hi, :])
    return torch.cat(out + [sh[..., (degree + 1) ** 2:, :]], -2)
