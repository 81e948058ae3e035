"""INSTA (and the tracker's output) as a 3DRealHead enrollment subject: ``RealHeadINSTADataModule``.

Fixtures: a tiny INSTA actor with metrical-tracker checkpoints (``tests/real_fixtures.py``) rendered
with the built-in head, so the 2-step 3DRealHead prior of ``tests/realhead_fixtures.py`` can be
enrolled on it through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avatar_lightning.batch import validate_batch
from avatar_lightning.cli import AvatarCLI
from avatar_lightning.head import load_head_model
from avatar_lightning.realhead.inputs import expr_offset_map, region_mask
from data_modules.realhead_insta import ConditionedFrames, RealHeadINSTADataModule
from tests.real_fixtures import build_insta_fixture
from tests.realhead_fixtures import CPU, EXPERIMENTS, tiny_prior_fixture  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

N_FRAMES, N_TEST, UV, SIZE = 8, 4, 32, 32


@pytest.fixture(scope="module")
def head():
    return load_head_model("builtin")  # the tiny prior's head (its synthetic data's defaults)


@pytest.fixture(scope="module")
def actor(tmp_path_factory, head):
    root = tmp_path_factory.mktemp("rh_insta")
    truth = build_insta_fixture(root / "actor", head, n_frames=N_FRAMES, size=SIZE, tracker_dir=root / "tracker")
    return root, truth


def init_args(root: Path, head, **kwargs) -> dict:
    return {"roots": [str(root / "actor")], "tracker_dirs": [str(root / "tracker")], "n_test": N_TEST, "n_val": 1,
            "n_shape": head.n_shape, "n_expr": head.n_expr, "uv_size": UV, **kwargs}


def make(root: Path, head, **kwargs) -> RealHeadINSTADataModule:
    dm = RealHeadINSTADataModule(**init_args(root, head, **kwargs))
    dm.setup("fit")
    return dm


def covered(uv: torch.Tensor) -> torch.Tensor:
    return uv.abs().sum(0) > 0


def test_inputs_carry_the_maps_of_the_first_frames(actor, head) -> None:
    root, truth = actor
    dm = make(root, head)
    split = dm.fewshot()
    inputs = split.inputs
    dims = validate_batch(inputs, require_realhead=True)
    assert (dims["B"], dims["V"], dims["h"]) == (1, 3, UV) and split.input_cameras == [0, 1, 2]
    raster = head.uv_raster(UV)
    mouth = region_mask(head, raster, "mouth")[0] > 0
    identity, offsets, mouth_map = inputs["uv_identity"][0], inputs["uv_expr_offset"][0], inputs["uv_mouth"][0]
    assert covered(identity).any() and not identity[:, mouth].any()  # texture, mouth zeroed (paper §IV-A)
    assert covered(mouth_map).any() and not mouth_map[:, ~mouth].any()  # features only on the mouth
    # one expression per sample: the input frames' mean expression and jaw, in cm
    expected = expr_offset_map(head, raster, truth.expr[:3, :head.n_expr].mean(0)[None],
                               truth.pose[:3, 2].mean(0)[None])[0]
    torch.testing.assert_close(offsets, expected, atol=1e-4, rtol=1e-4)
    # three frames (three cameras) see more of the head than the first one alone
    one = dm.fewshot(views=1).inputs
    assert one["image"].shape[1] == 1
    assert covered(identity).sum() > covered(one["uv_identity"][0]).sum()
    torch.testing.assert_close(one["uv_mouth"], inputs["uv_mouth"])  # both: the first (frontal) frame's mouth


def test_held_out_frames_condition_on_their_own_frame(actor, head) -> None:
    root, truth = actor
    split = make(root, head).fewshot()
    ev = split.evaluation
    assert len(ev) == N_TEST and [int(ev[i]["frame"]) for i in range(len(ev))] == list(range(4, 8))  # time order
    raster = head.uv_raster(UV)
    for i in range(len(ev)):
        t = int(ev[i]["frame"])
        expected = expr_offset_map(head, raster, truth.expr[t:t + 1, :head.n_expr], truth.pose[t:t + 1, 2])[0]
        torch.testing.assert_close(ev[i]["uv_expr_offset"], expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ev[i]["uv_identity"], split.inputs["uv_identity"][0])  # the inputs' texture
    assert not torch.equal(ev[0]["uv_expr_offset"], ev[1]["uv_expr_offset"])

    class Blanked(torch.utils.data.Dataset):  # frame 0's image made flat: its Sobel map must vanish
        def __len__(self):
            return len(ev.base)

        def __getitem__(self, i):
            item = dict(ev.base[i])
            if i == 0:
                item["image"] = torch.full_like(item["image"], 0.5)
            return item

    blanked = ConditionedFrames(Blanked(), ev.conditioning, ev.uv_identity)
    assert ev[0]["uv_mouth"].abs().sum() > 0 and blanked[0]["uv_mouth"].abs().sum() == 0
    torch.testing.assert_close(blanked[1]["uv_mouth"], ev[1]["uv_mouth"])  # the other frames keep theirs


def test_bad_settings_are_refused_naming_the_field(actor, head) -> None:
    root, _ = actor
    with pytest.raises(ValueError, match="uv_size"):
        RealHeadINSTADataModule(**init_args(root, head, uv_size=0))
    with pytest.raises(ValueError, match="mouth_features"):
        RealHeadINSTADataModule(**init_args(root, head, mouth_features="dino"))
    dm = make(root, head)
    with pytest.raises(ValueError, match="tracking_noise"):
        dm.fewshot(tracking_noise={"expr": 0.1})
    with pytest.raises(ValueError, match="views"):
        dm.fewshot(views=2)
    with pytest.raises(RuntimeError, match="setup"):
        RealHeadINSTADataModule(**init_args(root, head)).fewshot()


def _fit(tmp_path: Path, prior: Path, *configs: str) -> AvatarCLI:
    return AvatarCLI(args=["fit", *[a for c in configs for a in ("-c", c)], *CPU, "--trainer.max_steps=3",
                           f"--trainer.default_root_dir={tmp_path}", f"--model.init_args.prior_checkpoint={prior}",
                           f"--model.init_args.output_dir={tmp_path / 'avatar'}",
                           "--model.init_args.turntable_frames=2", "--model.init_args.expression_steps=1",
                           "--model.init_args.phase1_steps_per_frame=1", "--model.init_args.render_backend=torch"])


def test_insta_protocol_config_enrolls_a_tracked_sequence_and_scores_t_lpips(tiny_prior, actor, head,
                                                                              tmp_path) -> None:
    """experiments/enroll_insta.yaml (paper §V-C) stacked on enroll.yaml, its placeholders filled in."""
    root, _ = actor
    import yaml

    config = yaml.safe_load((EXPERIMENTS / "enroll_insta.yaml").read_text())
    assert config["data"]["init_args"]["source"]["init_args"]["n_test"] == 600  # the protocol's test frames
    source = config["data"]["init_args"]["source"]
    source["init_args"].update(init_args(root, head, fewshot_eval=N_TEST, head_model="builtin"))
    filled = tmp_path / "enroll_insta_filled.yaml"
    filled.write_text(yaml.safe_dump(config))
    cli = _fit(tmp_path, tiny_prior.checkpoint, str(EXPERIMENTS / "enroll.yaml"), str(filled))
    assert type(cli.datamodule.source).__name__ == "RealHeadINSTADataModule" and cli.datamodule.n_input_frames == 3
    metrics = json.loads((tmp_path / "avatar" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["n_input_frames"] == 3
    assert metrics["novel_expression"]["images"] == N_TEST
    # held-out frames are a monocular sequence: t-LPIPS over its consecutive pairs
    assert metrics["sequence"]["pairs"] == N_TEST - 1 and metrics["sequence"]["tlpips"] >= 0


def test_insta_protocol_config_names_the_missing_actor_folder(tiny_prior, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data/insta/ACTOR|generic_model\.pkl"):
        _fit(tmp_path, tiny_prior.checkpoint, str(EXPERIMENTS / "enroll.yaml"), str(EXPERIMENTS / "enroll_insta.yaml"))
