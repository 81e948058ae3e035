"""The prior's UV inputs for real-data samples, computed once with the head toolkit and cached.

Each sample gets ``uv_texture`` (its texture views back-projected onto UV through the posed mesh),
``uv_position`` (the neutral identity, SynShot's x_verts) and ``uv_expression`` (x_exp), all from
:func:`avatar_lightning.head.texture.uv_inputs`. Maps are written to ``<sequence>/.uv_cache/<hash>/``
(:class:`~data_modules.uv_cache.UVCache`) and read lazily per item, so RAM does not grow with
the dataset. The folder is keyed by the settings and the head model file's content, each file by
the sample's content (:func:`sample_key`): a re-tracked frame or a replaced image is recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from avatar_lightning.fingerprint import content_key, file_stamp, head_model_digest
from avatar_lightning.head.model import load_head_model
from avatar_lightning.head.texture import uv_inputs
from avatar_lightning.head.uv import uv_rasterize
from data_modules.real_common import Sample, View, load_view_pixels
from data_modules.uv_cache import UVCache

#: Bump when the way maps are computed changes, so old caches are not reused.
UV_FORMAT = 1


def sample_uv(head, raster, sample: Sample, views: list[View], factor: int, background: Tensor,
              stored_background: Tensor | None, size: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """UV maps of one sample, back-projecting ``views`` (of the sample's frame, brought to ``size``)."""
    pixels = [load_view_pixels(v, factor, background, stored_background, size) for v in views]
    f = sample.flame
    return uv_inputs(head, raster, f.shape, f.expr, torch.stack([p.image for p in pixels]),
                     torch.stack([p.mask for p in pixels]), torch.stack([p.K for p in pixels]),
                     torch.stack([v.world_to_cam for v in views]), f.pose, f.translation)


def sample_key(sample: Sample, views: list[View]) -> str:
    """Cache file name of a sample: its frame and cameras, and a key of everything its maps come
    from (FLAME parameters, cameras, image and mask files)."""
    f = sample.flame
    sources = content_key(f.shape, f.expr, f.pose, f.translation,
                          [[v.K, v.world_to_cam, file_stamp(v.image_path),
                            None if v.mask_path is None else file_stamp(v.mask_path)] for v in views])
    return f"{sample.local_frame:06d}_" + "-".join(str(v.camera) for v in views) + f"_{sources}"


def check_vertex_counts(samples: list[Sample], head, teeth: bool) -> None:
    """Per-vertex data (VHAP's static offsets) must fit the head the maps are built with."""
    for s in samples:
        offset = s.flame.static_offset
        if offset is not None and offset.shape[0] != head.num_vertices:
            raise ValueError(f"{s.root}: static_offset has {offset.shape[0]} vertices but head {head.source} "
                             f"(teeth={teeth}) has {head.num_vertices}; VHAP tracks with teeth, set teeth "
                             f"accordingly and use the FLAME model it tracked with")


def build_uv_cache(samples: list[Sample], texture_views: Callable[[Sample], list[View]], head_model: str,
                   uv_size: int, n_shape: int, n_expr: int, teeth: bool, factor: int, background: Tensor,
                   stored_background: Tensor | None, size: tuple[int, int] | None = None) -> list[Path]:
    """Make sure every sample's UV maps are cached beside its data; return the cache file per sample.

    Args:
        samples: the samples (each with ``root`` set: the cache goes inside that folder).
        texture_views: which views of a sample's frame to back-project for its texture.
        head_model: ``"builtin"`` or the FLAME pickle — the same head the model uses.
        uv_size: side of the square UV maps.
        n_shape, n_expr: coefficients the head takes (the data's S and E).
        teeth: whether the head carries VHAP's teeth.
        factor: image down-sampling used for back-projection (the training resolution).
        background, stored_background, size: as for :class:`~data_modules.real_common.RealHeadDataset`.
    """
    head = load_head_model(head_model, n_shape=n_shape, n_expr=n_expr, teeth=teeth)
    check_vertex_counts(samples, head, teeth)
    raster = uv_rasterize(head.uv_coords, head.uv_faces, uv_size)
    config = {"format": UV_FORMAT, "head_model": str(head_model), "head_model_digest": head_model_digest(head_model),
              "uv_size": uv_size, "n_shape": n_shape, "n_expr": n_expr, "teeth": teeth, "downsample": factor,
              "background": background.tolist(), "size": None if size is None else list(size)}
    caches: dict[Path, UVCache] = {}
    paths = []
    for s in samples:
        if s.root is None:
            raise ValueError(f"sample (identity {s.identity}, frame {s.frame}) has no root to cache UV maps in")
        views = texture_views(s)
        cache = caches.setdefault(s.root, UVCache(s.root, config))
        key = sample_key(s, views)
        paths.append(cache.ensure(key, lambda s=s, views=views: sample_uv(head, raster, s, views, factor,
                                                                          background, stored_background, size)))
    computed = sum(c.misses for c in caches.values())
    rank_zero_info(f"UV inputs {uv_size}x{uv_size}: {computed} computed, {len(samples) - computed} from cache "
                   f"({', '.join(str(c.dir) for c in caches.values())})")
    return paths
