"""On-disk cache of the UV inputs beside the data, keyed by the config that produced them.

The prior's UV inputs (texture back-projected onto UV, neutral position map, expression map) cost
a head-model evaluation and a rasterisation per frame; they are computed once and stored under
``<root>/.uv_cache/<hash>/`` where ``<hash>`` is :func:`avatar_lightning.io.config_hash` of every
setting that changes them (map size, head model, coefficient counts, texture views, ...). A changed
setting gives a new folder, so a stale map is never read; ``config.json`` in it says what it holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avatar_lightning.io import config_hash, torch_save, write_json

log = logging.getLogger(__name__)

CACHE_DIR = ".uv_cache"


class UVCache:
    """Per-key tensors cached in one folder per config.

    Args:
        root: the dataset folder the cache lives beside (inside it, as ``.uv_cache/``).
        config: JSON-serialisable settings the cached maps depend on.
    """

    def __init__(self, root: str | Path, config: dict[str, Any]) -> None:
        self.config = config
        self.dir = Path(root) / CACHE_DIR / config_hash(config)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.pt"

    def get(self, key: str, compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """The cached maps for ``key``, computing and storing them on a miss.

        A cache file that cannot be read (an interrupted copy, a torch version change) is
        recomputed and replaced rather than failing the run; the writes are atomic, so this
        never happens through an interrupted write of ours.
        """
        path = self.path(key)
        if path.is_file():
            try:
                maps = torch.load(path, map_location="cpu", weights_only=True)
                self.hits += 1
                return maps
            except Exception as err:  # torch.load raises several unrelated types for corrupt files
                log.warning("UV cache file %s is unreadable (%s); recomputing it", path, err)
        if not (self.dir / "config.json").is_file():
            write_json(self.dir / "config.json", self.config)
        maps = {k: v.detach().cpu().contiguous() for k, v in compute().items()}
        torch_save(path, maps)
        self.misses += 1
        return maps
