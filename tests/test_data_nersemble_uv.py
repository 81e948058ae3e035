"""The UV-input cache beside the data (keyed by config) and its use by the real-data DataModules."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from avatar_lightning.batch import validate_batch
from avatar_lightning.head.uv import position_map, uv_rasterize
from avatar_lightning.io import save_image
from data_modules import INSTADataModule, NeRSembleDataModule
from data_modules.uv_cache import CACHE_DIR, UVCache
from tests.real_fixtures import build_insta_fixture, build_vhap_fixture, fixture_flame_path, fixture_head

RANK_ZERO = "lightning.pytorch.utilities.rank_zero"  # the logger rank_zero_info writes to


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


SKIN = torch.tensor([200.0, 160.0, 140.0]) / 255  # the fixtures' mean foreground colour


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("vhap_uv") / "seq"
    build_vhap_fixture(root, fixture_head(), n_timesteps=4, cameras=(2, 8, 14), static_offset=True)
    return root


def nersemble(root, **kwargs) -> NeRSembleDataModule:
    head = fixture_head()
    dm = NeRSembleDataModule([str(root)], n_shape=head.n_shape, n_expr=head.n_expr, train_ratio=0.5, uv_size=32,
                             head_model=str(fixture_flame_path()), batch_size=2, **kwargs)
    dm.setup("fit")
    return dm


def assert_texture_is_the_head(batch: dict) -> None:
    """Back-projecting through the loaded cameras must land on the head: skin colour, wide coverage."""
    raster_valid = batch["uv_position"].abs().sum(1) > 0  # [B, h, w] texels of the layout
    seen = batch["uv_texture"].abs().sum(1) > 0
    assert (seen.sum() / raster_valid.sum()) > 0.2
    mean = batch["uv_texture"].permute(0, 2, 3, 1)[seen].mean(0)
    torch.testing.assert_close(mean, SKIN, atol=0.06, rtol=0)


def test_nersemble_uv_inputs_are_cached_and_right(export, caplog):
    with caplog.at_level(logging.INFO, logger=RANK_ZERO):
        dm = nersemble(export, texture_cameras=[8])
    assert "UV inputs 32x32: 2 computed" in caplog.text  # 2 training timesteps x camera 8
    batch = next(iter(dm.train_dataloader()))
    dims = validate_batch(batch, require_uv=True)
    assert dims["h"] == dims["w"] == 32
    assert_texture_is_the_head(batch)
    head = fixture_head()
    raster = uv_rasterize(head.uv_coords, head.uv_faces, 32)
    neutral = head.canonical(batch["shape"][:1], torch.zeros_like(batch["expr"][:1]))[0]
    torch.testing.assert_close(batch["uv_position"][0], position_map(raster, neutral, head.faces))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=RANK_ZERO):
        nersemble(export, texture_cameras=[8])
    assert "UV inputs 32x32: 0 computed" in caplog.text
    with pytest.raises(ValueError, match=r"texture_cameras \[5\] are not among cameras \[2, 8, 14\]"):
        nersemble(export, texture_cameras=[5])
    with pytest.raises(ValueError, match=r"static_offset has \d+ vertices but head .*teeth=True"):
        nersemble(export, teeth=True)  # the fixture's offsets are for the head without teeth


def test_insta_uv_inputs(tmp_path):
    head = fixture_head()
    build_insta_fixture(tmp_path / "actor", head, n_frames=6, tracker_dir=tmp_path / "tracker")
    dm = INSTADataModule([str(tmp_path / "actor")], tracker_dirs=[str(tmp_path / "tracker")], n_test=2, n_val=1,
                         n_shape=head.n_shape, n_expr=head.n_expr, uv_size=32, head_model=str(fixture_flame_path()),
                         batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    validate_batch(batch, require_uv=True)
    assert_texture_is_the_head(batch)
    assert (tmp_path / "actor" / CACHE_DIR).is_dir()


def computed(caplog) -> int:
    """How many UV-input files were computed since ``caplog.clear()`` (from the summary lines)."""
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("UV inputs")]
    return sum(int(line.split(": ")[1].split(" computed")[0]) for line in lines)


def test_changed_sources_with_the_same_settings_are_recomputed(export, tmp_path, caplog):
    """The cache is keyed by what the maps come from: a re-tracked frame, a replaced image, a
    replaced FLAME file (same path, same settings) each give new maps; unchanged data none."""
    root = tmp_path / "seq"
    shutil.copytree(export, root)
    shutil.copytree(fixture_flame_path().parent, tmp_path / "flame")  # the model and its UV template
    flame = tmp_path / "flame" / fixture_flame_path().name
    head = fixture_head()

    def build():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=RANK_ZERO):
            dm = NeRSembleDataModule([str(root)], n_shape=head.n_shape, n_expr=head.n_expr, train_ratio=0.5,
                                     uv_size=16, head_model=str(flame), texture_cameras=[8], batch_size=2)
            dm.setup("fit")
        items = {int(s.local_frame): dm.datasets["train"][i] for i, s in enumerate(dm.splits["train"])}
        return computed(caplog), {t: {k: v for k, v in x.items() if k.startswith("uv_")} for t, x in items.items()}

    n, first = build()
    assert n == 4 and build()[0] == 0  # frames 0, 1 (train, val) and 2, 3 (test), from camera 8
    with np.load(root / "flame_param/00001.npz") as npz:
        params = dict(npz)
    params["expr"] = params["expr"] + 0.5  # the frame was re-tracked
    np.savez(root / "flame_param/00001.npz", **params)
    n, second = build()
    assert n == 1
    assert not torch.equal(second[1]["uv_expression"], first[1]["uv_expression"])
    torch.testing.assert_close(second[0], first[0])
    image = np.array(Image.open(root / "images/00000_08.png"))
    image[..., 1] = 0  # the texture view was replaced: no green
    save_image(root / "images/00000_08.png", image)
    n, third = build()
    assert n == 1 and not torch.equal(third[0]["uv_texture"], first[0]["uv_texture"])
    with open(flame, "ab") as f:  # the FLAME file at the same path changed (pickle ignores trailing bytes)
        f.write(b"\n")
    assert build()[0] == 4
