"""RealHeadNeRSembleDataModule on tiny VHAP exports of several subjects (the published layout,
``tests/real_fixtures.py``), and a shrunk CLI fit of ``experiments/realhead_prior_nersemble.yaml`` on them.

The expected maps are rebuilt from what the fixtures were made of (their FLAME parameters, OpenCV
cameras and image files), not from the loader's parse, so a wrong camera, frame or neutral pick shows.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_lightning.batch import REALHEAD_KEYS, validate_batch
from avatar_lightning.io import load_image
from avatar_lightning.realhead.inputs import backproject_features, expr_offset_map, region_mask, sobel_features
from data_modules.realhead_nersemble import RealHeadNeRSembleDataModule, camera_yaws
from data_modules.uv_cache import CACHE_DIR
from tests.real_fixtures import Truth, build_vhap_fixture, fixture_flame_path, fixture_head
from tests.test_experiments import EXPERIMENTS, _assert_ran, _run, _trainer_args

pytestmark = pytest.mark.usefixtures("one_thread")
RANK_ZERO = "lightning.pytorch.utilities.rank_zero"
#: (subject, sequence) exports; 074 has two sequences. Ids as NeRSemble writes them (leading zeros).
EXPORTS = (("017", "EMO-1"), ("074", "EMO-1"), ("074", "EXP-2"), ("104", "EMO-1"), ("140", "EMO-1"))
SPLIT = {"train_subjects": ["017", "074"], "val_subjects": ["104"], "test_subjects": ["140"]}
CAMERAS, FRONTAL, T, R = (2, 8, 14), 8, 3, 32  # fixture cameras at yaw -34°, 0°, +34°; camera 8 frontal
TOL = {"atol": 2e-3, "rtol": 1e-3}  # the maps are cached as float16


def folder(subject: str, sequence: str) -> str:
    return f"{subject}_{sequence}_v16_DS4_whiteBg_staticOffset_maskBelowLine"  # VHAP's NeRSemble recipe


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[Path, dict[str, Truth]]:
    root = tmp_path_factory.mktemp("nersemble_vhap")
    truths = {folder(*e): build_vhap_fixture(root / folder(*e), fixture_head(), n_timesteps=T, cameras=CAMERAS, seed=i)
              for i, e in enumerate(EXPORTS)}
    return root, truths


def make(root: Path, **kwargs) -> RealHeadNeRSembleDataModule:
    head = fixture_head()
    args = dict(SPLIT, downsample=1, n_shape=head.n_shape, n_expr=head.n_expr, uv_size=R,
                head_model=str(fixture_flame_path()), batch_size=2)
    args.update(kwargs)
    dm = RealHeadNeRSembleDataModule(str(root), **args)
    dm.setup("fit")
    return dm


def raster_and_mouth():
    head = fixture_head()
    raster = head.uv_raster(R)
    return head, raster, region_mask(head, raster, "mouth")


def expected_projection(root: Path, truth: Truth, t: int, cameras: list[int], sobel: bool) -> torch.Tensor:
    """Back-project the stored images of frame ``t`` from ``cameras`` with the fixture's own parameters."""
    head, raster, _ = raster_and_mouth()
    rgb = torch.stack([load_image(root / "images" / f"{t:05d}_{c:02d}.png")[:3] for c in cameras])
    masks = torch.stack([load_image(root / "fg_masks" / f"{t:05d}_{c:02d}.png")[:1] for c in cameras])
    features = sobel_features(rgb) if sobel else rgb
    return backproject_features(head, raster, features, masks, truth.K.expand(len(cameras), 3, 3),
                                torch.stack([truth.world_to_cam[c] for c in cameras]), truth.shape[:head.n_shape],
                                truth.expr[t, :head.n_expr], truth.pose[t], truth.translation[t])


def neutral(truths: dict[str, Truth], subject: str) -> tuple[str, int]:
    """(export folder, timestep) with the smallest ‖expr‖ + ‖jaw‖ over the subject's exports."""
    n_expr = fixture_head().n_expr
    frames = [(name, t) for name, truth in sorted(truths.items()) if name.startswith(subject + "_") for t in range(T)]
    return min(frames, key=lambda f: float(truths[f[0]].expr[f[1], :n_expr].norm() + truths[f[0]].pose[f[1], 2].norm()))


def items(dm: RealHeadNeRSembleDataModule, split: str):
    """(sample, item) pairs of a split."""
    return [(s, dm.datasets[split][i]) for i, s in enumerate(dm.splits[split])]


def test_batches_carry_the_realhead_keys(exports):
    root, _ = exports
    dm = make(root, views_per_sample=2)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        dims = validate_batch(batch, require_realhead=True)
        assert (dims["h"], dims["w"], dims["H"], dims["W"]) == (R, R, 64, 64)
        assert all(batch[k].dtype == torch.float32 and batch[k].shape[1] == 3 for k in REALHEAD_KEYS)
    assert next(iter(dm.train_dataloader()))["image"].shape[1] == 2  # V supervising views in training


def test_the_split_is_by_subject(exports):
    root, _ = exports
    dm = make(root)
    subjects = {k: {p.name.split("_")[0] for p in {s.root for s in dm.splits[k]}} for k in dm.splits}
    assert subjects == {"train": {"017", "074"}, "val": {"104"}, "test": {"140"}}
    identities = {k: {s.identity for s in dm.splits[k]} for k in dm.splits}
    assert identities == {"train": {0, 1}, "val": {2}, "test": {3}}
    # every frame of a subject is in its split, seen by every camera (supervision from any camera)
    assert {(s.root.name, s.local_frame, s.views[0].camera) for s in dm.splits["test"]} == \
        {(folder("140", "EMO-1"), t, c) for t in range(T) for c in CAMERAS}
    train = {(s.root.name, s.local_frame) for s in dm.splits["train"]}
    assert len(train) == 3 * T and {v.camera for s in dm.splits["train"] for v in s.views} == set(CAMERAS)
    # the two sequences of subject 074 share its identity and number their frames one after another
    frames = sorted({int(s.frame) for s in dm.splits["train"] if s.identity == 1})
    assert frames == [0, 1, 2, 3, 4, 5]


def test_conditioning_comes_from_the_frontal_camera(exports):
    """uv_mouth is camera 8's Sobel map of the sample's frame, whichever camera supervises it."""
    root, truths = exports
    dm = make(root, views_per_sample=1)
    _, _, mouth = raster_and_mouth()
    checked = set()
    for s, item in items(dm, "train"):
        truth, t = truths[s.root.name], s.local_frame
        expected = expected_projection(s.root, truth, t, [FRONTAL], sobel=True) * mouth
        torch.testing.assert_close(item["uv_mouth"], expected, **TOL)
        checked.add(s.views[0].camera)
        if s.views[0].camera != FRONTAL:  # the supervising camera's own map is another one
            own = expected_projection(s.root, truth, t, [s.views[0].camera], sobel=True) * mouth
            assert (item["uv_mouth"] - own).abs().max() > 0.1
        head = fixture_head()
        offsets = expr_offset_map(head, head.uv_raster(R), truth.expr[t:t + 1, :head.n_expr], truth.pose[t:t + 1, 2])
        torch.testing.assert_close(item["uv_expr_offset"], offsets[0], **TOL)
    assert checked == set(CAMERAS)
    assert item["uv_mouth"].mul(1 - mouth).abs().max() == 0  # only the mouth carries driving features
    assert (item["uv_mouth"].abs().sum(0) > 0).float().mul(mouth[0]).sum() > 0.25 * mouth.sum()  # lips are seen


def test_identity_texture_is_the_neutral_frame_with_the_mouth_zeroed(exports):
    root, truths = exports
    dm = make(root, identity_views="1", eval_identity_views="3")
    _, _, mouth = raster_and_mouth()
    assert {s.name: s.identity_cameras for s in dm.subjects.values()} == {n: [8, 2, 14] for n in ("017", "074",
                                                                                                  "104", "140")}
    for split, cameras in (("train", [FRONTAL]), ("val", [FRONTAL, 2, 14])):
        for s, item in {int(s.identity): (s, item) for s, item in items(dm, split)}.values():  # one per subject
            name, t = neutral(truths, s.root.name.split("_")[0])
            expected = expected_projection(root / name, truths[name], t, cameras, sobel=False) * (1 - mouth)
            torch.testing.assert_close(item["uv_identity"], expected, **TOL)
            assert item["uv_identity"].mul(mouth).abs().max() == 0
    seen = {n: (items(make(root, identity_views=n), "train")[0][1]["uv_identity"].abs().sum(0) > 0).sum()
            for n in ("1", "3")}
    assert seen["3"] > seen["1"] > 0.2 * (1 - mouth).sum()  # side views see texels the frontal one does not


def test_training_mixes_one_and_three_view_textures(exports):
    root, _ = exports
    dataset = make(root).datasets["train"]
    variants = {dataset[0]["uv_identity"].abs().sum().item() for _ in range(24)}
    assert len(variants) == 2


@pytest.mark.parametrize("views", [3, 1])
def test_fewshot_enrolls_a_held_out_subject_from_its_neutral_frame(exports, views):
    """NeRSemble as an enrollment subject (paper §IV-C1): the neutral frame's identity views in, every
    other image of the subject held out with its own frame's maps, the neutral frame numbered 0."""
    root, truths = exports
    dm = make(root)
    assert dm.split_identities() == {"train": [0, 1], "val": [2], "test": [3]}
    split = dm.fewshot(views=views)
    cams = [FRONTAL, 2, 14][:views]
    assert split.identity == 3 and split.input_cameras == cams  # the first test subject, frontal first
    inputs = split.inputs
    dims = validate_batch(inputs, require_realhead=True)
    assert (dims["B"], dims["V"]) == (1, views)
    name, t = neutral(truths, "140")
    truth = truths[name]
    _, _, mouth = raster_and_mouth()
    for v, cam in enumerate(cams):
        stored = load_image(root / name / "images" / f"{t:05d}_{cam:02d}.png")[:3]
        torch.testing.assert_close(inputs["image"][0, v], stored, atol=1e-6, rtol=0)
        torch.testing.assert_close(inputs["world_to_cam"][0, v], truth.world_to_cam[cam], atol=1e-5, rtol=0)
    identity = expected_projection(root / name, truth, t, cams, sobel=False) * (1 - mouth)
    torch.testing.assert_close(inputs["uv_identity"][0], identity, **TOL)
    mouth_map = expected_projection(root / name, truth, t, [FRONTAL], sobel=True) * mouth
    torch.testing.assert_close(inputs["uv_mouth"][0], mouth_map, **TOL)
    ev = split.evaluation
    assert len(ev) == T * len(CAMERAS) - views  # every other (frame, camera) of the subject
    seen = [(int(ev[i]["frame"]), int(ev[i]["identity"])) for i in range(len(ev))]
    assert {i for _, i in seen} == {3}
    assert sum(f == 0 for f, _ in seen) == len(CAMERAS) - views  # the neutral frame's other cameras
    assert sorted({f for f, _ in seen if f}) == sorted(k + 1 for k in range(T) if k != t)
    for i in range(len(ev)):
        f = int(ev[i]["frame"])
        k = t if f == 0 else f - 1
        head = fixture_head()
        offsets = expr_offset_map(head, head.uv_raster(R), truth.expr[k:k + 1, :head.n_expr], truth.pose[k:k + 1, 2])
        torch.testing.assert_close(ev[i]["uv_expr_offset"], offsets[0], **TOL)


def test_fewshot_refusals_name_the_field(exports):
    root, _ = exports
    dm = RealHeadNeRSembleDataModule(str(root), **SPLIT, downsample=1, n_shape=fixture_head().n_shape,
                                     n_expr=fixture_head().n_expr, uv_size=R, head_model=str(fixture_flame_path()))
    with pytest.raises(RuntimeError, match="setup"):
        dm.fewshot()
    dm.setup("fit")
    with pytest.raises(ValueError, match="views"):
        dm.fewshot(views=2)
    with pytest.raises(ValueError, match="tracking_noise"):
        dm.fewshot(tracking_noise={"expr": 0.1})
    with pytest.raises(ValueError, match="'140': 3"):
        dm.fewshot(identity=9)


def test_side_cameras_are_the_nearest_to_the_yaw(tmp_path):
    """Five cameras at yaw -34°, -17°, 0°, 17°, 34° (camera 8 in the middle): ±40° picks the outer pair,
    ±15° the inner one; ``side_cameras`` overrides the choice."""
    for i, subject in enumerate(("001", "002")):
        build_vhap_fixture(tmp_path / folder(subject, "EMO-1"), fixture_head(), n_timesteps=2,
                           cameras=(0, 2, 8, 14, 15), seed=10 + i)
    split = {"train_subjects": ["001"], "val_subjects": [], "test_subjects": ["002"]}
    dm = make(tmp_path, **split)
    seq = dm.subjects["001"].sequences[0]
    yaws = camera_yaws(seq.views[0], FRONTAL, seq.flame[0].translation)
    assert abs(yaws[8]) < 1 and np.sign(yaws[0]) == np.sign(yaws[2]) == -np.sign(yaws[15])
    torch.testing.assert_close(sorted(abs(yaws[c]) for c in (0, 2, 14, 15)), [17.2, 17.2, 34.4, 34.4], atol=1.5,
                               rtol=0)
    assert dm.subjects["001"].identity_cameras[0] == FRONTAL
    assert sorted(dm.subjects["001"].identity_cameras[1:]) == [0, 15]
    assert sorted(make(tmp_path, side_yaw_deg=15, **split).subjects["001"].identity_cameras[1:]) == [2, 14]
    assert make(tmp_path, side_cameras=[14, 2], **split).subjects["001"].identity_cameras == [8, 14, 2]


def test_maps_are_cached_beside_the_data_by_content(exports, tmp_path, caplog):
    src, truths = exports
    root = tmp_path / "data"
    for name in (folder("017", "EMO-1"), folder("140", "EMO-1")):
        shutil.copytree(src / name, root / name, ignore=shutil.ignore_patterns(CACHE_DIR))
    split = {"train_subjects": ["017"], "val_subjects": [], "test_subjects": ["140"]}

    def computed() -> int:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=RANK_ZERO):
            dm = make(root, **split)
        line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("3DRealHead maps"))
        assert dm.val_dataloader() == []  # no val_subjects: no validation
        return int(line.split(": ")[1].split(" computed")[0])

    assert computed() == 2 * T + 2 and computed() == 0  # every frame, and one identity per subject
    files = sorted((root / folder("017", "EMO-1") / CACHE_DIR).glob("*/*.pt"))
    assert len(files) == T + 1 and all(v.dtype == torch.float16 for v in torch.load(files[0]).values())
    seq = root / folder("017", "EMO-1")
    _, t = neutral({seq.name: truths[seq.name]}, "017")
    other = next(i for i in range(T) if i != t)
    with np.load(seq / f"flame_param/{other:05d}.npz") as npz:
        params = dict(npz)
    params["expr"] = params["expr"] + 1.0  # that (non-neutral) frame was re-tracked
    np.savez(seq / f"flame_param/{other:05d}.npz", **params)
    assert computed() == 1


def test_clear_errors(exports, tmp_path):
    root, _ = exports
    with pytest.raises(FileNotFoundError, match="test_subjects: subject '999' has no VHAP export under"):
        make(root, test_subjects=["999"])
    with pytest.raises(FileNotFoundError, match=r"train_subjects: subject '017' has no VHAP export matching "
                                                r"sequences \['EXP-\*'\]"):
        make(root, sequences=["EXP-*"])
    with pytest.raises(ValueError, match=r"frontal_camera 5 is not among the cameras \[2, 8, 14\] of .*017_EMO-1"):
        make(root, frontal_camera=5)
    with pytest.raises(ValueError, match="train_subjects is empty"):
        make(root, train_subjects=[])
    with pytest.raises(ValueError, match="test_subjects is empty"):
        make(root, test_subjects=[])
    with pytest.raises(ValueError, match="subject '074' is listed in both train_subjects and test_subjects"):
        make(root, test_subjects=["074"])
    with pytest.raises(ValueError, match=r"side_cameras \[2, 99\] are not all among the cameras"):
        make(root, side_cameras=[2, 99])
    with pytest.raises(FileNotFoundError, match="root: the folder of NeRSemble VHAP exports is not a folder"):
        make(tmp_path / "nowhere")
    two = tmp_path / "two"
    shutil.copytree(root / folder("017", "EMO-1"), two / folder("017", "EMO-1"))
    build_vhap_fixture(two / folder("200", "EMO-1"), fixture_head(), n_timesteps=2, cameras=(8, 14))
    with pytest.raises(ValueError, match="subject '200'.*needs two side cameras besides frontal_camera 8"):
        make(two, train_subjects=["017"], val_subjects=[], test_subjects=["200"])


def test_shrunk_fit_of_the_paper_config(exports, tmp_path):
    """experiments/realhead_prior_nersemble.yaml as shipped (bf16-mixed, DINO discriminator, its callbacks),
    shrunk: sizes, CPU, 2 steps, the adversarial term on from step 1, a random-weight DINO file."""
    from lightning.pytorch.cli import instantiate_class

    from avatar_lightning.lit.checkpoint import dataset_config
    from avatar_lightning.models.vit import ViT

    root, _ = exports
    dino = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(ViT().state_dict(), dino)
    head = fixture_head()
    data = {"root": root, "downsample": 2, "uv_size": 16, "n_shape": head.n_shape, "n_expr": head.n_expr,
            "head_model": fixture_flame_path(), "num_workers": 0, "max_val_samples": 2,
            **{k: "[" + ", ".join(f'"{s}"' for s in v) + "]" for k, v in SPLIT.items()}}
    model = {"levels": 2, "c_base": 128, "c_max": 16, "style_dim": 16, "disc_crop": 48, "adv_start": 1,
             "adv_ramp": 1, "dino_weights": dino}
    cli, recorder = _run(["fit", "-c", str(EXPERIMENTS / "realhead_prior_nersemble.yaml"),
                          *_trainer_args(2, tmp_path / "runs"), "--trainer.val_check_interval=2",
                          "--trainer.limit_val_batches=1",
                          *[f"--data.init_args.{k}={v}" for k, v in data.items()],
                          *[f"--model.init_args.{k}={v}" for k, v in model.items()]])
    _assert_ran(cli, recorder, 2)
    assert cli.trainer.precision == "bf16-mixed" and cli.model.hparams.disc_backbone == "dino"
    assert cli.model.hparams.uv_size == 16 and cli.model.hparams.n_expr == head.n_expr  # linked from the data
    assert cli.datamodule.hparams.train_subjects == ["017", "074"]
    assert math.isfinite(float(cli.trainer.callback_metrics["train/adv_d"]))
    assert math.isfinite(float(cli.trainer.callback_metrics["val/psnr"]))
    rebuilt = instantiate_class((), dataset_config(cli.datamodule))  # what a checkpoint records rebuilds the data
    assert isinstance(rebuilt, RealHeadNeRSembleDataModule)
    assert dict(rebuilt.hparams) == {k: v for k, v in cli.datamodule.hparams.items() if not k.startswith("_")}
