"""``prior_checkpoint: latest``: says which checkpoint it takes, refuses an obviously untrained one; the
dataset a checkpoint records."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch

from avatar_lightning.lit.checkpoint import find_prior_checkpoint, recorded_dataset


def _checkpoint(path: Path, step: int, age_s: float = 0.0) -> Path:
    """A Lightning-style prior checkpoint (only what the lookup reads) in ``<run>/checkpoints/``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"net.enc_id.w": torch.zeros(1)}, "global_step": step, "epoch": step // 10,
                "hyper_parameters": {"net": {"map_resolution": 64, "feature_channels": 32}}}, path)
    (path.parent.parent / "config.yaml").write_text("model: {}\n")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_latest_refuses_a_just_written_shrunk_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _checkpoint(runs / "prior" / "version_0" / "checkpoints" / "last.ckpt", step=1500, age_s=100)
    shrunk = _checkpoint(runs / "prior" / "version_1" / "checkpoints" / "last-v1.ckpt", step=1)
    with pytest.raises(ValueError, match=r"last-v1\.ckpt .*global_step 1,.*trained for 1 steps") as err:
        find_prior_checkpoint("latest", runs)
    assert "prior_checkpoint=PATH" in str(err.value)
    assert find_prior_checkpoint("latest", runs, allow_untrained=True) == shrunk
    with pytest.warns(UserWarning, match="trained for 1 steps only"):
        assert find_prior_checkpoint(shrunk) == shrunk  # an explicit path is used as given


def test_latest_names_the_checkpoint_its_step_and_config(tmp_path: Path, caplog) -> None:
    runs = tmp_path / "runs"
    trained = _checkpoint(runs / "prior" / "version_0" / "checkpoints" / "last.ckpt", step=1500)
    with caplog.at_level(logging.INFO):
        assert find_prior_checkpoint("latest", runs) == trained
    said = caplog.text
    assert str(trained) in said and "global_step 1500" in said and "map_resolution': 64" in said
    assert str(runs / "prior" / "version_0" / "config.yaml") in said


def test_recorded_dataset_reads_the_record_or_lightnings_datamodule_hparams(tmp_path: Path) -> None:
    config = {"class_path": "data_modules.synthetic.SyntheticDataModule", "init_args": {"identities": 16}}
    torch.save({"state_dict": {}, "dataset": config}, tmp_path / "new.ckpt")
    assert recorded_dataset(tmp_path / "new.ckpt") == config
    # a prior written through LightningCLI before the record existed: Lightning's datamodule hparams
    torch.save({"state_dict": {}, "datamodule_hyper_parameters": {"_class_path": config["class_path"],
                                                                  "_instantiator": "x", "identities": 16}},
               tmp_path / "old.ckpt")
    assert recorded_dataset(tmp_path / "old.ckpt") == config
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match=r"bare\.ckpt records no dataset.*data\.init_args\.source"):
        recorded_dataset(tmp_path / "bare.ckpt")


def test_latest_finds_the_newest_prior_of_the_kind_asked_for(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    synshot = _checkpoint(runs / "prior" / "version_0" / "checkpoints" / "last.ckpt", step=1500, age_s=100)
    realhead = runs / "realhead_prior" / "version_0" / "checkpoints" / "last.ckpt"
    realhead.parent.mkdir(parents=True)
    torch.save({"state_dict": {"net.encoder_id.stem.weight": torch.zeros(1)}, "global_step": 3000}, realhead)
    assert find_prior_checkpoint("latest", runs) == synshot  # the newer 3DRealHead prior is not invertible
    assert find_prior_checkpoint("latest", runs, kind="realhead") == realhead
    with pytest.raises(ValueError, match="kind must be one of"):
        find_prior_checkpoint("latest", runs, kind="nerf")
    with pytest.raises(FileNotFoundError, match="no realhead prior checkpoint .*realhead_prior.yaml"):
        find_prior_checkpoint("latest", tmp_path / "empty", kind="realhead")
