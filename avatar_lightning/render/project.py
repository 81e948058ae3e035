"""EWA projection of 3D Gaussians into every camera (plain torch; autograd gives its backward).

Follows gsplat's ``_fully_fused_projection`` / ``_persp_proj`` ("classic" mode) exactly:
the Jacobian is taken at the camera-space mean with x/z and y/z clamped to
``[-(cx/fx + 0.3·W/(2fx)), (W−cx)/fx + 0.3·W/(2fx)]`` (and likewise in y), while the 2D mean
itself uses the unclamped point; the 2D covariance is dilated by 0.3·I before inversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .rotations import quat_to_rotmat
from .sh import sh_basis
from .types import Cameras, Gaussians

DILATION = 0.3  # pixels², added to every 2D covariance (Inria and gsplat "classic")
CLAMP_MARGIN = 0.3  # fraction of the half field of view the Jacobian may look outside the image


@dataclass
class Projected:
    """Per-(camera, Gaussian) 2D quantities; ``V`` = all (avatar, camera) pairs flattened.

    Attributes:
        means2d: Tensor  # [V, N, 2] pixel coordinates of the projected centres.
        conics: Tensor  # [V, N, 3] (a, b, c) of the inverse dilated 2D covariance [[a, b], [b, c]].
        depths: Tensor  # [V, N] camera-space z.
        colors: Tensor  # [V, N, 3] max(SH(dir) + 0.5, 0).
        opacities: Tensor  # [V, N] the Gaussian's opacity, 0 where culled (near/far/degenerate).
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    colors: Tensor
    opacities: Tensor


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance ``R S Sᵀ Rᵀ``.  quats ``[..., 4]`` wxyz, scales ``[..., 3]`` → ``[..., 3, 3]``"""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def project(gaussians: Gaussians, cameras: Cameras, sh_degree: int | None = None) -> Projected:
    """Project Gaussians ``[B, N]`` into cameras ``[B, C]`` (both already batched).

    Args:
        gaussians: batched set, fields ``[B, N, ...]``.
        cameras: batched cameras, ``K [B, C, 3, 3]``, ``world_to_cam [B, C, 4, 4]``.
        sh_degree: degree to evaluate; defaults to the one ``gaussians.sh`` holds.

    Returns:
        :class:`Projected` with ``V = B·C``.
    """
    deg = gaussians.sh_degree if sh_degree is None else sh_degree
    rot, trans = cameras.world_to_cam[..., :3, :3], cameras.world_to_cam[..., :3, 3]  # [B,C,3,3], [B,C,3]
    means_c = torch.einsum("bcij,bnj->bcni", rot, gaussians.means) + trans[:, :, None]  # [B,C,N,3]
    cov_w = covariance_3d(gaussians.quats, gaussians.scales)  # [B,N,3,3]
    cov_c = torch.einsum("bcij,bnjk,bclk->bcnil", rot, cov_w, rot)  # R Σ Rᵀ  [B,C,N,3,3]

    tz = means_c[..., 2]
    in_range = (tz >= cameras.near) & (tz <= cameras.far)
    # Culled Gaussians (e.g. behind the camera) must not produce inf/NaN, not even in the
    # discarded branch of a `where`, or their NaN gradients would poison the valid ones.
    tz_safe = torch.where(in_range, tz, torch.ones_like(tz))
    K = cameras.K[:, :, None]  # [B,C,1,3,3]
    fx, fy, cx, cy = K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]
    w, h = cameras.width, cameras.height
    lim_x_pos = (w - cx) / fx + CLAMP_MARGIN * 0.5 * w / fx
    lim_x_neg = cx / fx + CLAMP_MARGIN * 0.5 * w / fx
    lim_y_pos = (h - cy) / fy + CLAMP_MARGIN * 0.5 * h / fy
    lim_y_neg = cy / fy + CLAMP_MARGIN * 0.5 * h / fy
    tx = tz_safe * torch.maximum(torch.minimum(means_c[..., 0] / tz_safe, lim_x_pos), -lim_x_neg)
    ty = tz_safe * torch.maximum(torch.minimum(means_c[..., 1] / tz_safe, lim_y_pos), -lim_y_neg)
    zeros = torch.zeros_like(tz)
    jac = torch.stack([fx / tz_safe, zeros, -fx * tx / tz_safe**2,
                       zeros, fy / tz_safe, -fy * ty / tz_safe**2], -1).unflatten(-1, (2, 3))  # [B,C,N,2,3]
    cov2d = jac @ cov_c @ jac.transpose(-1, -2)  # [B,C,N,2,2]
    a = cov2d[..., 0, 0] + DILATION
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + DILATION
    det = a * c - b * b
    valid = in_range & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    means2d = torch.stack([fx * means_c[..., 0] / tz_safe + cx, fy * means_c[..., 1] / tz_safe + cy], -1)

    dirs = torch.nn.functional.normalize(gaussians.means[:, None] - cameras.campos[:, :, None], dim=-1)
    basis = sh_basis(deg, dirs)  # [B,C,N,k]
    # one [C, k] @ [k, 3] product per Gaussian: never materialises the SH per camera
    sh = gaussians.sh[..., : basis.shape[-1], :]  # [B,N,k,3]
    colors = torch.matmul(basis.permute(0, 2, 1, 3), sh).permute(0, 2, 1, 3)  # [B,C,N,3]
    colors = (colors + 0.5).clamp_min(0)
    opac = torch.where(valid, gaussians.opacities[:, None].expand_as(tz), zeros)

    def flat(t: Tensor) -> Tensor:
        return t.flatten(0, 1)

    return Projected(means2d=flat(means2d), conics=flat(conics), depths=flat(tz), colors=flat(colors),
                     opacities=flat(opac))
