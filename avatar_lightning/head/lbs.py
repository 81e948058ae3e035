"""Linear blend skinning with FLAME's kinematic tree (the maths of FLAME/SMPL ``lbs``).

Dimension letters: B batch, V vertices, J joints (5 for FLAME: global, neck, jaw, left eye,
right eye), P pose-corrective basis size (= 9·(J−1)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula, smooth at zero (uses the Taylor series of sin θ/θ and (1−cos θ)/θ²).

    Args:
        axis_angle: Tensor  # [..., 3] rotation vectors (radians).

    Returns:
        Tensor  # [..., 3, 3] rotation matrices.
    """
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    # below 1e-4 rad the series to second order is exact in float64 precision
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / safe2)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a * skew + b * (skew @ skew)


@dataclass
class SkinningResult:
    """What :func:`linear_blend_skinning` returns.

    Attributes:
        vertices: Tensor  # [B, V, 3] posed vertices (before global translation).
        joints: Tensor  # [B, J, 3] posed joint locations (before global translation).
        joint_transforms: Tensor  # [B, J, 4, 4] maps rest-pose points bound to joint j to posed space.
        vertex_transforms: Tensor  # [B, V, 4, 4] per-vertex blended transforms (Σ_j w_vj · A_j).
        pose_offsets: Tensor  # [B, V, 3] pose-corrective offsets added before skinning.
    """

    vertices: Tensor
    joints: Tensor
    joint_transforms: Tensor
    vertex_transforms: Tensor
    pose_offsets: Tensor


def rigid_transforms(rotations: Tensor, joints: Tensor, parents: list[int]) -> tuple[Tensor, Tensor]:
    """Chain local joint rotations down the kinematic tree.

    Args:
        rotations: Tensor  # [B, J, 3, 3] local rotations.
        joints: Tensor  # [B, J, 3] rest-pose joint locations.
        parents: parent index per joint (−1 for the root); parents precede children.

    Returns:
        posed joints [B, J, 3] and relative transforms [B, J, 4, 4] that take a rest-pose point
        rigidly attached to joint j to its posed location.
    """
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.cat([rotations, rel[..., None]], -1)  # [B, J, 3, 4]
    bottom = local.new_tensor([0, 0, 0, 1]).expand(*local.shape[:2], 1, 4)
    local = torch.cat([local, bottom], -2)
    chain = [local[:, 0]]
    for j in range(1, len(parents)):
        chain.append(chain[parents[j]] @ local[:, j])
    world = torch.stack(chain, 1)  # [B, J, 4, 4]
    posed_joints = world[:, :, :3, 3]
    # subtract the rest location so the transform applies to rest-pose coordinates
    shift = (world[:, :, :3, :3] @ joints[..., None])[..., 0]
    relative = world.clone()
    relative[:, :, :3, 3] = world[:, :, :3, 3] - shift
    return posed_joints, relative


def linear_blend_skinning(
    v_shaped: Tensor,
    pose: Tensor,
    J_regressor: Tensor,
    parents: list[int],
    weights: Tensor,
    posedirs: Tensor,
    translation: Tensor | None = None,
) -> SkinningResult:
    """FLAME's LBS: pose correctives, joint regression, kinematic chain, weighted blend.

    Args:
        v_shaped: Tensor  # [B, V, 3] template + shape + expression blendshapes.
        pose: Tensor  # [B, J, 3] axis-angle per joint.
        J_regressor: Tensor  # [J, V] joint regressor.
        parents: parent per joint (−1 for root).
        weights: Tensor  # [V, J] skinning weights (rows sum to 1).
        posedirs: Tensor  # [P, V*3] pose-corrective basis, P = 9·(J−1).
        translation: Tensor  # [B, 3] global translation applied after skinning (None: zero).

    Returns:
        :class:`SkinningResult`.
    """
    B, V, _ = v_shaped.shape
    rot = axis_angle_to_matrix(pose)  # [B, J, 3, 3]
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    pose_feature = (rot[:, 1:] - eye).reshape(B, -1)  # [B, P]
    pose_offsets = (pose_feature @ posedirs).reshape(B, V, 3)
    joints = torch.einsum("jv,bvc->bjc", J_regressor, v_shaped)
    posed_joints, A = rigid_transforms(rot, joints, parents)
    if translation is not None:
        # weights sum to one, so translating every joint transform translates every blend
        shift = torch.zeros_like(A)
        shift[:, :, :3, 3] = translation[:, None]
        A = A + shift
        posed_joints = posed_joints + translation[:, None]
    T = (weights @ A.reshape(B, -1, 16)).reshape(B, V, 4, 4)  # Σ_j w_vj A_j
    v = v_shaped + pose_offsets
    verts = apply_transforms(T, v)
    return SkinningResult(verts, posed_joints, A, T, pose_offsets)


def apply_transforms(transforms: Tensor, points: Tensor) -> Tensor:
    """Apply homogeneous transforms to points.

    Args:
        transforms: Tensor  # [..., 4, 4]
        points: Tensor  # [..., 3]

    Returns:
        Tensor  # [..., 3]
    """
    # broadcast-multiply-sum: many tiny 3×3 matmuls are far slower as a batched matmul on CPU
    return (transforms[..., :3, :3] * points[..., None, :]).sum(-1) + transforms[..., :3, 3]


def flatten_posedirs(posedirs: Tensor) -> Tensor:
    """FLAME stores posedirs as [V, 3, P]; LBS wants [P, V*3]."""
    return rearrange(posedirs, "v c p -> p (v c)")
