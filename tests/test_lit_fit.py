"""SynShotPrior under a real Trainer on CPU: a 2-step fit, resume at the same step, 2-process DDP (gloo).

The data is a tiny in-test DataModule of schema batches around the built-in head (random images and
UV maps): these tests check the training wiring, not what the prior learns.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from avatar_lightning.cli import AvatarCLI
from avatar_lightning.head.model import load_head_model
from avatar_lightning.lit.synshot_prior import SynShotPrior
from tests.test_lit_prior import TINY_NET, tiny_batch

pytestmark = pytest.mark.usefixtures("one_thread")


class _Batches(Dataset):
    def __init__(self, n: int) -> None:
        head = load_head_model("builtin")
        batch = tiny_batch(head, b=n, v=2, size=16)
        self.items = [{k: v[i] for k, v in batch.items()} for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


class TinyData(LightningDataModule):
    """``n`` schema samples; batch size 2."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.n, self.data = n, None

    def setup(self, stage: str) -> None:
        self.data = _Batches(self.n)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=2)


def _model() -> SynShotPrior:
    return SynShotPrior(net=TINY_NET, part_samples={"face": 8, "hair": 6}, lr=1e-3, render_backend="torch")


def _trainer(tmp_path: Path, max_steps: int, **kwargs) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, max_steps=max_steps, default_root_dir=tmp_path, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                   gradient_clip_val=1.0, **kwargs)


def test_two_step_fit_then_resume_continues_at_the_same_step(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    model = _model()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    trainer = _trainer(tmp_path, 2, callbacks=[ckpt], val_check_interval=2)
    trainer.fit(model, datamodule=TinyData())
    assert trainer.global_step == 2
    assert any(not torch.equal(before[k], v) for k, v in model.net.state_dict().items())
    assert "val/psnr" in trainer.callback_metrics and "train/loss" in trainer.callback_metrics
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any(k.startswith("head.") for k in state)  # the head model is rebuilt, never stored
    resumed = _model()
    trainer2 = _trainer(tmp_path, 3, val_check_interval=2)
    trainer2.fit(resumed, datamodule=TinyData(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer2.global_step == 3
    loaded = SynShotPrior.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", map_location="cpu")
    assert loaded.net.config == model.net.config
    torch.testing.assert_close(loaded.net.state_dict(), model.net.state_dict())


def test_stacked_configs_merge_network_fields(tmp_path: Path) -> None:
    base, ablation = tmp_path / "base.yaml", tmp_path / "f32.yaml"
    base.write_text(yaml.safe_dump({"model": {
        "class_path": "avatar_lightning.lit.synshot_prior.SynShotPrior",
        "init_args": {"net": TINY_NET, "part_samples": {"face": 8, "hair": 6}}},
        "data": {"class_path": "tests.test_lit_fit.TinyData"}}))
    ablation.write_text(yaml.safe_dump({"model": {"init_args": {"net": {"feature_channels": 32}}}}))
    cli = AvatarCLI(args=["-c", str(base), "-c", str(ablation), "--trainer.logger=false"], run=False)
    config = cli.model.net.config
    assert config.feature_channels == 32 and config.map_resolution == TINY_NET["map_resolution"]


class _SameCodebooks(Callback):
    """Fails the run unless every rank ends with the same codebooks. (DDP also broadcasts buffers
    from rank 0, so this checks the replicas agree; that the EMA statistics are *global* is
    tested on the quantiser alone in test_models_quantizer.)"""

    def on_train_end(self, trainer: Trainer, pl_module: SynShotPrior) -> None:
        for q in (pl_module.net.quant_id, pl_module.net.quant_expr):
            books = trainer.strategy.all_gather(q.codebook.detach())  # [world, K, n]
            if not torch.allclose(books[0], books[1]):
                raise AssertionError("codebooks differ across DDP ranks")


@pytest.mark.slow
def test_two_process_ddp_gloo_fit(tmp_path: Path) -> None:
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2, default_root_dir=tmp_path,
                      logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                      val_check_interval=2, enable_checkpointing=False, callbacks=[_SameCodebooks()])
    trainer.fit(_model(), datamodule=TinyData(8))
    # ddp_spawn sends back the callback metrics (not the loop progress) from rank 0
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and "val/psnr" in trainer.callback_metrics


def test_bf16_mixed_precision_fit(tmp_path: Path) -> None:
    """``--trainer.precision=bf16-mixed`` (prior_paper.yaml) trains: finite losses, weights stay float32."""
    model = _model()
    trainer = _trainer(tmp_path, 2, precision="bf16-mixed", val_check_interval=2)
    trainer.fit(model, datamodule=TinyData())
    assert trainer.global_step == 2
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/psnr"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_checkpoint_from_another_network_config_is_refused(tmp_path: Path) -> None:
    model = _model()
    trainer = _trainer(tmp_path, 1, enable_checkpointing=False)
    trainer.fit(model, datamodule=TinyData())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    other = SynShotPrior(net={**TINY_NET, "color_from_texture": True}, part_samples={"face": 8, "hair": 6},
                         render_backend="torch")
    with pytest.raises(ValueError, match=r"net.color_from_texture: checkpoint False, config True"):
        _trainer(tmp_path, 2).fit(other, datamodule=TinyData(), ckpt_path=str(tmp_path / "a.ckpt"))
    same = _model()  # the same config resumes
    _trainer(tmp_path, 2).fit(same, datamodule=TinyData(), ckpt_path=str(tmp_path / "a.ckpt"))


def test_checkpoint_with_unknown_network_fields_is_named(tmp_path: Path) -> None:
    model = _model()
    ckpt = {"hyper_parameters": {"net": {**TINY_NET, "warp_drive": 3}}, "state_dict": {}}
    with pytest.raises(ValueError, match=r"does not know: \['warp_drive'\]"):
        model.on_load_checkpoint(ckpt)


def test_checkpoint_with_other_part_samples_is_refused_but_loss_settings_are_not(tmp_path: Path) -> None:
    model = _model()
    trainer = _trainer(tmp_path, 1, enable_checkpointing=False)
    trainer.fit(model, datamodule=TinyData())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    ckpt = torch.load(tmp_path / "a.ckpt", weights_only=False)
    denser = SynShotPrior(net=TINY_NET, part_samples={"face": 10, "hair": 6}, render_backend="torch")
    with pytest.raises(ValueError, match="part_samples"):
        denser.on_load_checkpoint(dict(ckpt, state_dict=dict(ckpt["state_dict"])))
    other_beta = SynShotPrior(net={**TINY_NET, "vq_beta": 0.5}, part_samples={"face": 8, "hair": 6},
                              render_backend="torch")
    other_beta.on_load_checkpoint(dict(ckpt, state_dict=dict(ckpt["state_dict"])))  # training-only: accepted
