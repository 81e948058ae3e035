"""From decoded UV maps to one set of canonical Gaussians with its mesh binding (all parts).

Holds each part's UV sample grid and mesh binding as buffers (they follow the module's device),
samples φ = x̂_verts + x̂_expr and x̂_feat on every part grid, runs that part's regressors, builds
the part's Gaussians (:func:`avatar_lightning.models.densify.part_gaussians`) and concatenates
the parts. Sampling, TBN frames and nearest-neighbour scales run in float32 whatever the autocast
(:func:`~avatar_lightning.models.sample_uv`, :func:`~avatar_lightning.models.densify.part_gaussians`);
only the regressors run in the autocast's precision.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from einops import rearrange
from torch import Tensor, nn

from avatar_lightning.head.gaussians import MeshBinding
from avatar_lightning.head.model import HeadModel
from avatar_lightning.head.uv import part_masks, uv_rasterize
from avatar_lightning.models.densify import PartGrid, part_gaussians, part_grid, sample_part
from avatar_lightning.models.synshot import PriorMaps, SynShotNet
from avatar_lightning.render import Gaussians
from avatar_lightning.render.sh import rgb_to_sh


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

    Each part resamples the UV square at its own resolution S_r; the texels of its region
    (:func:`avatar_lightning.head.uv.part_masks`: ``hair`` = scalp, ``face`` = everything else)
    become its Gaussians, bound to the mesh triangle the UV rasteriser finds under them.

    Args:
        head: the head model (its UV layout, triangles and regions).
        parts: the network's parts (``SynShotNet.parts``): ``("face", "hair")`` or ``("all",)``.
        part_samples: S_r per part (SynShot's per-part densification); ``"all"`` (the single-layer
            ablation) defaults to the smallest listed value, so one joint layer has fewer
            Gaussians than the per-part layers (Table 1: "a Single Layer instead of two ... results
            in a lower number of Gaussians"). Counts depend on these sizes and the UV layout only,
            never on ``map_resolution`` (except with ``no_sampling``).
        map_resolution: UV map side H; the "No Sampling" ablation samples its texel centres.
        no_sampling: one Gaussian per texel of the H × H map (Table 1 "No Sampling").
        init_opacity: initial opacity (SynShot: 0.7).
    """

    def __init__(self, head: HeadModel, parts: tuple[str, ...], part_samples: dict[str, int], map_resolution: int,
                 no_sampling: bool = False, init_opacity: float = 0.7) -> None:
        super().__init__()
        self.parts, self.init_opacity = parts, init_opacity
        for part in parts:
            size = map_resolution if no_sampling else part_samples.get(part, min(part_samples.values()))
            raster = uv_rasterize(head.uv_coords, head.uv_faces, size)
            if part == "all":
                region = raster.valid.float()
            else:
                masks = part_masks(raster, head)
                if part not in masks:
                    raise KeyError(f"GaussianAssembler: no UV mask for part {part!r}; "
                                   f"the head toolkit has {list(masks)}")
                region = masks[part]
            grid = part_grid(region)
            if grid.num_gaussians < 2:
                raise ValueError(f"part {part!r} has {grid.num_gaussians} sample points at {size}²; raise its samples")
            for name, value in (("uv", grid.uv), ("valid", grid.valid), ("face", raster.face[grid.valid]),
                                ("bary", raster.bary[grid.valid])):
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
            if net.config.color_from_texture:  # SH DC = rgb_to_sh(x̂_tex at the points) + R_color's residual
                base = rgb_to_sh(sample_part(maps.tex, grid))[:, None]  # [B, 1, 3, h, w]
                pred = replace(pred, sh=torch.cat([pred.sh[:, :1] + base, pred.sh[:, 1:]], dim=1))
            items.append(part_gaussians(sample_part(maps.position, grid), pred, grid, self.init_opacity))
            bindings.append(MeshBinding(face=getattr(self, f"{part}_face"), bary=getattr(self, f"{part}_bary")))
            off = pred.offsets
            offsets.append([rearrange(t, "b c h w -> b h w c")[:, grid.valid]
                            for t in (off.position, off.scale, off.opacity)])
            counts[part] = grid.num_gaussians
        d_pos, d_scale, d_opacity = (torch.cat(ts, dim=1) for ts in zip(*offsets, strict=True))
        return Assembled(Gaussians.cat(items), MeshBinding.cat(bindings), d_pos, d_scale, d_opacity, counts)
