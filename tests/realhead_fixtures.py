"""Shared fixtures of the 3DRealHead enrollment and driving tests: a tiny prior trained for 2 steps.

The prior is fitted through the CLI exactly as a user fits ``experiments/realhead_prior.yaml``
(shrunk: tiny network and data, no discriminator), so its checkpoint records the dataset it was
trained on. These tests check mechanics (what is trained, what is frozen, what is reproduced), not
reconstruction quality: a 2-step prior renders blobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from avatar_lightning.cli import AvatarCLI
from data_modules.realhead import RealHeadFewShotDataModule, RealHeadSyntheticDataModule

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY_MODEL = {"levels": 3, "c_base": 256, "c_max": 32, "style_dim": 32, "adv_weight": 0.0, "render_backend": "torch"}
TINY_DATA = {"identities": 3, "expressions": 2, "image_size": 32, "cameras": 8, "views": 2, "uv_size": 32,
             "val_identities": 1, "test_identities": 1, "batch_size": 2, "texture_size": 64}
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
       "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1"]


@dataclass
class TinyPrior:
    """A 2-step RealHeadPrior checkpoint and the data it was trained on.

    Attributes:
        checkpoint: its ``.ckpt``.
        data_root: the synthetic data's root.
        source: ``{class_path, init_args}`` of that data.
    """

    checkpoint: Path
    data_root: Path
    source: dict

    def datamodule(self) -> RealHeadSyntheticDataModule:
        dm = RealHeadSyntheticDataModule(root=str(self.data_root), **TINY_DATA)
        dm.prepare_data()
        dm.setup("fit")
        return dm

    def fewshot_data(self, views: int = 3, **kwargs) -> RealHeadFewShotDataModule:
        return RealHeadFewShotDataModule(source=self.source, prior_checkpoint=str(self.checkpoint), views=views,
                                         **kwargs)


@pytest.fixture(scope="session", name="tiny_prior")
def tiny_prior_fixture(tmp_path_factory) -> TinyPrior:
    out = tmp_path_factory.mktemp("rh_tiny_prior")
    root = out / "data"
    torch.manual_seed(0)
    cli = AvatarCLI(args=["fit", "-c", str(EXPERIMENTS / "realhead_prior.yaml"), *CPU, "--trainer.max_steps=2",
                          "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={out}",
                          *[f"--model.init_args.{k}={v}" for k, v in TINY_MODEL.items()],
                          f"--data.init_args.root={root}",
                          *[f"--data.init_args.{k}={v}" for k, v in TINY_DATA.items()]])
    checkpoint = out / "realhead_prior.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    source = {"class_path": "data_modules.realhead.RealHeadSyntheticDataModule",
              "init_args": {"root": str(root), **TINY_DATA}}
    return TinyPrior(checkpoint, root, source)


def quiet_trainer(tmp_path: Path, steps: int, **kwargs) -> Trainer:
    """A CPU trainer without logger, checkpoints, progress bar or validation."""
    return Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                   default_root_dir=tmp_path, **kwargs)
