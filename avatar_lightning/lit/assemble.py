"""From decoded UV maps to one set of canonical Gaussians with its mesh binding (all parts).

Holds each part's UV sample grid and mesh binding as buffers (they follow the module's device),
samples φ = x̂_verts + x̂_expr and x̂_feat on every part grid, runs that part's regressors, builds
the part's Gaussians (:func:`avatar_lightning.models.densify.part_gaussians`) and concatenates
the parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from avatar_lightning.head.model import HeadModel
from avatar_lightning.lit.binding import PartBinding, bind_part, part_faces
from avatar_lightning.lit.render_step import MeshBinding
from avatar_lightning.models.densify import PartGrid, part_gaussians, sample_part
from avatar_lightning.models.synshot import PriorMaps, SynShotNet
from avatar_lightning.render import Gaussians


@dataclass
class Assembled:
    """Canonical Gaussians of all parts and what the losses need.

    Attributes:
        gaussians: batched canonical Gaussians [B, N, ...], parts concatenated in ``parts`` order.
        binding: the mesh binding of each Gaussian, same order.
        d_position: δφ [B, N, 3] of the valid points.
        d_scale: δσ [B, N, 3].
        d_opacity: δα [B, N, 1].
        counts: N_r per part.
    """

    gaussians: Gaussians
    binding: MeshBinding
    d_position: Tensor
    d_scale: Tensor
    d_opacity: Tensor
    counts: dict[str, int]


class GaussianAssembler(nn.Module):
    """Per-part densification for a :class:`SynShotNet` on a given head model's UV layout.

    Args:
        head: the head model (its UV layout, triangles and regions).
        parts: the network's parts (``SynShotNet.parts``).
        part_samples: grid side per part (SynShot: per-part sample counts); ``"all"`` for the
            single-layer ablation defaults to the largest listed value.
        part_regions: head regions each part takes (None = all remaining triangles); parts
            missing here (``"all"``) take every triangle.
        map_resolution: UV map side H; the "No Sampling" ablation samples its texel centres.
        no_sampling: one Gaussian per texel of the map (Table 1 "No Sampling").
        init_opacity: initial opacity (SynShot: 0.7).
    """

    def __init__(self, head: HeadModel, parts: tuple[str, ...], part_samples: dict[str, int],
                 part_regions: dict[str, list[str] | None], map_resolution: int, no_sampling: bool = False,
                 init_opacity: float = 0.7) -> None:
        super().__init__()
        self.parts, self.init_opacity = parts, init_opacity
        regions = {p: part_regions.get(p) for p in parts}
        faces = part_faces(head.regions, head.faces, regions) if len(parts) > 1 else {
            parts[0]: torch.ones(head.faces.shape[0], dtype=torch.bool)}
        for part in parts:
            if no_sampling:
                binding = bind_part(faces[part], head.uv_coords, head.uv_faces, map_resolution, full_square=True)
            else:
                samples = part_samples.get(part, max(part_samples.values()))
                binding = bind_part(faces[part], head.uv_coords, head.uv_faces, samples)
            self._register(part, binding)

    def _register(self, part: str, binding: PartBinding) -> None:
        if binding.grid.num_gaussians < 2:
            raise ValueError(f"part {part!r} has {binding.grid.num_gaussians} sample points; raise its sample count")
        for name, value in (("uv", binding.grid.uv), ("valid", binding.grid.valid), ("face", binding.face),
                            ("bary", binding.bary)):
            self.register_buffer(f"{part}_{name}", value, persistent=False)

    def grid(self, part: str) -> PartGrid:
        """The sample grid of ``part``."""
        return PartGrid(uv=getattr(self, f"{part}_uv"), valid=getattr(self, f"{part}_valid"))

    def forward(self, net: SynShotNet, maps: PriorMaps) -> Assembled:
        """Sample, regress and build the Gaussians of every part from decoded maps."""
        items, bindings, offsets, counts = [], [], [], {}
        for part in self.parts:
            grid = self.grid(part)
            pred = net.regress(part, sample_part(maps.feat, grid))
            items.append(part_gaussians(sample_part(maps.position, grid), pred, grid, self.init_opacity))
            bindings.append(MeshBinding(face=getattr(self, f"{part}_face"), bary=getattr(self, f"{part}_bary")))
            off = pred.offsets
            offsets.append([rearrange(t, "b c h w -> b h w c")[:, grid.valid]
                            for t in (off.position, off.scale, off.opacity)])
            counts[part] = grid.num_gaussians
        d_pos, d_scale, d_opacity = (torch.cat(ts, dim=1) for ts in zip(*offsets, strict=True))
        return Assembled(Gaussians.cat(items), MeshBinding.cat(bindings), d_pos, d_scale, d_opacity, counts)
