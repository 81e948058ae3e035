"""Build one synthetic identity: shape, appearance, UV texture, hair proxy, surface samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar_lightning.io import save_image, torch_save, write_json
from avatar_lightning.synth import layout
from avatar_lightning.synth.appearance import Appearance, sample_appearance
from avatar_lightning.synth.avatar import SurfaceSamples, sample_shape, sample_surface
from avatar_lightning.synth.config import GeneratorConfig
from avatar_lightning.synth.hair import HairProxy, build_hair_proxy
from avatar_lightning.synth.texture import Landmarks, paint_texture


@dataclass
class IdentityAssets:
    """Everything needed to render one identity under any expression.

    Attributes:
        index: identity index.
        shape: identity coefficients.  # [S]
        appearance: sampled appearance.
        texture: UV texture, quantised to 8 bits exactly as stored.  # [3, T, T]
        hair: bound hair/beard proxy.
        surface: where the surface Gaussians sit.
        vertices: canonical neutral vertices.  # [V, 3]
    """

    index: int
    shape: Tensor
    appearance: Appearance
    texture: Tensor
    hair: HairProxy
    surface: SurfaceSamples
    vertices: Tensor


def landmarks(vertices: Tensor, regions: dict[str, Tensor]) -> Landmarks:
    """Eye and mouth anchors from the head model's vertex regions.

    Args:
        vertices: canonical vertices.  # [V, 3]
        regions: vertex-index regions (``left_eyeball``, ``right_eyeball``, ``lips``).
    """
    left, right = vertices[regions["left_eyeball"]], vertices[regions["right_eyeball"]]
    radius = 0.5 * float((left - left.mean(0)).norm(dim=-1).mean() + (right - right.mean(0)).norm(dim=-1).mean())
    return Landmarks(left_eye=left.mean(0), right_eye=right.mean(0), mouth=vertices[regions["lips"]].mean(0),
                     eyeball_radius=radius)


def rig_target(head) -> Tensor:
    """The point the rig looks at: the cranium centre of the mean head (a little below and behind the eyes).

    Args:
        head: a :class:`~avatar_lightning.head.HeadModel`.

    Returns:
        target.  # [3]
    """
    marks = landmarks(head.v_template, head.regions)
    eyes = 0.5 * (marks.left_eye + marks.right_eye)
    return eyes + torch.tensor([0.0, -0.035, -0.06])


_RASTERS: dict[tuple[int, int], object] = {}


def cached_uv_raster(head, size: int):
    """The head's UV raster at ``size`` (the same for every identity, so computed once per process)."""
    from avatar_lightning.head.uv import uv_rasterize

    key = (id(head), size)
    if key not in _RASTERS:
        _RASTERS[key] = uv_rasterize(head.uv_coords, head.uv_faces, size)
    return _RASTERS[key]


def uv_canvas(head, vertices: Tensor, size: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Canonical position, coverage and region masks of every texel of a ``size``² UV map.

    Args:
        head: the head model (its UV layout and vertex regions).
        vertices: canonical neutral vertices of the identity.  # [V, 3]
        size: UV map side.

    Returns:
        (position  # [3, h, w], valid  # [h, w] bool, regions name -> [h, w] float in [0, 1])
    """
    from avatar_lightning.head.uv import position_map, region_masks

    raster = cached_uv_raster(head, size)
    position = position_map(raster, vertices, head.faces)
    return position, raster.valid, region_masks(raster, head.faces, head.regions, len(vertices))


def build_identity(head, config: GeneratorConfig, index: int) -> IdentityAssets:
    """Deterministically sample identity ``index`` of a dataset (same config, same identity).

    Args:
        head: the head model.
        config: the generator config (seed, sizes, counts).
        index: identity index.
    """
    cfg = config.resolved()
    rng = np.random.default_rng([cfg.seed, index])
    shape = sample_shape(rng, cfg.n_shape)
    app = sample_appearance(rng)
    with torch.no_grad():
        vertices = head(shape[None], torch.zeros(1, cfg.n_expr)).vertices[0]
        marks = landmarks(vertices, head.regions)
        position, valid, regions = uv_canvas(head, vertices, cfg.texture_size)
        texture = paint_texture(app, position, valid, regions, marks)
    texture = (texture * 255).round() / 255  # exactly what the PNG holds, so a resumed run matches
    hair = build_hair_proxy(app, vertices, head.faces, head.regions, marks, density=cfg.hair_density)
    surface = sample_surface(vertices, head.faces, head.uv_coords, head.uv_faces, cfg.surface_points, app.seed + 3)
    return IdentityAssets(index=index, shape=shape, appearance=app, texture=texture, hair=hair, surface=surface,
                          vertices=vertices)


def load_or_build_identity(head, config: GeneratorConfig, root: Path, index: int) -> IdentityAssets:
    """Build identity ``index`` and store its assets under ``root`` unless they are already there."""
    assets = build_identity(head, config, index)
    folder = layout.identity_dir(root, index)
    if not (folder / "appearance.json").is_file():
        write_json(folder / "appearance.json", {"shape": assets.shape.tolist(), **assets.appearance.to_dict()})
    if not (folder / "texture.png").is_file():
        save_image(folder / "texture.png", assets.texture)
    if not (folder / "hair.pt").is_file():
        torch_save(folder / "hair.pt", assets.hair.to_dict())
    return assets
