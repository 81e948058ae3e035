"""INSTADataModule on a tiny INSTA actor (+ metrical-tracker checkpoints) written in the published format."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from avatar_lightning.batch import validate_batch
from data_modules import INSTADataModule
from data_modules.few_shot import farthest_point_sampling
from tests.real_fixtures import build_insta_fixture, fixture_flame_path, fixture_head, fraction_inside

RANK_ZERO = "lightning.pytorch.utilities.rank_zero"  # the logger rank_zero_info writes to

N_FRAMES, N_TEST, N_VAL = 12, 4, 2


@pytest.fixture(scope="module")
def head():
    return fixture_head()


@pytest.fixture(scope="module")
def actor(tmp_path_factory, head):
    root = tmp_path_factory.mktemp("insta")
    truth = build_insta_fixture(root / "actor", head, n_frames=N_FRAMES, tracker_dir=root / "tracker")
    return root, truth


def make(root: Path, head, tracker: bool = True, **kwargs) -> INSTADataModule:
    args = dict(n_test=N_TEST, n_val=N_VAL, n_shape=head.n_shape, n_expr=head.n_expr, batch_size=4)
    args.update(kwargs)
    dm = INSTADataModule([str(root / "actor")], tracker_dirs=[str(root / "tracker")] if tracker else None, **args)
    dm.setup("fit")
    return dm


def all_batches(dm: INSTADataModule):
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        yield from loader


def posed(head, batch: dict, k: int) -> torch.Tensor:
    with torch.no_grad():
        return head(batch["shape"][k:k + 1], batch["expr"][k:k + 1], batch["pose"][k:k + 1],
                    batch["translation"][k:k + 1]).vertices[0]


def test_head_projected_with_loaded_params_lands_on_mask(actor, head):
    root, truth = actor
    dm = make(root, head)
    seen = 0
    for batch in all_batches(dm):
        validate_batch(batch)
        for k in range(batch["frame"].shape[0]):
            t = int(batch["frame"][k])
            torch.testing.assert_close(batch["pose"][k], truth.pose[t], atol=1e-5, rtol=0)
            torch.testing.assert_close(batch["expr"][k], truth.expr[t, :head.n_expr])
            torch.testing.assert_close(batch["shape"][k], truth.shape[:head.n_shape])
            verts = posed(head, batch, k)
            assert fraction_inside(verts, batch["K"][k, 0], batch["world_to_cam"][k, 0], batch["mask"][k, 0, 0]) > 0.95
            seen += 1
    assert seen == N_FRAMES + N_VAL


def test_wrong_conventions_miss_the_mask(actor, head):
    """The check above can fail: camera-to-world taken for world-to-camera, OpenGL axes, no principal point."""
    root, _ = actor
    batch = next(iter(make(root, head, batch_size=N_FRAMES).test_dataloader()))
    flip = torch.diag(torch.tensor([1.0, -1, -1, 1]))
    no_pp = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 0]])
    for k in range(batch["frame"].shape[0]):
        K, w2c, mask = batch["K"][k, 0], batch["world_to_cam"][k, 0], batch["mask"][k, 0, 0]
        verts = posed(head, batch, k)
        assert fraction_inside(verts, K, torch.linalg.inv(w2c), mask) < 0.5
        assert fraction_inside(verts, K, flip @ w2c, mask) < 0.5
        assert fraction_inside(verts, K * no_pp + torch.eye(3) * (1 - no_pp), w2c, mask) < 0.5


def test_split_is_time_ordered_last_frames(actor, head):
    root, _ = actor
    dm = make(root, head)
    frames = {k: [s.frame for s in v] for k, v in dm.splits.items()}
    assert sorted(frames["train"]) == list(range(N_FRAMES - N_TEST))
    assert frames["test"] == list(range(N_FRAMES - N_TEST, N_FRAMES))  # despite the shuffled transforms.json
    assert frames["val"] == list(range(N_FRAMES - N_VAL, N_FRAMES))
    with pytest.raises(ValueError, match="n_test"):
        make(root, head, n_test=N_FRAMES)
    assert make(root, head, n_val=0).val_dataloader() == []  # Lightning skips an empty loader list


def test_few_shot_picks_farthest_expressions(actor, head):
    root, truth = actor
    dm = make(root, head, few_shot=3)
    train = list(range(N_FRAMES - N_TEST))
    expected = farthest_point_sampling(truth.expr[train, :head.n_expr], 3).tolist()
    assert [s.frame for s in dm.splits["train"]] == [train[i] for i in expected]
    assert len(dm.datasets["train"]) == 3


def test_downsampling_scales_intrinsics(actor, head):
    root, _ = actor
    full = next(iter(make(root, head, batch_size=1).val_dataloader()))
    half = next(iter(make(root, head, batch_size=1, downsample=2).val_dataloader()))
    assert half["image"].shape[-2:] == (32, 32)
    torch.testing.assert_close(half["K"][0, 0, :2], full["K"][0, 0, :2] / 2)
    torch.testing.assert_close(half["image"], torch.nn.functional.avg_pool2d(full["image"][:, 0], 2)[:, None])
    verts = posed(head, half, 0)
    mask = (half["mask"][0, 0, 0] > 0.49).float()
    assert fraction_inside(verts, half["K"][0, 0], half["world_to_cam"][0, 0], mask) > 0.95
    assert fraction_inside(verts, full["K"][0, 0], half["world_to_cam"][0, 0], mask) < 0.5


def test_rgba_is_composited_on_background(actor, head):
    root, _ = actor
    batch = next(iter(make(root, head, background=(0.0, 0.5, 1.0)).val_dataloader()))
    outside = batch["mask"][:, :, 0] == 0
    for c, value in enumerate((0.0, 0.5, 1.0)):
        assert torch.all(batch["image"][:, :, c][outside] == value)
    assert torch.all(batch["background"] == torch.tensor([0.0, 0.5, 1.0]))


def test_without_tracker_expressions_come_from_txt(actor, head, caplog):
    root, truth = actor
    with caplog.at_level(logging.INFO, logger=RANK_ZERO):
        dm = make(root, head, tracker=False)
    assert "INSTA: 1 identities; train: 8 samples" in caplog.text and "exp txt" in caplog.text
    for s in dm.splits["train"]:
        torch.testing.assert_close(s.flame.expr, truth.expr[s.frame, :head.n_expr])
        assert not s.flame.pose.any() and not s.flame.shape.any()


def copy_actor(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_clear_errors(actor, head, tmp_path):
    root, _ = actor
    with pytest.raises(FileNotFoundError, match="nowhere"):
        INSTADataModule([str(tmp_path / "nowhere")]).setup("fit")
    no_exp = copy_actor(root, tmp_path / "no_exp")
    (no_exp / "actor/flame/exp/00003.txt").unlink()
    with pytest.raises(FileNotFoundError, match="FLAME expression file not found: .*00003.txt"):
        make(no_exp, head)
    no_ckpt = copy_actor(root, tmp_path / "no_ckpt")
    (no_ckpt / "tracker/checkpoint/00005.frame").unlink()
    with pytest.raises(ValueError, match=r"no checkpoint for image\(s\) \[5\].*mismatched frame counts"):
        make(no_ckpt, head)
    keyless = copy_actor(root, tmp_path / "keyless")
    meta = json.loads((keyless / "actor/transforms.json").read_text())
    del meta["frames"][3]["exp_path"]
    (keyless / "actor/transforms.json").write_text(json.dumps(meta))
    with pytest.raises(KeyError, match=r"frames\[3\] \(as listed\) lacks field\(s\) \['exp_path'\]"):
        make(keyless, head)
    with pytest.raises(ValueError, match="tracker_dirs has 2 entries"):
        INSTADataModule([str(root / "actor")], tracker_dirs=["a", "b"])


def test_missing_and_corrupt_images_name_the_file(actor, head, tmp_path):
    root, _ = actor
    bad = copy_actor(root, tmp_path / "bad")
    dm = make(bad, head, batch_size=1)
    (bad / "actor/images/00011.png").write_bytes(b"not a png")
    (bad / "actor/images/00010.png").unlink()
    val = dm.datasets["val"]
    with pytest.raises(FileNotFoundError, match="00010.png"):
        val[0]
    with pytest.raises(ValueError, match="cannot decode image .*00011.png"):
        val[1]
    (bad / "tracker/checkpoint/00001.frame").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="00001.frame"):
        make(bad, head)


def test_without_tracker_the_head_is_fitted_to_the_meshes(actor, head):
    """exp txt + meshes only: shape, jaw and eyes are recovered, and the head lands on the mask again."""
    root, truth = actor
    dm = make(root, head, tracker=False, fit_meshes=True, head_model=str(fixture_flame_path()))
    batch = next(iter(make(root, head, tracker=False).test_dataloader()))  # zero shape/jaw: off the mask edges
    fitted = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(fitted["shape"][0], truth.shape[:head.n_shape], atol=2e-3, rtol=0)
    for k, t in enumerate(fitted["frame"].tolist()):
        torch.testing.assert_close(fitted["pose"][k, 2], truth.pose[t, 2], atol=2e-3, rtol=0)
        assert fraction_inside(posed(head, fitted, k), fitted["K"][k, 0], fitted["world_to_cam"][k, 0],
                               fitted["mask"][k, 0, 0]) > 0.95
    assert not batch["shape"].any()
    wrong = INSTADataModule([str(root / "actor")], n_test=N_TEST, n_val=N_VAL, fit_meshes=True, n_shape=10, n_expr=8)
    with pytest.raises(ValueError, match="meshes have .* vertices but head model"):
        wrong.setup("fit")  # the default built-in head is not the head the meshes were made with


def test_tracker_offset_matches_flashavatar_numbering(actor, head, tmp_path):
    """Images and checkpoints numbered apart (FlashAvatar: image = checkpoint + 1); here checkpoint = image + 1."""
    root, truth = actor
    shifted = tmp_path / "tracker/checkpoint"
    shifted.mkdir(parents=True)
    for path in (root / "tracker/checkpoint").glob("*.frame"):
        (shifted / f"{int(path.stem) + 1:05d}.frame").write_bytes(path.read_bytes())
    dm = INSTADataModule([str(root / "actor")], tracker_dirs=[str(tmp_path / "tracker")], tracker_offset=-1,
                         n_test=N_TEST, n_val=N_VAL, n_shape=head.n_shape, n_expr=head.n_expr)
    dm.setup("fit")
    for s in dm.splits["train"]:
        torch.testing.assert_close(s.flame.pose, truth.pose[s.frame], atol=1e-5, rtol=0)


def test_opengl_extrinsics_are_refused_naming_the_convention(actor, head, tmp_path):
    root, _ = actor
    gl = copy_actor(root, tmp_path / "gl")
    meta = json.loads((gl / "actor/transforms.json").read_text())
    for frame in meta["frames"]:  # what a NeRF-style (OpenGL) export of the same cameras would hold
        frame["transform_matrix"] = (torch.tensor(frame["transform_matrix"], dtype=torch.float64)
                                     @ torch.diag(torch.tensor([1.0, -1, -1, 1], dtype=torch.float64))).tolist()
    (gl / "actor/transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"gl/actor/transforms.json: the tracked head is behind or off the image of "
                                         r"camera\(s\) \[0\] in every frame\. transform_matrix must be camera-to-world "
                                         r"in the OpenCV convention.*read as OpenGL .* instead, the head is in front"):
        make(gl, head, tracker=False)
    make(root, head, tracker=False)  # the published layout passes


def test_actors_at_different_resolutions_share_one_size(actor, head, tmp_path):
    """Two actors, 64 px and 96 px, as many frames each: the larger size wins, K follows each image."""
    root, _ = actor
    big = tmp_path / "big"
    build_insta_fixture(big / "actor", head, n_frames=N_FRAMES, size=96, seed=1, tracker_dir=big / "tracker")
    dm = INSTADataModule([str(root / "actor"), str(big / "actor")],
                         tracker_dirs=[str(root / "tracker"), str(big / "tracker")], n_test=N_TEST, n_val=N_VAL,
                         n_shape=head.n_shape, n_expr=head.n_expr, batch_size=2 * N_FRAMES)
    dm.setup("fit")
    assert dm.image_size == (96, 96)
    batch = next(iter(dm.test_dataloader()))  # both actors in one batch
    assert batch["image"].shape == (2 * N_TEST, 1, 3, 96, 96) and set(batch["identity"].tolist()) == {0, 1}
    for k in range(2 * N_TEST):
        hard = (batch["mask"][k, 0, 0] > 0.49).float()
        assert fraction_inside(posed(head, batch, k), batch["K"][k, 0], batch["world_to_cam"][k, 0], hard) > 0.95


def test_image_size_is_checked_against_the_metadata_at_setup(actor, head, tmp_path):
    lying = copy_actor(actor[0], tmp_path / "lying")
    meta = json.loads((lying / "actor/transforms.json").read_text())
    meta["w"] = 80
    (lying / "actor/transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"images/\d+.png is 64x64 but its metadata says 80x64"):
        make(lying, head)


def test_mesh_fit_cache_is_keyed_by_the_content_it_was_fitted_to(actor, head, tmp_path, monkeypatch):
    """Same settings, changed meshes / expressions / FLAME file: fitted again; unchanged: read back."""
    import data_modules.insta_meshfit as meshfit

    root = copy_actor(actor[0], tmp_path / "copy") / "actor"
    shutil.copytree(fixture_flame_path().parent, tmp_path / "flame")
    flame = tmp_path / "flame" / fixture_flame_path().name
    fitted = []

    def fake_fit(head, meshes, expr, **kwargs):
        fitted.append(float(meshes.sum() + expr.sum()))
        return meshfit.MeshFit(torch.zeros(head.n_shape), torch.zeros(len(meshes), 5, 3), fitted[-1])

    monkeypatch.setattr(meshfit, "fit_meshes", fake_fit)
    paths = sorted((root / "meshes").glob("*.obj"))
    expr = torch.zeros(len(paths), head.n_expr)

    def rmse(e: torch.Tensor = expr) -> float:
        return meshfit.cached_mesh_fit(root, head, str(flame), paths, e).rmse

    assert rmse() == rmse() == fitted[0] and len(fitted) == 1
    lines = paths[3].read_text().splitlines()
    x, y, z = map(float, lines[0].split()[1:])
    paths[3].write_text("\n".join([f"v {x + 0.5:.6f} {y:.6f} {z:.6f}"] + lines[1:]) + "\n")  # re-tracked frame
    assert rmse() == pytest.approx(fitted[0] + 0.5) and len(fitted) == 2
    assert rmse(expr + 1) == pytest.approx(fitted[1] + expr.numel()) and len(fitted) == 3
    with open(flame, "ab") as f:  # the FLAME file at the same path changed (pickle ignores trailing bytes)
        f.write(b"\n")
    rmse()
    assert len(fitted) == 4
