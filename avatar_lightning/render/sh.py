"""Real spherical harmonics as used by 3D Gaussian splatting (degrees 0–3).

The basis, its signs and its constants are exactly those of Inria's ``computeColorFromSH`` and
gsplat's ``spherical_harmonics``, so SH coefficients move between them (and the PLY format)
unchanged. Colour of a Gaussian = ``max(eval_sh(deg, sh, dir) + 0.5, 0)``; the +0.5 offset is why
``rgb_to_sh`` subtracts it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per colour channel for ``degree`` (1, 4, 9, 16)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    return (degree + 1) ** 2


def sh_degree_from_bases(k: int) -> int:
    """Largest degree whose ``(degree + 1)²`` coefficients fit in ``k`` (``k >= 1``)."""
    if k < 1:
        raise ValueError(f"need at least one SH coefficient, got K={k}")
    return min(3, math.isqrt(k) - 1)


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """DC coefficient that renders as ``rgb`` from every direction.  ``[..., 3] -> [..., 3]``"""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh_dc: Tensor) -> Tensor:
    """Colour of a DC-only SH coefficient (inverse of :func:`rgb_to_sh`).  ``[..., 3] -> [..., 3]``"""
    return sh_dc * SH_C0 + 0.5


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """The 3DGS real SH basis evaluated at unit directions.

    Args:
        degree: 0..3.
        dirs: Tensor  # [..., 3] unit vectors.

    Returns:
        Tensor  # [..., (degree+1)²]
    """
    num_sh_bases(degree)
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy),
                SH_C2[3] * x * z, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate SH colours (without the +0.5 offset) in the given directions.

    Args:
        degree: SH degree to use, 0..3; only the first ``(degree+1)²`` coefficients are read.
        sh: Tensor  # [..., K, 3] with K >= (degree+1)².
        dirs: Tensor  # [..., 3] viewing directions (Gaussian minus camera); normalised here.

    Returns:
        Tensor  # [..., 3]
    """
    k = num_sh_bases(degree)
    if sh.shape[-2] < k:
        raise ValueError(f"eval_sh: degree {degree} needs K >= {k} coefficients, got sh {tuple(sh.shape)}")
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(degree, dirs)  # [..., k]
    return (basis[..., None] * sh[..., :k, :]).sum(-2)
