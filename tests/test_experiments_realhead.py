"""Every shipped 3DRealHead prior config (``experiments/realhead_prior.yaml`` and the Table II / III
ablations stacked on it) runs a shrunk fit through the CLI, discriminator included, and keeps its switch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.test_experiments import (
    DATA,
    EXPERIMENTS,
    _assert_ran,
    _run,
    _trainer_args,
    config_stack,
    family,
    stacked,
)

pytestmark = pytest.mark.usefixtures("one_thread")
# realhead_prior_nersemble.yaml (real data) runs shrunk in tests/test_data_realhead_nersemble.py
CONFIGS = sorted(c for c in EXPERIMENTS.glob("**/*.yaml") if family(c) == "realhead_prior"
                 and stacked(c)["data"]["class_path"] == "data_modules.realhead.RealHeadSyntheticDataModule")
STEPS = 2
TINY_MODEL = {"levels": 2, "c_base": 128, "c_max": 16, "style_dim": 16, "disc_crop": 64, "adv_start": 1,
              "adv_ramp": 1}


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory) -> Path:
    """A ViT-S/16 state dict with DINO's key names (random weights: none ship offline)."""
    from avatar_lightning.models.vit import ViT

    path = tmp_path_factory.mktemp("dino") / "dino_deitsmall16_pretrain.pth"
    torch.save(ViT().state_dict(), path)
    return path


def test_there_are_realhead_configs() -> None:
    names = {str(c.relative_to(EXPERIMENTS)) for c in CONFIGS}
    assert {"realhead_prior.yaml", "realhead/no_adversarial.yaml", "realhead/hog_mouth.yaml"} <= names


@pytest.mark.parametrize("cfg", [pytest.param(c, id=str(c.relative_to(EXPERIMENTS))) for c in CONFIGS])
def test_realhead_config_runs_a_shrunk_fit(cfg: Path, tmp_path_factory, dino_file: Path) -> None:
    config = stacked(cfg)
    out = tmp_path_factory.mktemp("rh_fit")
    data_root = tmp_path_factory.getbasetemp() / "rh_synth"  # shared: each config's maps are cached by setting
    model_args = {k: v for k, v in TINY_MODEL.items()}
    args = [*config_stack(cfg), *_trainer_args(STEPS, out), f"--data.init_args.root={data_root}",
            *[f"--data.init_args.{k}={v}" for k, v in DATA.items()],
            *[f"--model.init_args.{k}={v}" for k, v in model_args.items()],
            f"--trainer.val_check_interval={STEPS}", "--trainer.limit_val_batches=1"]
    if config["data"]["init_args"].get("mouth_features") == "dino":
        args.append(f"--data.init_args.mouth_dino_weights={dino_file}")
    cli, recorder = _run(["fit", *args])
    _assert_ran(cli, recorder, STEPS)
    data, model = config["data"]["init_args"], config["model"]["init_args"]
    assert cli.datamodule.hparams.mouth_features == data["mouth_features"]  # the ablation survives the shrink
    assert cli.datamodule.hparams.mouth_region == data["mouth_region"]
    assert cli.model.hparams.use_mouth == model.get("use_mouth", True)
    assert cli.model.hparams.uv_size == DATA["uv_size"]  # linked from the data
    assert (cli.model.discriminator is None) == (model["adv_weight"] == 0)
    if cli.model.discriminator is not None:
        assert math.isfinite(float(cli.trainer.callback_metrics["train/adv_d"]))
    assert math.isfinite(float(cli.trainer.callback_metrics["val/psnr"]))
