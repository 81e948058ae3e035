"""The one place that turns a batch and canonical Gaussians into rendered images.

Prior, inversion and baselines all call :func:`render_batch`, so they pose and render identically:
the head model poses the mesh for the batch's shape / expression / pose / translation, every
Gaussian follows the skinning transform of the mesh point it is bound to (barycentric blend of
its triangle's per-vertex LBS transforms), and all V views are rasterised in one call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from avatar_lightning.head.model import HeadModel
from avatar_lightning.render import Cameras, Gaussians, RenderOutput, normalize_quat, quat_multiply, rasterize
from avatar_lightning.render import rotmat_to_quat as _rotmat_to_quat


@dataclass
class MeshBinding:
    """Which mesh point each Gaussian follows.

    Attributes:
        face: [N] triangle index per Gaussian.
        bary: [N, 3] barycentric coordinates in that triangle.
    """

    face: Tensor
    bary: Tensor

    @staticmethod
    def cat(items: list[MeshBinding]) -> MeshBinding:
        """Concatenate along N in the same order as ``Gaussians.cat``."""
        return MeshBinding(face=torch.cat([b.face for b in items]), bary=torch.cat([b.bary for b in items]))


def _nearest_rotation(m: Tensor) -> Tensor:
    """The rotation closest to m [..., 3, 3] (polar decomposition by SVD, det = +1).

    Blending per-vertex rigid transforms gives a matrix that is close to, but not exactly, a
    rotation; a Gaussian's orientation must be a proper rotation.
    """
    u, _, vh = torch.linalg.svd(m)
    d = torch.det(u @ vh)
    fix = torch.ones_like(m[..., 0])
    fix[..., 2] = d
    return u @ torch.diag_embed(fix) @ vh


def pose_gaussians(canonical: Gaussians, vertex_transforms: Tensor, faces: Tensor, binding: MeshBinding) -> Gaussians:
    """Move canonical (3DMM-space) Gaussians with the skinning of the mesh points they are bound to.

    Args:
        canonical: batched Gaussians [B, N, ...] in the head model's canonical space.
        vertex_transforms: [B, V, 4, 4] per-vertex rest → world transforms (``HeadOutput``).
        faces: [F, 3] mesh triangles.
        binding: the mesh point of each Gaussian.

    Returns:
        Batched Gaussians in world space: means transformed, rotations composed with the local
        rotation, scales / opacities / SH unchanged.
    """
    if not canonical.batched:
        raise ValueError("pose_gaussians: canonical Gaussians must be batched [B, N, ...]")
    if binding.face.shape[0] != canonical.num_gaussians:
        raise ValueError(f"pose_gaussians: {binding.face.shape[0]} bound points for "
                         f"{canonical.num_gaussians} Gaussians")
    corner_t = vertex_transforms[:, faces[binding.face]]  # [B, N, 3, 4, 4]
    t = torch.einsum("nk,bnkij->bnij", binding.bary.to(corner_t), corner_t)
    means = torch.einsum("bnij,bnj->bni", t[..., :3, :3], canonical.means) + t[..., :3, 3]
    # SVD in float32 at least: half precision SVD is unsupported and ill-conditioned.
    rot = _nearest_rotation(t[..., :3, :3].float()).to(canonical.quats.dtype)
    quats = quat_multiply(_rotmat_to_quat(rot), normalize_quat(canonical.quats))
    return Gaussians(means=means, quats=quats, scales=canonical.scales, opacities=canonical.opacities,
                     sh=canonical.sh)


def batch_cameras(batch: Mapping[str, Tensor]) -> Cameras:
    """The batch's V views as batched cameras [B, V, ...] at the batch's image size."""
    height, width = batch["image"].shape[-2:]
    return Cameras(K=batch["K"], world_to_cam=batch["world_to_cam"], width=int(width), height=int(height))


def render_batch(batch: Mapping[str, Tensor], canonical: Gaussians, binding: MeshBinding, head: HeadModel,
                 backend: str = "auto") -> RenderOutput:
    """Pose canonical Gaussians for each batch sample and render all its views.

    Args:
        batch: schema batch (:mod:`avatar_lightning.batch`): ``shape``, ``expr``, ``pose``,
            ``translation``, ``K``, ``world_to_cam``, ``background``, ``image`` (for H, W).
        canonical: batched Gaussians [B, N, ...] in canonical space.
        binding: their mesh binding.
        head: the head model the data was made with.
        backend: rasteriser backend (see :func:`avatar_lightning.render.rasterize`).

    Returns:
        :class:`RenderOutput` with rgb [B, V, 3, H, W], alpha and depth [B, V, 1, H, W].
    """
    posed_mesh = head(batch["shape"], batch["expr"], batch["pose"], batch["translation"])
    posed = pose_gaussians(canonical, posed_mesh.vertex_transforms, head.faces, binding)
    return rasterize(posed, batch_cameras(batch), background=batch["background"], backend=backend)
