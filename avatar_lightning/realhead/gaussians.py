"""3DRealHead's Gaussians: one per valid UV texel, bound to the mesh point under it (paper §IV-A, Eq. 4).

The Style U-Net predicts 59-channel maps on the head model's UV layout; every texel the layout
covers carries one Gaussian whose mesh binding is the (triangle, barycentric) of that texel in
the UV raster (GaussianAvatars' ``binding``, here :class:`~avatar_lightning.lit.render_step.MeshBinding`).
Its canonical centre is the bound point of the shaped, expressive mesh (shape + expression
blendshapes) plus the predicted offset; :func:`~avatar_lightning.lit.render_step.render_batch`
then adds the pose correctives and skins it with the tracked pose, rotating the covariance and SH
with the same transform — the path SynShot's Gaussians take.

Dimension letters: B batch, N Gaussians (valid texels), R UV side, K SH bases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from avatar_lightning.head.gaussians import surface_points
from avatar_lightning.head.uv import position_map
from avatar_lightning.lit.render_step import MeshBinding
from avatar_lightning.models.style_unet import GaussianMaps
from avatar_lightning.render import Gaussians


def texel_spacing(positions: Tensor, valid: Tensor) -> Tensor:
    """Mean 3D distance from each texel's surface point to its valid 4-neighbours.

    Args:
        positions: Tensor  # [3, R, R] position map (metres).
        valid: BoolTensor  # [R, R]

    Returns:
        Tensor  # [R, R] metres; texels without a valid neighbour (and invalid ones) get the median
        spacing of the others, and no texel exceeds 3× the median (neighbours across a UV seam are
        far apart in 3D without the texel being large).
    """
    total = positions.new_zeros(valid.shape)
    count = positions.new_zeros(valid.shape)
    for dim in (1, 2):
        d = (positions.narrow(dim, 1, positions.shape[dim] - 1)
             - positions.narrow(dim, 0, positions.shape[dim] - 1)).norm(dim=0)
        both = valid.narrow(dim - 1, 1, valid.shape[dim - 1] - 1) & valid.narrow(dim - 1, 0, valid.shape[dim - 1] - 1)
        d = d * both
        pad_hi = [0, 1] if dim == 2 else [0, 0, 0, 1]
        pad_lo = [1, 0] if dim == 2 else [0, 0, 1, 0]
        total += F.pad(d, pad_hi) + F.pad(d, pad_lo)
        count += F.pad(both.to(d.dtype), pad_hi) + F.pad(both.to(d.dtype), pad_lo)
    spacing = total / count.clamp_min(1)
    has = count > 0
    fill = spacing[has].median() if bool(has.any()) else positions.new_tensor(1e-3)
    return torch.where(has, spacing, fill).clamp(max=3 * fill)


class TexelGaussians(nn.Module):
    """The fixed texel → Gaussian binding of one head model at one UV resolution.

    Args:
        head: the :class:`~avatar_lightning.head.HeadModel` the data was tracked with.
        uv_size: R, the side of the output maps.

    Attributes:
        binding: :class:`MeshBinding` of the N valid texels (row-major order).
        base_scale: Tensor  # [1, 1, R, R] texel spacing of the neutral template (metres): the
            scale a Gaussian has when the network's raw scale is 0.
    """

    def __init__(self, head, uv_size: int) -> None:
        super().__init__()
        raster = head.uv_raster(uv_size)
        valid = raster.valid
        self.register_buffer("index", valid.reshape(-1).nonzero()[:, 0], persistent=False)  # [N]
        self.register_buffer("face", raster.face[valid], persistent=False)
        self.register_buffer("bary", raster.bary[valid].float(), persistent=False)
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("faces", head.faces.clone(), persistent=False)  # the mesh the binding indexes
        template = position_map(raster, head.v_template, head.faces)
        self.register_buffer("base_scale", texel_spacing(template, valid)[None, None].float(), persistent=False)
        self.uv_size = uv_size

    @property
    def binding(self) -> MeshBinding:
        return MeshBinding(face=self.face, bary=self.bary)

    @property
    def num_gaussians(self) -> int:
        return int(self.index.shape[0])

    def gather(self, maps: Tensor) -> Tensor:
        """Valid texels of per-texel maps: ``[B, C, R, R] -> [B, N, C]``."""
        flat = rearrange(maps, "b c h w -> b (h w) c")
        return flat[:, self.index]

    def forward(self, canonical_vertices: Tensor, maps: GaussianMaps) -> Gaussians:
        """Canonical Gaussians from activated maps.

        Args:
            canonical_vertices: Tensor  # [B, V, 3] ``head.canonical(shape, expr)`` (metres).
            maps: :class:`~avatar_lightning.models.style_unet.GaussianMaps` ``[B, ..., R, R]``:
                offsets (metres, added to the bound surface point), opacity, unit wxyz quaternion in
                canonical space, scale (metres), SH ``[B, K, 3, R, R]``.

        Returns:
            Batched :class:`Gaussians` [B, N, ...] in the head model's canonical space.
        """
        points = surface_points(canonical_vertices, self.faces, self.binding)  # [B, N, 3]
        sh = rearrange(maps.sh, "b k c h w -> b (h w) k c")[:, self.index]
        return Gaussians(means=points + self.gather(maps.offset), quats=self.gather(maps.quat),
                         scales=self.gather(maps.scale), opacities=self.gather(maps.opacity)[..., 0], sh=sh)
