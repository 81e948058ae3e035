"""The UV-input cache beside the data (keyed by config) and its use by the real-data DataModules."""

from __future__ import annotations

import json

import torch

from data_modules.uv_cache import CACHE_DIR, UVCache


def test_cache_computes_once_per_config(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"uv_position": torch.full((3, 4, 4), float(len(calls)))}

    cache = UVCache(tmp_path, {"uv_size": 4, "head": "builtin"})
    first = cache.get("0_00001", compute)
    again = UVCache(tmp_path, {"head": "builtin", "uv_size": 4}).get("0_00001", compute)  # key order is irrelevant
    assert len(calls) == 1 and torch.equal(first["uv_position"], again["uv_position"])
    assert json.loads((cache.dir / "config.json").read_text()) == {"head": "builtin", "uv_size": 4}
    assert cache.dir.parent == tmp_path / CACHE_DIR
    other = UVCache(tmp_path, {"uv_size": 8, "head": "builtin"})
    assert other.dir != cache.dir
    assert other.get("0_00001", compute)["uv_position"][0, 0, 0] == 2  # a new config recomputes


def test_unreadable_cache_file_is_recomputed(tmp_path):
    cache = UVCache(tmp_path, {"uv_size": 4})
    cache.get("k", lambda: {"uv_texture": torch.zeros(3, 2, 2)})
    cache.path("k").write_bytes(b"truncated")
    fresh = UVCache(tmp_path, {"uv_size": 4})
    out = fresh.get("k", lambda: {"uv_texture": torch.ones(3, 2, 2)})
    assert out["uv_texture"].min() == 1 and fresh.misses == 1
    assert UVCache(tmp_path, {"uv_size": 4}).get("k", lambda: {})["uv_texture"].min() == 1
