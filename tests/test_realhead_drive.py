"""3DRealHead driving (paper §IV-C2): the driver reproduces the enrollment render of the enrollment frame,
mouth features act near the mouth, smoothing filters, a shrunk enroll → drive run through the CLI,
and bad inputs refused naming the file or field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from avatar_lightning.cli import AvatarCLI
from avatar_lightning.export import read_video
from avatar_lightning.lit.realhead_enroll import RealHeadEnrollment
from avatar_lightning.realhead.drive import EnrolledAvatar, RealHeadDriver
from avatar_lightning.realhead.smoothing import SmoothedSequence, moving_average, one_euro
from data_modules.realhead_driving import RealHeadDrivingDataModule
from tests.realhead_fixtures import CPU, EXPERIMENTS, quiet_trainer, tiny_prior_fixture  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def enrolled(tiny_prior, tmp_path_factory) -> tuple[RealHeadEnrollment, Path]:
    """An enrollment fitted for 3 steps (identity maps and final layer moved off their initial values)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("rh_enrolled")
    model = RealHeadEnrollment(prior_checkpoint=str(tiny_prior.checkpoint), phase_order="joint", lpips_weight=0.0,
                               lr_final=1e-2, render_backend="torch")
    trainer = quiet_trainer(out, 3)
    trainer.fit(model, tiny_prior.fewshot_data(views=3))
    trainer.save_checkpoint(out / "avatar.ckpt")
    return model.eval(), out / "avatar.ckpt"


def _driver(path: Path, out: Path, **kwargs) -> RealHeadDriver:
    driver = RealHeadDriver(str(path), output_dir=str(out), progress=False, render_backend="torch", **kwargs)
    driver.configure_model()
    return driver


def test_driving_the_enrollment_frame_reproduces_the_enrollment_render(enrolled, tmp_path) -> None:
    model, path = enrolled
    inputs = model.inputs
    avatar = EnrolledAvatar.from_enrollment(model, render_backend="torch")
    cached = torch.cat([inputs["uv_expr_offset"], inputs["uv_mouth"]], 1)
    torch.testing.assert_close(avatar.conditioning(inputs, 0), cached, atol=1e-5, rtol=0)  # built from the frame
    with torch.no_grad():
        expected = model(inputs).render.rgb[0].clamp(0, 1)  # [V, 3, H, W]
    driver = _driver(path, tmp_path, write_frames=True)
    quiet_trainer(tmp_path, 1).predict(driver, DataLoader([{k: v[0] for k, v in inputs.items()}]))
    frame = driver.frames[0].float() / 255  # rendered at the frontal view, from the checkpoint on disk
    assert (frame - expected[0]).abs().max() <= 1 / 255 + 1e-6
    assert (frame - expected[1]).abs().max() > 0.05  # a different view would not pass
    assert (tmp_path / "drive.mp4").is_file() and (tmp_path / "frames" / "00000.png").is_file()


def _texel_distance(mask: torch.Tensor) -> torch.Tensor:
    """Chebyshev distance in texels from each texel to the nearest mask texel, ``[R, R]``."""
    dist = torch.full(mask.shape, float("inf"))
    grown = mask.float()[None, None]
    for r in range(max(mask.shape)):
        dist[(grown[0, 0] > 0) & torch.isinf(dist)] = r
        grown = F.max_pool2d(grown, 3, 1, 1)
    return dist


def test_mouth_features_change_the_output_maps_near_the_mouth(enrolled) -> None:
    """Measured on this 2-step prior (R = 32, 3 levels): mean |Δraw| on the mouth mask 2.2e-3, beyond
    R/4 = 8 texels from it 1.5e-4 (ratio 0.07; a 600-step tiny prior gives 0.07 too), and 41 % of
    the change within 3 texels of the mask (12 % of the texels). The U-Net's coarse levels see the whole
    map, so "nothing far" is a bound, not zero: far ≤ 0.1 × on-mask, near share ≥ 30 %."""
    model, _ = enrolled
    avatar = EnrolledAvatar.from_enrollment(model)
    mask, valid = avatar.region[0] > 0, model.texels.valid
    x = torch.cat([model.inputs["uv_expr_offset"], model.inputs["uv_mouth"]], 1)
    y = x.clone()
    y[:, 3:] += torch.randn(y[:, 3:].shape, generator=torch.Generator().manual_seed(0)) * mask
    with torch.no_grad():
        change = (avatar.raw_maps(y) - avatar.raw_maps(x)).abs().mean(1)[0]  # [R, R]
    dist = _texel_distance(mask)
    on_mask, far = change[mask & valid].mean(), change[(dist >= mask.shape[0] / 4) & valid].mean()
    assert on_mask > 1e-4
    assert far <= 0.1 * on_mask, (float(far), float(on_mask))
    assert change[(dist < 3) & valid].sum() >= 0.3 * change[valid].sum()


def test_moving_average_and_one_euro_smooth_tracks() -> None:
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(0))
    ref = torch.stack([x[max(0, t - 2):t + 3].mean(0) for t in range(9)])
    torch.testing.assert_close(moving_average(x, 5), ref)
    with pytest.raises(ValueError, match="odd"):
        moving_average(x, 4)
    alpha = 1 / (1 + 25.0 / (2 * torch.pi * 1.0))  # beta = 0: a first-order low-pass at 1 Hz, 25 fps
    ema = [x[0]]
    for t in range(1, 9):
        ema.append(alpha * x[t] + (1 - alpha) * ema[-1])
    torch.testing.assert_close(one_euro(x, 25.0, 1.0, 0.0), torch.stack(ema))
    jitter = 1.0 + 0.1 * torch.randn(200, 3, generator=torch.Generator().manual_seed(1))
    assert one_euro(jitter, 25.0, 1.0, 0.0)[20:].std() < 0.5 * jitter.std()
    frames = [{"expr": jitter[t, :2], "pose": jitter[t].expand(5, 3), "translation": jitter[t], "frame": t}
              for t in range(200)]
    smooth = SmoothedSequence(frames, method="moving_average", window=5)
    assert smooth[3]["frame"] == 3 and torch.allclose(smooth[3]["expr"], jitter[1:6, :2].mean(0))


def test_enroll_then_drive_through_the_cli(tiny_prior, tmp_path) -> None:
    enroll = AvatarCLI(args=["fit", "-c", str(EXPERIMENTS / "enroll.yaml"), *CPU, "--trainer.max_steps=3",
                             f"--trainer.default_root_dir={tmp_path}", "--data.init_args.views=1",
                             f"--model.init_args.prior_checkpoint={tiny_prior.checkpoint}",
                             f"--model.init_args.output_dir={tmp_path / 'avatar'}",
                             "--model.init_args.turntable_frames=2", "--model.init_args.expression_steps=1",
                             "--model.init_args.phase1_steps_per_frame=1",
                             "--model.init_args.render_backend=torch"])
    assert enroll.model.hparams.uv_size == 32 and enroll.datamodule.split.identity == 2  # the prior's held-out subject
    avatar = tmp_path / "avatar"
    assert {"avatar.ckpt", "avatar.ply", "turntable.mp4", "expressions.mp4", "metrics.json"} <= {
        p.name for p in avatar.iterdir()}
    metrics = json.loads((avatar / "metrics.json").read_text())
    assert metrics["stop_kind"] == "cap" and metrics["steps"] == 3 and metrics["n_input_frames"] == 1
    assert metrics["novel_view"]["images"] == 7 and metrics["novel_expression"]["images"] == 7
    assert sum(metrics[b]["images"] for b in ("novel_view_near", "novel_view_side", "novel_view_far")
               if b in metrics) == 7
    drive = tmp_path / "drive"
    AvatarCLI(args=["predict", "-c", str(EXPERIMENTS / "drive.yaml"), "--trainer.accelerator=cpu",
                    f"--model.init_args.avatar_checkpoint={avatar / 'avatar.ckpt'}",
                    f"--model.init_args.output_dir={drive}", "--model.init_args.camera=orbit",
                    "--model.init_args.render_size=48", "--model.init_args.write_frames=true",
                    "--model.init_args.progress=false", "--model.init_args.render_backend=torch",
                    "--data.init_args.smoothing=moving_average", "--data.init_args.smoothing_window=3"])
    video = read_video(drive / "drive.mp4")
    assert video.shape[0] == 2 and video.shape[-1] == 48  # every expression of the subject, 48 px wide
    summary = json.loads((drive / "drive.json").read_text())
    assert summary["frames"] == 2 and summary["fps"] > 0
    assert sum(summary["share"].values()) == pytest.approx(1, abs=1e-3)
    assert sorted(p.name for p in (drive / "frames").iterdir()) == ["00000.png", "00001.png"]


class UntrackedFrames(LightningDataModule):
    """A "sequence" of frames without tracking (images only)."""

    def driving_sequence(self, identity: int | None = None) -> list[dict[str, torch.Tensor]]:
        return [{"image": torch.zeros(1, 3, 8, 8)}]


def test_bad_driving_inputs_are_refused_naming_the_file_or_field(enrolled, tiny_prior, tmp_path) -> None:
    model, path = enrolled
    with pytest.raises(FileNotFoundError, match="avatar_checkpoint: file not found: .*nope.ckpt"):
        _driver(tmp_path / "nope.ckpt", tmp_path)
    untracked = {"class_path": "tests.test_realhead_drive.UntrackedFrames", "init_args": {}}
    with pytest.raises(ValueError, match=r"no tracking \(missing \['shape', 'expr', 'pose'"):
        RealHeadDrivingDataModule(source=untracked).setup("predict")
    flame = {**tiny_prior.source, "init_args": {**tiny_prior.source["init_args"], "head_model": "flame2023.pkl"}}
    with pytest.raises(ValueError, match="head_model: checkpoint 'builtin', config 'flame2023.pkl'"):
        RealHeadDrivingDataModule(avatar_checkpoint=str(path), source=flame).setup("predict")
    driver = _driver(path, tmp_path)
    frame = {k: v[:, :1] if v.ndim == 5 or k in ("K", "world_to_cam") else v for k, v in model.inputs.items()}
    with pytest.raises(ValueError, match="expr has 100 coefficients, the avatar's head model 15"):
        driver.check_frames({**frame, "expr": torch.zeros(1, 100)})
    back = frame["world_to_cam"][0, 0] @ torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0]))  # moved behind the head
    behind = {**frame, "world_to_cam": back[None, None]}
    with pytest.raises(ValueError, match="no view is a frontal camera"):
        driver.predict_step(behind, 0)
