"""Quaternion utilities. Every quaternion in this project is **wxyz** (scalar first).

Conventions: a unit quaternion ``q = (w, x, y, z)`` maps to the rotation matrix ``R`` with
``R @ v`` = ``q v q*``, the same as Inria 3DGS (``build_rotation``) and gsplat (``quat_to_rotmat``).
Quaternions need not be normalised on input; every function normalises where it matters.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalize_quat(quats: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale quaternions to unit length.

    Args:
        quats: Tensor  # [..., 4] wxyz, any non-zero length.
        eps: floor on the norm, so a zero quaternion gives zeros instead of NaN.

    Returns:
        Tensor  # [..., 4] unit quaternions.
    """
    return quats / quats.norm(dim=-1, keepdim=True).clamp_min(eps)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices of (not necessarily unit) wxyz quaternions.

    Args:
        quats: Tensor  # [..., 4] wxyz.

    Returns:
        Tensor  # [..., 3, 3]
    """
    w, x, y, z = normalize_quat(quats).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def rotmat_to_quat(rotmats: Tensor) -> Tensor:
    """Unit wxyz quaternions of rotation matrices, with ``w >= 0``.

    Uses the numerically stable branch (Shepperd's method): the largest of ``4w², 4x², 4y², 4z²``
    is computed from the trace and the others from off-diagonal sums, so it never divides by a
    small number.

    Args:
        rotmats: Tensor  # [..., 3, 3] proper rotations.

    Returns:
        Tensor  # [..., 4] wxyz, unit, w >= 0.
    """
    m = rotmats
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # Four candidate quaternions, each scaled by 4 * (its dominant component).
    cands = torch.stack([
        torch.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2],
                     m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22,
                     m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1],
                     1 - m00 + m11 - m22, m[..., 2, 1] + m[..., 1, 2]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                     m[..., 2, 1] + m[..., 1, 2], 1 - m00 - m11 + m22], -1),
    ], dim=-2)  # [..., 4 candidates, 4]
    best = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                        1 - m00 - m11 + m22], -1).argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = normalize_quat(q)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(q1: Tensor, q2: Tensor) -> Tensor:
    """Hamilton product ``q1 ⊗ q2`` (apply ``q2`` first, then ``q1``), wxyz.

    Args:
        q1: Tensor  # [..., 4]
        q2: Tensor  # [..., 4] broadcastable with ``q1``.

    Returns:
        Tensor  # [..., 4] (unnormalised; the product of unit quaternions is unit).
    """
    w1, x1, y1, z1 = q1.unbind(-1)
    w2, x2, y2, z2 = q2.unbind(-1)
    return torch.stack([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ], dim=-1)


def quat_xyzw_to_wxyz(quats: Tensor) -> Tensor:
    """Reorder scalar-last quaternions (roma, scipy) to this project's wxyz.  ``[..., 4]``"""
    return quats[..., [3, 0, 1, 2]]


def quat_wxyz_to_xyzw(quats: Tensor) -> Tensor:
    """Reorder wxyz quaternions to scalar-last (roma, scipy).  ``[..., 4]``"""
    return quats[..., [1, 2, 3, 0]]
