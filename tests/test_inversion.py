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
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import Dataset

from avatar_lightning.export import read_video
from avatar_lightning.lit.inversion import SynShotInversion, find_prior_checkpoint
from avatar_lightning.lit.synshot_prior import SynShotPrior
from avatar_lightning.render import intrinsics_from_fov, load_ply, orbit_cameras
from callbacks import EMAEarlyStopping

TINY_NET = {
    "map_resolution": 16, "latent_resolution": 4, "feature_channels": 8, "id_code_dim": 4, "expr_code_dim": 4,
    "id_codebook_size": 16, "expr_codebook_size": 16, "channels": 8, "max_channels": 16,
    "transformer_width": 16, "transformer_heads": 2, "transformer_depth": 1, "regressor_hidden": 8,
    "regressor_blocks": 1, "sh_degree": 1,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def save_prior(path: Path, seed: int = 0) -> SynShotPrior:
    """A randomly initialised tiny prior written as a Lightning checkpoint."""
    torch.manual_seed(seed)
    prior = SynShotPrior(net=TINY_NET, part_samples={"face": 8, "hair": 6}, render_backend="torch")
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


def test_tiny_inversion_end_to_end(prior_path: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SynShotInversion(prior_checkpoint=str(prior_path), stage1_steps_per_frame=1, lr_stage1=1e-3,
                             lr_stage2=1e-3, output_dir=str(tmp_path / "avatar"), turntable_frames=4,
                             expression_steps=2, fps=5, render_backend="torch")
    assert model.net is None, "the prior is loaded lazily, by configure_model"
    model.configure_model()
    head = model.head
    data = LightningDataModule.from_datasets(
        train_dataset=Samples([sample(head, v=2)] * 3), batch_size=1,  # repeated: still 2 input images
        val_dataset=Samples([sample(head, v=2, seed=1), sample(head, v=2, frame=1, seed=2)]))
    stopper = EMAEarlyStopping(monitor="train/loss", warmup_steps=0, patience=1000, max_steps_per_frame=3)
    trainer = Trainer(max_steps=100, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=[stopper],
                      check_val_every_n_epoch=1000, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    assert model.n_input_frames == 2 and model.stage1_steps == 2
    assert model.min_steps_before_stopping == 4, "stopping waits for stage 1 and as long again of stage 2"
    assert stopper.warmup_steps == 0, "the callback's own setting is left alone"
    assert trainer.global_step == 6 and int(model.stage) == 2
    stages = [s for _, s, _ in model.loss_history]
    assert stages == [1, 1, 2, 2, 2, 2]

    out = tmp_path / "avatar"
    assert sorted(p.name for p in out.iterdir()) == ["avatar.ckpt", "avatar.ply", "comparison.png",
                                                     "expressions.mp4", "metrics.json", "turntable.mp4"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"novel_view", "novel_expression", "steps"} and metrics["steps"] == 6
    assert 0 < metrics["novel_view"]["psnr"] < 60
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
    assert int(restored.stage) == 2 and len(restored.loss_history) == 6


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
