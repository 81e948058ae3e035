"""SynShot inversion: prior lookup, stage freezing (checked by gradients), a tiny CPU fit with outputs.

The prior here is a tiny randomly initialised ``SynShotPrior`` (16² maps, ~100 Gaussians): these
tests check the inversion's mechanics, not reconstruction quality (``make demo`` measures that).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import Dataset

from avatar_lightning.export import read_video
from avatar_lightning.lit.checkpoint import find_prior_checkpoint
from avatar_lightning.lit.inversion import STAGE2_PREFIXES, SynShotInversion
from avatar_lightning.lit.synshot_prior import SynShotPrior
from avatar_lightning.render import intrinsics_from_fov, load_ply, orbit_cameras
from callbacks import EMAEarlyStopping
from tests.dummy import FewInputs

TINY_NET = {
    "map_resolution": 16, "latent_resolution": 4, "feature_channels": 8, "id_code_dim": 4, "expr_code_dim": 4,
    "id_codebook_size": 16, "expr_codebook_size": 16, "channels": 8, "max_channels": 16,
    "transformer_width": 16, "transformer_heads": 2, "transformer_depth": 1, "regressor_hidden": 8,
    "regressor_blocks": 1, "sh_degree": 1,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def save_prior(path: Path, seed: int = 0, geometry_scale: float = 1.0, **net: object) -> SynShotPrior:
    """A randomly initialised tiny prior written as a Lightning checkpoint.

    Args:
        geometry_scale: shrinks what D_id (x̂_verts) and D_expr decode. At 1, a random decoder
            scatters Gaussians ~0.4 around a head 0.2 across, some onto the cameras, and the loss
            jumps whenever one crosses the near plane; a trained prior keeps them on the head.
        net: ``TINY_NET`` overrides.
    """
    torch.manual_seed(seed)
    prior = SynShotPrior(net={**TINY_NET, **net}, part_samples={"face": 8, "hair": 6}, render_backend="torch")
    with torch.no_grad():
        for conv, channels in ((prior.net.dec_id.net[-1], slice(3, 6)), (prior.net.dec_expr.net[-1], slice(0, 3))):
            conv.weight[channels] *= geometry_scale
            conv.bias[channels] *= geometry_scale
    state = {k: v for k, v in prior.state_dict().items() if not k.startswith("head.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "hyper_parameters": dict(prior.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return prior


def sample(head, v: int = 2, size: int = 16, frame: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """One schema sample (no batch dim) with UV inputs, seen from ``v`` orbit cameras."""
    g = torch.Generator().manual_seed(seed)
    cams = orbit_cameras(v, radius=0.6, arc_deg=60.0, start_azimuth_deg=-30.0)
    res = TINY_NET["map_resolution"]
    return {
        "image": torch.rand(v, 3, size, size, generator=g), "mask": torch.ones(v, 1, size, size),
        "K": intrinsics_from_fov(30.0, size, size).expand(v, 3, 3).clone(), "world_to_cam": cams.clone(),
        "shape": torch.zeros(head.n_shape), "expr": (0.5 * frame) * torch.ones(head.n_expr),
        "pose": torch.zeros(5, 3), "translation": torch.zeros(3), "identity": torch.tensor(0),
        "frame": torch.tensor(frame), "background": torch.ones(3),
        "uv_texture": torch.rand(3, res, res, generator=g), "uv_position": 0.05 * torch.randn(3, res, res, generator=g),
        "uv_expression": (0.01 * frame) * torch.ones(3, res, res),
    }


class Samples(Dataset):
    def __init__(self, items: list[dict[str, torch.Tensor]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


@pytest.fixture(scope="module")
def prior_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "prior" / "last.ckpt"
    save_prior(path)
    return path


def test_find_prior_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        find_prior_checkpoint(tmp_path / "nope.ckpt")
    lazy = SynShotInversion(prior_checkpoint="latest", runs_dir=str(tmp_path / "runs"))  # builds without a prior
    with pytest.raises(FileNotFoundError, match="experiments/prior.yaml"):
        lazy.configure_model()
    with pytest.raises(FileNotFoundError, match="experiments/prior.yaml"):
        find_prior_checkpoint("latest", tmp_path / "runs")
    old, new = tmp_path / "runs" / "a" / "old.ckpt", tmp_path / "runs" / "b" / "new.ckpt"
    save_prior(old)
    save_prior(new)
    os.utime(old, (time.time() - 100, time.time() - 100))
    inversion = tmp_path / "runs" / "c" / "avatar.ckpt"  # newer, but an inversion: skipped
    inversion.parent.mkdir()
    torch.save({"state_dict": {"net.enc_id.w": torch.zeros(1)}, "hyper_parameters": {"prior_hparams": {}}}, inversion)
    (tmp_path / "runs" / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert find_prior_checkpoint("latest", tmp_path / "runs") == new
    assert find_prior_checkpoint(old) == old


def _grad_owners(model: SynShotInversion) -> set[str]:
    """Paper components (``SynShotNet.paper_modules`` names) whose parameters received a non-zero gradient."""
    owners = set()
    for name, module in model.net.paper_modules().items():
        if any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()):
            owners.add(name.split("/")[0])
    return owners


def test_stages_train_exactly_their_modules(prior_path: Path) -> None:
    model = SynShotInversion(prior_checkpoint=str(prior_path), render_backend="torch")
    model.configure_model()
    batch = {k: v[None] for k, v in sample(model.head).items()}
    model.capture_identity(batch)
    codebook = model.net.quant_id.codebook.clone() if hasattr(model.net.quant_id, "codebook") else None
    model.train()
    model.zero_grad(set_to_none=True)
    model.training_step(batch, 0).backward()
    assert _grad_owners(model) == {"E_id"}
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("net.enc_id."))
    assert not model.net.training and not model.net.quant_id.training  # frozen parts stay in eval mode
    if codebook is not None:
        assert torch.equal(codebook, model.net.quant_id.codebook)

    model.switch_to_stage2()
    pivot = model.identity_code().clone()
    model.zero_grad(set_to_none=True)
    model.training_step(batch, 0).backward()
    assert _grad_owners(model) == {"D_feat", "D_id", "D_expr", "R_color", "R_gauss"}
    frozen = [n for n, p in model.named_parameters() if n.startswith(("net.enc_id.", "net.enc_expr.", "net.quant",
                                                                         "net.transformer"))]
    assert frozen and all(dict(model.named_parameters())[n].grad is None for n in frozen)
    with torch.no_grad():  # z_id is the fixed pivot now: changing E_id no longer changes the code
        for p in model.net.enc_id.parameters():
            p.add_(1.0)
    assert torch.equal(model.identity_code(), pivot)


class StageSnapshots(Callback):
    """The module's state dict just before the first optimiser step of each stage (stage 1: after the
    identity was captured; stage 2: after the switch), and the optimiser steps run per stage."""

    def __init__(self) -> None:
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        self.steps = {1: 0, 2: 0}

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        stage = int(pl_module.stage)
        if stage not in self.before:
            self.before[stage] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.steps[stage] += 1


def _moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def _names(model: SynShotInversion, params) -> set[str]:
    """The module-level names of ``params``."""
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def reference_head_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Head-region PSNR per image, written out from its definition (metrics/head_region.py docstring):
    both images over black with the target's mask, MSE over the mask's weight.  # [N,3,H,W], [N,1,H,W] -> [N]"""
    p, t = pred.clamp(0, 1) * mask, target * mask
    mse = ((p - t) ** 2 * mask).sum(dim=(1, 2, 3)) / (3 * mask.sum(dim=(1, 2, 3)))
    return -10 * torch.log10(mse)


@pytest.fixture(scope="module")
def smooth_prior_path(tmp_path_factory) -> Path:
    """A tiny prior whose loss falls under small steps, for checking that each stage fits.

    Its Gaussians lie on the head (``geometry_scale``), and it is the Table 1 "w/o VQ" network: with
    VQ, E_id reaches the render only through code switches (the straight-through estimator), so stage
    1's loss is a step function of E_id's weights and on a random 16-code prior it rises as often as it
    falls. The VQ path is checked by test_stages_train_exactly_their_modules and by the invert.yaml
    fit of test_experiments.
    """
    path = tmp_path_factory.mktemp("runs") / "smooth_prior" / "last.ckpt"
    save_prior(path, geometry_scale=0.05, use_vq=False)
    return path


def test_tiny_inversion_end_to_end(smooth_prior_path: Path, tmp_path: Path) -> None:
    prior_path = smooth_prior_path
    torch.manual_seed(0)
    model = SynShotInversion(prior_checkpoint=str(prior_path), stage1_steps_per_frame=3, lr_stage1=1e-4,
                             lr_stage2=1e-3, output_dir=str(tmp_path / "avatar"), turntable_frames=4,
                             expression_steps=2, fps=5, render_backend="torch")
    assert model.net is None, "the prior is loaded lazily, by configure_model"
    model.configure_model()
    head = model.head
    head_mask = torch.zeros(2, 1, 16, 16)  # held-out masks cover part of the frame: scores are head-region
    head_mask[0, :, 3:13, 4:12] = 1
    head_mask[1, :, 2:10, 2:14] = 1
    data = FewInputs(sample(head, v=2), repeat=3,  # repeated: still 2 input images
                     evaluation=Samples([sample(head, v=2, seed=1) | {"mask": head_mask},
                                         sample(head, v=2, frame=1, seed=2) | {"mask": head_mask.flip(-1)}]))
    stopper = EMAEarlyStopping(monitor="train/loss", warmup_steps=0, patience=1000, max_steps_per_frame=7)
    snapshots = StageSnapshots()
    trainer = Trainer(max_steps=100, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=[stopper, snapshots],
                      check_val_every_n_epoch=1000, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    assert model.n_input_frames == 2 and model.stage1_steps == 6
    assert model.min_steps_before_stopping == 12, "stopping waits for stage 1 and as long again of stage 2"
    assert stopper.warmup_steps == 0, "the callback's own setting is left alone"
    assert trainer.global_step == 14 and int(model.stage) == 2  # the budget: 7 steps x 2 input images
    stages = [s for _, s, _ in model.loss_history]
    assert stages == [1] * 6 + [2] * 8 and snapshots.steps == {1: 6, 2: 8}

    # each stage fits the inputs: its loss falls from its first steps to its last
    for stage in (1, 2):
        losses = [v for _, s, v in model.loss_history if s == stage]
        early, late = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
        assert late < early, (stage, losses)
    # and each stage moved its own weights only: not the frozen encoders, transformers or the pivot
    final = model.state_dict()
    moved1 = _moved(snapshots.before[1], snapshots.before[2])
    moved2 = _moved(snapshots.before[2], final)
    stage1, stage2 = _names(model, model.stage_parameters(1)), _names(model, model.stage_parameters(2))
    assert moved1 - stage1 == {"pivot", "stage"} and moved1 & stage1  # the switch itself fixes the pivot
    assert moved2 and moved2 <= stage2, sorted(moved2 - stage2)
    for name, module in model.net.paper_modules().items():  # every stage-2 component was trained
        if name.startswith(STAGE2_PREFIXES):
            assert _names(model, module.parameters()) & moved2, name
    with torch.no_grad():  # the pivot is the code of the stage-1 encoder, which stage 2 left alone
        torch.testing.assert_close(model.pivot, model.net.encode_identity(model.x_tex, model.x_verts).code)

    out = tmp_path / "avatar"
    assert sorted(p.name for p in out.iterdir()) == ["avatar.ckpt", "avatar.ply", "comparison.png",
                                                     "expressions.mp4", "metrics.json", "turntable.mp4"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 14 and metrics["stage1_steps"] == 6 and metrics["n_input_frames"] == 2
    assert metrics["stop_kind"] == "budget" and "7 x 2" in metrics["stop_reason"]
    # held-out views share the inputs' cameras (0° away: "near"); 2 neutral and 2 expression images
    assert {k for k in metrics if isinstance(metrics[k], dict)} == {"novel_view", "novel_view_near",
                                                                    "novel_expression"}
    assert {s: metrics[s]["images"] for s in ("novel_view", "novel_view_near", "novel_expression")} == {
        "novel_view": 2, "novel_view_near": 2, "novel_expression": 2}
    assert set(metrics["novel_view"]) == {"psnr", "ssim", "lpips", "id", "psnr_full", "images"}
    with torch.no_grad():  # the scores are those of the exported model's renders, per image, then averaged
        for split, batch in (("novel_view", data.val_dataloader().dataset[0]),
                             ("novel_expression", data.val_dataloader().dataset[1])):
            pred = model.render({k: v[None] for k, v in batch.items()}).rgb[0]
            psnr = reference_head_psnr(pred, batch["image"], batch["mask"])
            full = -10 * torch.log10(((pred.clamp(0, 1) - batch["image"]) ** 2).mean(dim=(1, 2, 3)))
            assert metrics[split]["psnr"] == pytest.approx(float(psnr.mean()), abs=1e-4)
            assert metrics[split]["psnr_full"] == pytest.approx(float(full.mean()), abs=1e-4)
            assert abs(metrics[split]["psnr"] - metrics[split]["psnr_full"]) > 0.01  # the mask matters here
    assert metrics["novel_view_near"] == metrics["novel_view"]
    assert read_video(out / "turntable.mp4").shape[0] == 4
    assert read_video(out / "expressions.mp4").shape[0] == 2 * 2 + 1  # neutral -> expr 1 -> neutral
    assert load_ply(out / "avatar.ply").num_gaussians == model.assembler(model.net, model.net.decode(
        model.pivot, model.net.encode_expression(torch.zeros(1, 3, 16, 16)).code)).gaussians.num_gaussians

    prior_path_backup = prior_path.with_suffix(".bak")
    prior_path.rename(prior_path_backup)  # the avatar checkpoint must not need the prior file
    try:
        restored = SynShotInversion.load_from_checkpoint(out / "avatar.ckpt")
    finally:
        prior_path_backup.rename(prior_path)
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        assert torch.allclose(restored.render(batch).rgb, model.render(batch).rgb, atol=1e-5)
    assert int(restored.stage) == 2 and len(restored.loss_history) == 14


def test_crashed_export_leaves_no_half_file(prior_path: Path, tmp_path: Path, monkeypatch) -> None:
    model = SynShotInversion(prior_checkpoint=str(prior_path), render_backend="torch")
    model.configure_model()
    inputs = {k: v[None] for k, v in sample(model.head).items()}
    model.capture_identity(inputs)
    calls = {"n": 0}
    original = model.render

    def flaky_render(batch):
        calls["n"] += 1
        if calls["n"] == 3:  # dies in the middle of the turntable (one frame per call here)
            raise RuntimeError("out of memory")
        return original(batch)

    monkeypatch.setattr(model, "render", flaky_render)
    with pytest.raises(RuntimeError, match="out of memory"):
        model.export_avatar(tmp_path / "out", inputs, [inputs], turntable_frames=4, render_chunk=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["avatar.ply"]  # written before the crash
