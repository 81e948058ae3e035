"""NeRSembleDataModule on a tiny VHAP export (``export_as_nerf_dataset``) written in the published format."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_lightning.batch import validate_batch
from avatar_lightning.io import save_image
from data_modules import NeRSembleDataModule
from data_modules.few_shot import farthest_point_sampling
from tests.real_fixtures import build_vhap_fixture, fixture_head, fraction_inside

RANK_ZERO = "lightning.pytorch.utilities.rank_zero"  # the logger rank_zero_info writes to

T, CAMERAS = 6, (2, 8, 14)  # camera 8 is NeRSemble's frontal camera


@pytest.fixture(scope="module")
def head():
    return fixture_head()


@pytest.fixture(scope="module")
def export(tmp_path_factory, head):
    root = tmp_path_factory.mktemp("vhap") / "seq"
    return root, build_vhap_fixture(root, head, n_timesteps=T, cameras=CAMERAS, static_offset=True)


def make(root: Path, head, **kwargs) -> NeRSembleDataModule:
    args = dict(n_shape=head.n_shape, n_expr=head.n_expr, batch_size=2, train_ratio=0.5)
    args.update(kwargs)
    dm = NeRSembleDataModule([str(root)], **args)
    dm.setup("fit")
    return dm


def posed(head, batch: dict, k: int) -> torch.Tensor:
    with torch.no_grad():
        return head(batch["shape"][k:k + 1], batch["expr"][k:k + 1], batch["pose"][k:k + 1],
                    batch["translation"][k:k + 1]).vertices[0]


def fractions(head, batch: dict, world_to_cam: torch.Tensor | None = None, K: torch.Tensor | None = None):
    w2c = batch["world_to_cam"] if world_to_cam is None else world_to_cam
    K = batch["K"] if K is None else K
    B, V = batch["K"].shape[:2]
    return [fraction_inside(posed(head, batch, b), K[b, v], w2c[b, v], batch["mask"][b, v, 0])
            for b in range(B) for v in range(V)]


def test_head_projected_with_loaded_params_lands_on_mask(export, head):
    root, truth = export
    dm = make(root, head, views_per_sample=2)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            dims = validate_batch(batch)
            assert dims["H"] == dims["W"] == 64
            assert min(fractions(head, batch)) > 0.95
            for b, t in enumerate(batch["frame"].tolist()):
                torch.testing.assert_close(batch["pose"][b], truth.pose[t])
                torch.testing.assert_close(batch["translation"][b], truth.translation[t])
                torch.testing.assert_close(batch["expr"][b], truth.expr[t, :head.n_expr])
    assert batch["static_offset"].shape[1:] == (head.num_vertices, 3)


def test_wrong_conventions_miss_the_mask(export, head):
    """OpenGL matrices used without the axis flip, or without inverting, put the head off its mask."""
    root, _ = export
    batch = next(iter(make(root, head, batch_size=3, views_per_sample=2).train_dataloader()))
    c2w_cv = torch.linalg.inv(batch["world_to_cam"])
    c2w_gl = c2w_cv @ torch.diag(torch.tensor([1.0, -1, -1, 1]))
    assert max(fractions(head, batch, world_to_cam=torch.linalg.inv(c2w_gl))) < 0.5  # no flip
    assert max(fractions(head, batch, world_to_cam=c2w_cv)) < 0.5  # no inverse


def test_vhap_split(export, head):
    root, _ = export
    dm = make(root, head)
    cams = {k: sorted({v.camera for s in dm.splits[k] for v in s.views}) for k in dm.splits}
    frames = {k: sorted({s.frame for s in dm.splits[k]}) for k in dm.splits}
    assert cams == {"train": [2, 14], "val": [8], "test": [2, 8, 14]}
    assert frames == {"train": [0, 1, 2], "val": [0, 1, 2], "test": [3, 4, 5]}
    assert len(dm.splits["train"]) == 3 * 2 and len(dm.splits["test"]) == 3 * 3
    assert [len(s.views) for s in make(root, head, views_per_sample=2).splits["train"]] == [2] * 3


def test_few_shot_and_downsampling(export, head):
    root, truth = export
    dm = make(root, head, few_shot=2, downsample=2, batch_size=4)
    expected = farthest_point_sampling(truth.expr[:3, :head.n_expr], 2).tolist()
    assert sorted({s.frame for s in dm.splits["train"]}) == sorted(expected)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[-2:] == (32, 32) and dm.image_size == (32, 32)
    full = make(root, head, batch_size=4)
    torch.testing.assert_close(batch["K"][0, 0, :2], full.datasets["train"][0]["K"][0, :2] / 2)
    hard = batch | {"mask": (batch["mask"] > 0.49).float()}
    assert min(fractions(head, hard)) > 0.95
    unscaled = batch["K"].clone()
    unscaled[..., :2, :] *= 2
    assert max(fractions(head, hard, K=unscaled)) < 0.5


def test_non_dividing_downsampling_resizes_and_scales_k(export, head):
    """64 px by 3 -> 21 px (NeRSemble's 4x of 2200 px is exact, other exports need not be)."""
    root, _ = export
    batch = next(iter(make(root, head, downsample=3, batch_size=3).train_dataloader()))
    assert batch["image"].shape[-2:] == (21, 21)
    full = make(root, head).datasets["train"][0]["K"][0]
    torch.testing.assert_close(batch["K"][0, 0, :2], full[:2] * 21 / 64)
    hard = batch | {"mask": (batch["mask"] > 0.49).float()}
    assert min(fractions(head, hard)) > 0.95


def test_background_is_recomposited(export, head):
    root, _ = export
    batch = next(iter(make(root, head, background=(0.0, 0.0, 0.0)).val_dataloader()))
    outside = batch["mask"].expand_as(batch["image"]) == 0
    assert batch["image"][outside].abs().max() == 0
    white = next(iter(make(root, head).val_dataloader()))
    inside = batch["mask"].expand_as(batch["image"]) == 1
    torch.testing.assert_close(batch["image"][inside], white["image"][inside])


def test_sequences_of_one_subject_share_an_identity(export, head):
    root, _ = export
    dm = NeRSembleDataModule(
        [str(root), str(root)], identities=[3, 3], n_shape=head.n_shape, n_expr=head.n_expr, train_ratio=0.5)
    dm.setup("fit")
    assert {s.identity for s in dm.splits["train"]} == {3} and len(dm.splits["train"]) == 2 * 6
    # the second sequence's timesteps follow the first's, so (identity, frame) stays unique
    assert sorted({s.frame for s in dm.splits["train"]}) == [0, 1, 2, 6, 7, 8]
    assert dm.num_identities == 1
    with pytest.raises(ValueError, match="identities has 1 entries but roots has 2"):
        NeRSembleDataModule([str(root), str(root)], identities=[0])


def test_summary_is_logged(export, head, caplog):
    root, _ = export
    with caplog.at_level(logging.INFO, logger=RANK_ZERO):
        make(root, head)
    assert "NeRSemble (VHAP): 1 identities; train: 6 samples (3 frames, 2 cameras)" in caplog.text


def edited(root: Path, dst: Path, edit) -> Path:
    shutil.copytree(root, dst)
    meta = json.loads((dst / "transforms.json").read_text())
    edit(meta)
    (dst / "transforms.json").write_text(json.dumps(meta))
    return dst


def test_clear_errors(export, head, tmp_path):
    root, _ = export
    with pytest.raises(FileNotFoundError, match="NeRSemble root is not a folder: .*nowhere"):
        make(tmp_path / "nowhere", head)
    drop = edited(root, tmp_path / "drop", lambda m: m["frames"].pop(4))
    with pytest.raises(ValueError, match="timestep 1 has cameras \\[2, 14\\].*mismatched frame counts"):
        make(drop, head)
    no_flame = edited(root, tmp_path / "no_flame", lambda m: None)
    (no_flame / "flame_param/00002.npz").unlink()
    with pytest.raises(FileNotFoundError, match="FLAME parameter file not found: .*00002.npz"):
        make(no_flame, head)
    corrupt = edited(root, tmp_path / "corrupt", lambda m: None)
    (corrupt / "flame_param/00001.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read FLAME parameter file .*00001.npz"):
        make(corrupt, head)
    broken = edited(root, tmp_path / "broken", lambda m: None)
    (broken / "transforms.json").write_text("{")
    with pytest.raises(ValueError, match="VHAP transforms file .*broken/transforms.json is not valid JSON"):
        make(broken, head)
    keyless = edited(root, tmp_path / "keyless", lambda m: m["frames"][0].pop("transform_matrix"))
    with pytest.raises(KeyError, match=r"frames\[0\] lacks field\(s\) \['transform_matrix'\]"):
        make(keyless, head)


def test_missing_and_corrupt_images_name_the_file(export, head, tmp_path):
    root, _ = export
    bad = edited(root, tmp_path / "bad", lambda m: None)
    dm = make(bad, head)
    (bad / "images/00000_08.png").unlink()
    (bad / "fg_masks/00001_08.png").write_bytes(b"junk")
    with pytest.raises(FileNotFoundError, match="00000_08.png"):
        dm.datasets["val"][0]
    with pytest.raises(ValueError, match="cannot decode image .*fg_masks/00001_08.png"):
        dm.datasets["val"][1]
    save_image(bad / "images/00002_08.png", np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(ValueError, match="00002_08.png is 12x10 but its metadata says 64x64"):
        dm.datasets["val"][2]
