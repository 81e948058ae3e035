"""On-disk cache of derived data beside the data, keyed by the settings and the sources that produced it.

The prior's UV inputs (texture back-projected onto UV, neutral position map, expression map) cost
a head-model evaluation and a rasterisation per frame; they are computed once and stored under
``<root>/.uv_cache/<hash>/`` where ``<hash>`` is :func:`avatar_lightning.io.config_hash` of every
setting that changes them (map size, head model and its file's content, coefficient counts,
texture views, ...); ``config.json`` in it says what it holds. Each entry's key carries a
:func:`avatar_lightning.fingerprint.content_key` of what it was derived from (parameters, cameras,
files), so a changed setting or a changed source gives a new name and a stale entry is never read.
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
        recomputed and replaced rather than failing the run; our own writes are atomic.
        """
        path = self.path(key)
        if path.is_file():
            maps = self._read(path)
            if maps is not None:
                self.hits += 1
                return maps
        return self._write(key, compute)

    def ensure(self, key: str, compute: Callable[[], dict[str, Tensor]]) -> Path:
        """Make sure ``key`` is cached (without reading it back when it is); return its file."""
        path = self.path(key)
        if path.is_file():
            self.hits += 1
        else:
            self._write(key, compute)
        return path

    def _read(self, path: Path) -> dict[str, Tensor] | None:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch.load raises several unrelated types for corrupt files
            log.warning("UV cache file %s is unreadable (%s); recomputing it", path, err)
            return None

    def _write(self, key: str, compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        if not (self.dir / "config.json").is_file():
            write_json(self.dir / "config.json", self.config)
        maps = {k: v.detach().cpu().contiguous() for k, v in compute().items()}
        torch_save(self.path(key), maps)
        self.misses += 1
        return maps


def read_cached(path: Path) -> dict[str, Tensor]:
    """Read one cached map file (a dataset item), naming it if it is gone or unreadable."""
    if not path.is_file():
        raise FileNotFoundError(f"UV cache file missing: {path} (delete its folder to rebuild the cache)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises several unrelated types for corrupt files
        raise ValueError(f"UV cache file {path} is unreadable ({err}); delete it to rebuild") from err
