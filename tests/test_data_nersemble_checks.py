"""A VHAP export is checked as a whole at setup: mixed camera resolutions, extrinsics' axis convention."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules import NeRSembleDataModule
from data_modules.real_checks import head_on_frame
from tests.real_fixtures import GL_FROM_CV, build_vhap_fixture, fixture_head, fraction_inside

SIZE = 64


@pytest.fixture(scope="module")
def head():
    return fixture_head()


@pytest.fixture(scope="module")
def export(tmp_path_factory, head):
    root = tmp_path_factory.mktemp("vhap_checks") / "seq"
    build_vhap_fixture(root, head, n_timesteps=3, cameras=(2, 8, 14), size=SIZE)
    return root


def make(root: Path, head, **kwargs) -> NeRSembleDataModule:
    args = dict(n_shape=head.n_shape, n_expr=head.n_expr, train_ratio=1.0, views_per_sample=2, batch_size=6)
    args.update(kwargs)
    dm = NeRSembleDataModule([str(root)], **args)
    dm.setup("fit")
    return dm


def restored(src: Path, dst: Path, camera: int, w: int, h: int) -> Path:
    """A copy of the export where ``camera`` was stored at w x h (images, masks, per-frame w/h and K)."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "transforms.json").read_text())
    for frame in meta["frames"]:
        if frame["camera_index"] != camera:
            continue
        for key in ("file_path", "fg_mask_path"):
            with Image.open(dst / frame[key]) as im:
                im.resize((w, h), Image.NEAREST).save(dst / frame[key])
        sx, sy = w / frame["w"], h / frame["h"]
        frame.update(w=w, h=h, fl_x=frame["fl_x"] * sx, cx=frame["cx"] * sx, fl_y=frame["fl_y"] * sy,
                     cy=frame["cy"] * sy)
    (dst / "transforms.json").write_text(json.dumps(meta))
    return dst


def test_a_camera_at_another_resolution_is_resized_with_k_scaled(export, head, tmp_path, caplog):
    mixed = restored(export, tmp_path / "mixed", camera=14, w=96, h=96)
    with caplog.at_level(logging.INFO, logger="data_modules.real_checks"):
        dm = make(mixed, head)
    assert dm.image_size == (SIZE, SIZE)  # two of three cameras are 64x64
    assert "camera 14 stores 96x96 images; resized to 64x64 (K scaled)" in caplog.text
    for batch in dm.train_dataloader():  # mixing camera 14 with the others crashed in collate
        assert batch["image"].shape == (3, 2, 3, SIZE, SIZE)
    plain = make(export, head).datasets["train"]
    train = dm.datasets["train"]
    assert 14 in {v.camera for s in train.samples for v in s.views}
    for i in range(len(train)):
        item = train[i]
        torch.testing.assert_close(item["K"], plain[i]["K"])  # 1.5x K, resized by 2/3: the original K
        with torch.no_grad():
            verts = head(item["shape"][None], item["expr"][None], item["pose"][None],
                         item["translation"][None]).vertices[0]
        for v in range(2):
            hard = (item["mask"][v, 0] > 0.49).float()
            assert fraction_inside(verts, item["K"][v], item["world_to_cam"][v], hard) > 0.95


def test_downsampling_a_mixed_export_gives_one_size(export, head, tmp_path):
    mixed = restored(export, tmp_path / "mixed", camera=8, w=128, h=128)
    dm = make(mixed, head, downsample=2)
    assert dm.image_size == (32, 32)
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            assert batch["image"].shape[-2:] == (32, 32) and batch["mask"].shape[-2:] == (32, 32)
            assert torch.all(batch["K"][..., 0, 2] < 32) and torch.all(batch["K"][..., 0, 2] > 15)


def test_another_aspect_ratio_is_refused_naming_camera_and_sizes(export, head, tmp_path):
    odd = restored(export, tmp_path / "odd", camera=14, w=96, h=64)
    with pytest.raises(ValueError, match=r"odd: camera 14 stores 96x64 images but most views are 64x64 .*aspect"):
        make(odd, head)


def test_metadata_size_is_checked_at_setup(export, head, tmp_path):
    lying = restored(export, tmp_path / "lying", camera=2, w=SIZE, h=SIZE)
    meta = json.loads((lying / "transforms.json").read_text())
    for frame in meta["frames"]:
        if frame["camera_index"] == 2 and frame["timestep_index"] == 1:
            frame["w"] = 80
    (lying / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"camera 2 declares 80x64 for .*00001_02.png but 64x64 elsewhere"):
        make(lying, head)


def converted(src: Path, dst: Path, matrix) -> Path:
    """A copy of the export with every transform_matrix multiplied on the right by ``matrix``."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "transforms.json").read_text())
    for frame in meta["frames"]:
        frame["transform_matrix"] = (np.array(frame["transform_matrix"]) @ matrix).tolist()
    (dst / "transforms.json").write_text(json.dumps(meta))
    return dst


def test_opencv_extrinsics_are_refused_naming_the_convention(export, head, tmp_path):
    opencv = converted(export, tmp_path / "opencv", GL_FROM_CV)  # OpenGL -> OpenCV camera-to-world
    with pytest.raises(ValueError, match=r"opencv/transforms.json: the tracked head is behind or off the image of "
                                         r"camera\(s\) \[2, 8, 14\] in every frame\. transform_matrix must be "
                                         r"camera-to-world in the OpenGL convention.*read as OpenCV .* instead, "
                                         r"the head is in front of every camera"):
        make(opencv, head)


def test_a_camera_looking_away_is_refused_even_when_the_others_are_right(export, head, tmp_path):
    turned = converted(export, tmp_path / "turned", np.eye(4))
    meta = json.loads((turned / "transforms.json").read_text())
    for frame in meta["frames"]:
        if frame["camera_index"] == 8:  # turned 180 degrees about its own y axis: looks away from the head
            frame["transform_matrix"] = (np.array(frame["transform_matrix"]) @ np.diag([-1.0, 1, -1, 1])).tolist()
    (turned / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"camera\(s\) \[8\] in every frame.*OpenGL convention") as err:
        make(turned, head)
    assert "read as OpenCV" not in str(err.value)  # the other convention does not fit either


def test_one_stray_frame_is_only_warned_about(export, head, tmp_path, caplog):
    stray = converted(export, tmp_path / "stray", np.eye(4))
    with np.load(stray / "flame_param/00001.npz") as npz:
        params = dict(npz)
    params["translation"] = np.array([[5.0, 0.0, 0.0]], np.float32)  # 5 m to the side: off every image
    np.savez(stray / "flame_param/00001.npz", **params)
    with caplog.at_level(logging.WARNING, logger="data_modules.real_checks"):
        make(stray, head)
    assert "the tracked head is behind or off the image in 3 of 9 views" in caplog.text


def test_head_on_frame_reference():
    K = torch.tensor([[100.0, 0, 50], [0, 100, 40], [0, 0, 1]]).expand(5, 3, 3)
    w2c = torch.eye(4).expand(5, 4, 4)
    size = torch.tensor([80, 100]).expand(5, 2)  # H, W
    # centre; behind; right edge + 0.24 W; right edge + 0.26 W; below + 0.3 H
    points = torch.tensor([[0.0, 0, 1], [0, 0, -1], [0.74, 0, 1], [0.76, 0, 1], [0, 0.64, 1]])
    assert head_on_frame(points, w2c, K, size).tolist() == [True, False, True, False, False]
