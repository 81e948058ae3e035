"""RealHeadPrior: the generator/discriminator schedule, gradient paths, checkpoints, and shrunk fits."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from avatar_lightning.lit.realhead_prior import RealHeadPrior
from avatar_lightning.losses.adversarial import g_hinge_loss
from data_modules.realhead import RealHeadSyntheticDataModule

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MODEL = {"uv_size": 32, "levels": 3, "c_base": 256, "c_max": 32, "style_dim": 32, "disc_crop": 64,
              "render_backend": "torch"}
TINY_DATA = {"identities": 3, "expressions": 2, "image_size": 32, "cameras": 8, "views": 2, "uv_size": 32,
             "val_identities": 1, "test_identities": 1, "batch_size": 2, "texture_size": 64}


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> RealHeadSyntheticDataModule:
    dm = RealHeadSyntheticDataModule(root=str(tmp_path_factory.mktemp("rh_prior")), **TINY_DATA)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture()
def batch(datamodule):
    torch.manual_seed(0)
    return next(iter(datamodule.train_dataloader()))


def _trainer(tmp_path, steps: int, **kwargs) -> Trainer:
    return Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                   default_root_dir=tmp_path, **kwargs)


def test_forward_renders_every_view_with_one_gaussian_per_texel(batch):
    model = RealHeadPrior(**TINY_MODEL)
    out = model(batch)
    assert out.raw.shape == (2, 59, 32, 32)
    assert out.gaussians.num_gaussians == int(model.head.uv_raster(32).valid.sum())
    assert out.render.rgb.shape == batch["image"].shape
    assert torch.isfinite(out.render.rgb).all()


def test_adversarial_weight_is_off_then_ramps(batch):
    model = RealHeadPrior(**TINY_MODEL, adv_weight=0.1, adv_start=10, adv_ramp=4)
    steps = {}
    for step in (0, 9, 10, 11, 13, 100):
        model._step_override = step
        type(model).global_step = property(lambda self: self._step_override)
        steps[step] = model.adversarial_weight()
    del type(model).global_step
    assert steps[0] == steps[9] == 0.0
    assert steps[10] == pytest.approx(0.025) and steps[11] == pytest.approx(0.05)
    assert steps[13] == steps[100] == pytest.approx(0.1)


def test_discriminator_gradient_reaches_the_generator_through_the_frozen_backbone(batch):
    torch.manual_seed(0)
    model = RealHeadPrior(**TINY_MODEL)
    model.train()
    out = model(batch)
    loss = g_hinge_loss(model.discriminator(model._disc_input(out.render.rgb, batch)))
    loss.backward()
    assert model.net.to_maps.weight.grad.abs().sum() > 0
    assert model.net.encoder_id.parameters().__next__().grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.discriminator.backbone.parameters())  # frozen (buffers here)
    assert not model.discriminator.backbone.training
    assert all(p.grad is not None for p in model.discriminator.heads.parameters())


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_discriminator_is_idle_before_adv_start_and_steps_after(datamodule, tmp_path):
    torch.manual_seed(0)
    model = RealHeadPrior(**TINY_MODEL, adv_start=2, adv_ramp=1)
    d0 = _snapshot(model.discriminator.heads)
    _trainer(tmp_path, 2).fit(model, datamodule)
    assert model.trainer.global_step == 2  # generator iterations, whatever the discriminator does
    assert all(torch.equal(v, model.discriminator.heads.state_dict()[k]) for k, v in d0.items())
    _trainer(tmp_path, 4).fit(model, datamodule)
    after = model.discriminator.heads.state_dict()
    assert [k for k, v in d0.items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert model.trainer.global_step == 4  # a fresh trainer counts its own steps from 0
    assert model.trainer.callback_metrics["train/adv_weight"] > 0
    for key in ("train/adv_d", "train/d_real_positive", "train/d_fake_negative", "train/adv_g"):
        assert torch.isfinite(model.trainer.callback_metrics[key])


def test_checkpoint_leaves_out_head_and_frozen_backbone_and_resumes(datamodule, tmp_path):
    torch.manual_seed(0)
    model = RealHeadPrior(**TINY_MODEL, adv_start=1, adv_ramp=1)
    trainer = _trainer(tmp_path, 2)
    trainer.fit(model, datamodule)
    path = tmp_path / "rh.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert not [k for k in ckpt["state_dict"] if k.startswith(("head.", "discriminator.backbone."))]
    assert len(ckpt["optimizer_states"]) == 2 and ckpt["optimizer_states"][1]["state"]  # D's Adam moments
    resumed = RealHeadPrior(**TINY_MODEL, adv_start=1, adv_ramp=1)
    trainer2 = _trainer(tmp_path, 3)
    trainer2.fit(resumed, datamodule, ckpt_path=path)
    assert trainer2.global_step == 3
    loaded = RealHeadPrior.load_from_checkpoint(path, map_location="cpu")
    for k, v in model.net.state_dict().items():
        torch.testing.assert_close(loaded.net.state_dict()[k], v)


def test_mouth_switch_zeroes_only_the_mouth_channels(batch):
    model = RealHeadPrior(**TINY_MODEL, use_mouth=False)
    x = model.expression_input(batch)
    assert torch.equal(x[:, :3], batch["uv_expr_offset"]) and x[:, 3:].abs().max() == 0


def test_bf16_fit_runs_with_the_discriminator_and_fp16_is_refused(datamodule, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = RealHeadPrior(**TINY_MODEL, adv_start=0, adv_ramp=1)
    _trainer(tmp_path, 2, precision="bf16-mixed").fit(model, datamodule)
    assert torch.isfinite(model.trainer.callback_metrics["train/adv_g"])
    assert all(torch.isfinite(p).all() for p in model.net.parameters())
    monkeypatch.setattr(RealHeadPrior, "trainer", property(lambda self: type("T", (), {"precision": "16-mixed"})()))
    with pytest.raises(ValueError, match="16-mixed"):
        model.on_fit_start()


def test_augment_jitters_texture_and_foreground_only(batch):
    torch.manual_seed(3)
    model = RealHeadPrior(**TINY_MODEL, jitter_p=1.0, blur_p=0.0)
    out = model.augment(batch)
    bg = batch["mask"] == 0
    assert torch.equal(out["image"].masked_select(bg.expand_as(out["image"])),
                       batch["image"].masked_select(bg.expand_as(batch["image"])))
    assert not torch.equal(out["image"], batch["image"]) and not torch.equal(out["uv_identity"], batch["uv_identity"])
    unseen = batch["uv_identity"].abs().sum(1, keepdim=True) == 0
    assert out["uv_identity"].masked_select(unseen.expand_as(out["uv_identity"])).abs().max() == 0


class _SameGenerator(Callback):
    """After DDP training the generator and discriminator heads are the same on both ranks."""

    def on_train_end(self, trainer: Trainer, pl_module: RealHeadPrior) -> None:
        for name, module in (("generator", pl_module.net), ("discriminator", pl_module.discriminator.heads)):
            flat = torch.cat([p.detach().flatten() for p in module.parameters()])
            both = trainer.strategy.all_gather(flat)  # [world, P]
            if not torch.allclose(both[0], both[1]):
                raise AssertionError(f"{name} parameters differ across DDP ranks")


@pytest.mark.slow
def test_two_process_ddp_gloo_fit_with_the_discriminator_unused_then_used(datamodule, tmp_path):
    """The discriminator is not run before adv_start (its parameters unused: find_unused_parameters)
    and both networks stay synchronised once it is."""
    torch.manual_seed(0)
    model = RealHeadPrior(**TINY_MODEL, adv_start=1, adv_ramp=1)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_fork_find_unused_parameters_true", max_steps=3,
                      default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, enable_checkpointing=False, callbacks=[_SameGenerator()])
    trainer.fit(model, datamodule)
    assert torch.isfinite(trainer.callback_metrics["train/adv_d"])


def test_report_of_a_realhead_prior_scores_held_out_identities(datamodule, tmp_path):
    """`python -m avatar_lightning.report` on a 3DRealHead run: rebuilt from the checkpoint alone."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from avatar_lightning import report

    torch.manual_seed(0)
    model = RealHeadPrior(**TINY_MODEL, adv_start=100)
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="tb"),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=1, val_check_interval=2, check_val_every_n_epoch=None, log_every_n_steps=1)
    trainer.fit(model, datamodule)
    ckpt = tmp_path / "rh.ckpt"
    trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=False)["module_class"] == "avatar_lightning.lit.realhead_prior.RealHeadPrior"
    metrics = report.main([str(trainer.logger.log_dir), "--ckpt", str(ckpt), "--out", str(tmp_path / "r"),
                           "--identities", "1", "--turntable-frames", "2"])
    assert metrics["held_out"]["identities"] == datamodule.split_identities()["test"]
    assert all(torch.isfinite(torch.tensor(metrics["held_out"][k])) for k in ("psnr", "ssim", "lpips"))
    written = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"prior_heldout.png", "prior_turntable.png", "prior_curve.png"} <= written
