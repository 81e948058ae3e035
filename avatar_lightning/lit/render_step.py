"""The one place that turns a batch and canonical Gaussians into rendered images.

Prior, inversion and baselines all call :func:`render_batch`, so they pose and render identically:
the head model poses the mesh for the batch's shape / expression / pose / translation, every
Gaussian follows the skinning transform of the mesh point it is bound to (barycentric blend of
its triangle's per-vertex LBS transforms) after that point's pose correctives (the mesh the data
was rendered with has them), and all V views are rasterised in one call.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from avatar_lightning.head.gaussians import MeshBinding, point_transforms, surface_points
from avatar_lightning.head.gaussians import pose_gaussians as head_pose_gaussians
from avatar_lightning.head.model import HeadModel
from avatar_lightning.render import Cameras, Gaussians, RenderOutput, orbit_cameras, rasterize


def pose_gaussians(canonical: Gaussians, vertex_transforms: Tensor, faces: Tensor, binding: MeshBinding,
                   pose_offsets: Tensor | None = None) -> Gaussians:
    """Move canonical (3DMM-space) Gaussians with the skinning of the mesh points they are bound to.

    The head toolkit does the work (:mod:`avatar_lightning.head.gaussians`): barycentric blend of
    the triangle's vertex transforms, closest rotation for orientations, SH rotated with them.

    Args:
        canonical: batched Gaussians [B, N, ...] in the head model's canonical space.
        vertex_transforms: [B, V, 4, 4] per-vertex rest → world transforms (``HeadOutput``).
        faces: [F, 3] mesh triangles.
        binding: the mesh point of each Gaussian.
        pose_offsets: [B, V, 3] the mesh's pose correctives (``HeadOutput.pose_offsets``): each
            Gaussian takes its bound point's blend of them in rest space, as the mesh does. None
            leaves them out (right only at rest pose, where they are zero).

    Returns:
        Batched Gaussians in world space.
    """
    if binding.face.shape[0] != canonical.num_gaussians:
        raise ValueError(f"pose_gaussians: {binding.face.shape[0]} bound points for "
                         f"{canonical.num_gaussians} Gaussians")
    offsets = None if pose_offsets is None else surface_points(pose_offsets, faces, binding)
    return head_pose_gaussians(canonical, point_transforms(vertex_transforms, faces, binding), offsets)


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
    # Posing and splatting run in float32 even under bf16/fp16 autocast: positions, covariances and
    # the linear algebra of posing lose too much in half precision (and some ops lack half kernels).
    with torch.autocast(device_type=canonical.means.device.type, enabled=False):
        canonical = canonical.map(lambda t: t.float())
        posed_mesh = head(batch["shape"].float(), batch["expr"].float(), batch["pose"].float(),
                          batch["translation"].float())
        posed = pose_gaussians(canonical, posed_mesh.vertex_transforms, head.faces, binding, posed_mesh.pose_offsets)
        return rasterize(posed, batch_cameras(batch), background=batch["background"], backend=backend)


def head_centre(batch: Mapping[str, Tensor], head: HeadModel) -> Tensor:
    """Centroid [3] of the first sample's posed head mesh (world space): what turntables orbit.

    The mesh, not the Gaussians: a few stray Gaussians far from the head would drag a Gaussian
    centroid, and the orbit with it, off the head.
    """
    mesh = head(batch["shape"][:1], batch["expr"][:1], batch["pose"][:1], batch["translation"][:1])
    return mesh.vertices[0].mean(dim=0)


def turntable_batch(batch: Mapping[str, Tensor], head: HeadModel, frames: int = 24,
                    elevation_deg: float = 10.0) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The first sample of ``batch`` made upright, and a 360° orbit around it, for a prior's turntable.

    The head's global and neck rotations are zeroed (jaw and eyes kept), so the orbit circles an
    upright head facing +z whatever the sample's head pose was. The orbit is centred on the posed
    mesh's centroid (:func:`head_centre`) at the distance of the sample's first camera, with that
    camera's intrinsics.

    Returns:
        ``(sample, orbit)``: the upright sample (B = 1, every key of ``batch``) to build the Gaussians
        from, and the same sample with ``frames`` orbit views (``K`` [1, frames, 3, 3],
        ``world_to_cam`` [1, frames, 4, 4], a blank ``image`` for H, W) to pass to :func:`render_batch`.
    """
    one = {k: v[:1] for k, v in batch.items()}
    one["pose"] = torch.cat([torch.zeros_like(one["pose"][:, :2]), one["pose"][:, 2:]], dim=1)
    centre = head_centre(one, head)
    eye = torch.linalg.inv(one["world_to_cam"][0, 0])[:3, 3]
    cams = orbit_cameras(frames, float((eye - centre).norm()), elevation_deg, target=centre.cpu())
    h, w = one["image"].shape[-2:]
    orbit = dict(one, K=one["K"][:, :1].expand(1, frames, 3, 3), world_to_cam=cams[None].to(centre),
                 image=one["image"].new_zeros(1, frames, 3, h, w))
    return one, orbit
