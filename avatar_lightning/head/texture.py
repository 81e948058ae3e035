"""Texture extraction by back-projecting posed images onto UV with visibility, and the one
function every DataModule uses to build the prior's UV inputs.

Dimension letters: V views, H W image, h w UV map, S/E shape/expression dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from avatar_lightning.head.lbs import apply_transforms
from avatar_lightning.head.raster import mesh_depth
from avatar_lightning.head.uv import UVRaster, expression_map, interpolate, position_map


@dataclass
class BakedTexture:
    """Result of :func:`backproject_texture`.

    Attributes:
        texture: Tensor  # [3, h, w] visibility-weighted mean colour (0 where unseen).
        weight: Tensor  # [1, h, w] summed view weights (0 = seen by no view).
    """

    texture: Tensor
    weight: Tensor


def _vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    v = verts
    fn = torch.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]], dim=-1)
    n = torch.zeros_like(v).index_add_(0, faces.reshape(-1), fn.repeat_interleave(3, 0))
    return F.normalize(n, dim=-1)


def backproject_texture(raster: UVRaster, verts: Tensor, faces: Tensor, images: Tensor, K: Tensor,
                        world_to_cam: Tensor, masks: Tensor | None = None, depth_tol: float = 0.003,
                        min_cos: float = 0.1) -> BakedTexture:
    """Back-project posed images onto UV: a texel takes the colour where its surface point lands
    in each view that sees it (z-buffer test against the mesh), weighted by the viewing cosine.

    Args:
        raster: UV raster of the head's layout.
        verts: Tensor  # [Vv, 3] posed world-space vertices.
        faces: LongTensor  # [F, 3]
        images: Tensor  # [V, 3, H, W]
        K: Tensor  # [V, 3, 3]
        world_to_cam: Tensor  # [V, 4, 4] OpenCV.
        masks: Tensor  # [V, 1, H, W] foreground; texels landing on background are ignored.
        depth_tol: metres a texel may lie behind the z-buffer and still count as visible.
        min_cos: views seeing the surface more obliquely than this cosine are ignored.
    """
    pos = position_map(raster, verts, faces)  # [3, h, w]
    nrm = F.normalize(interpolate(raster, _vertex_normals(verts, faces), faces), dim=0)
    h, w = raster.size
    acc = images.new_zeros(3, h * w)
    wsum = images.new_zeros(1, h * w)
    P, N = pos.reshape(3, -1).T, nrm.reshape(3, -1).T  # [hw, 3]
    valid = raster.valid.reshape(-1)
    H, W = images.shape[-2:]
    for view in range(images.shape[0]):
        Rt = world_to_cam[view]
        pc = apply_transforms(Rt, P)
        vc = apply_transforms(Rt, verts)
        zbuf = mesh_depth(vc, faces, K[view], H, W).depth
        pix = (pc @ K[view].T)[:, :2] / pc[:, 2:].clamp_min(1e-9)
        col, row = pix[:, 0].floor().long(), pix[:, 1].floor().long()
        inside = (col >= 0) & (col < W) & (row >= 0) & (row < H) & (pc[:, 2] > 0) & valid
        zb = zbuf[row.clamp(0, H - 1), col.clamp(0, W - 1)]
        cam_pos = -Rt[:3, :3].T @ Rt[:3, 3]
        cos = (F.normalize(cam_pos - P, dim=-1) * N).sum(-1)
        vis = inside & (pc[:, 2] <= zb + depth_tol) & (cos > min_cos)
        grid = torch.stack([pix[:, 0] / W * 2 - 1, pix[:, 1] / H * 2 - 1], -1)[None, :, None]
        rgb = F.grid_sample(images[view:view + 1], grid.to(images.dtype), align_corners=False)[0, :, :, 0]
        wt = cos.clamp_min(0) * vis
        if masks is not None:
            fg = F.grid_sample(masks[view:view + 1], grid.to(masks.dtype), align_corners=False)[0, 0, :, 0]
            wt = wt * (fg > 0.5)
        acc += rgb * wt
        wsum += wt
    tex = (acc / wsum.clamp_min(1e-8)).reshape(3, h, w)
    return BakedTexture(tex, wsum.reshape(1, h, w))


def uv_inputs(head, raster: UVRaster, shape: Tensor, expr: Tensor, images: Tensor, masks: Tensor | None,
              K: Tensor, world_to_cam: Tensor, pose: Tensor, translation: Tensor) -> dict[str, Tensor]:
    """The prior's UV inputs for one sample (keys of ``avatar_lightning.batch``).

    Args:
        head: :class:`~avatar_lightning.head.HeadModel`.
        raster: its UV raster at the map size.
        shape: Tensor  # [S]
        expr: Tensor  # [E]
        images: Tensor  # [V, 3, H, W] the sample's views.
        masks: Tensor  # [V, 1, H, W] or None.
        K: Tensor  # [V, 3, 3]
        world_to_cam: Tensor  # [V, 4, 4]
        pose: Tensor  # [5, 3]
        translation: Tensor  # [3]

    Returns:
        ``uv_texture`` (back-projected images, posed mesh), ``uv_position`` (neutral identity,
        SynShot x_verts), ``uv_expression`` (expression offsets, x_exp); each ``[3, h, w]``.
    """
    with torch.no_grad():
        s, e = shape[None].to(head.v_template), expr[None].to(head.v_template)
        out = head(s, e, pose[None].to(s), translation[None].to(s))
        neutral = head.canonical(s, torch.zeros_like(e))[0]
        tex = backproject_texture(raster, out.vertices[0], head.faces, images, K.to(s), world_to_cam.to(s), masks)
        return {
            "uv_texture": tex.texture.to(images.dtype),
            "uv_position": position_map(raster, neutral, head.faces).to(images.dtype),
            "uv_expression": expression_map(head, raster, e)[0].to(images.dtype),
        }
