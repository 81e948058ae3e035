"""A shrunk ``lightning fit`` of the SynShot prior on the tiny NeRSemble (VHAP) and INSTA fixtures."""

from __future__ import annotations

import pytest
import yaml

from avatar_lightning.cli import main
from tests.real_fixtures import build_insta_fixture, build_vhap_fixture, fixture_flame_path, fixture_head

TINY_NET = {
    "map_resolution": 16, "latent_resolution": 4, "feature_channels": 8, "id_code_dim": 4, "expr_code_dim": 4,
    "id_codebook_size": 16, "expr_codebook_size": 16, "channels": 8, "max_channels": 16,
    "transformer_width": 16, "transformer_heads": 2, "transformer_depth": 1, "regressor_hidden": 8,
}


def fit(tmp_path, data: dict) -> None:
    head = fixture_head()
    common = {"n_shape": head.n_shape, "n_expr": head.n_expr, "head_model": str(fixture_flame_path())}
    config = {
        "model": {"class_path": "avatar_lightning.lit.synshot_prior.SynShotPrior",
                  "init_args": {"net": TINY_NET, "part_samples": {"face": 10, "hair": 8}, "lr": 1e-3,
                                "render_backend": "torch", **common}},
        "data": {"class_path": data.pop("class_path"),
                 "init_args": {"uv_size": TINY_NET["map_resolution"], "batch_size": 2, **common, **data}},
        "trainer": {"max_steps": 2, "limit_val_batches": 1, "num_sanity_val_steps": 0, "accelerator": "cpu",
                    "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "runs")},
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    cli = main(["fit", "-c", str(tmp_path / "fit.yaml")])
    assert cli.trainer.global_step == 2


@pytest.mark.slow
def test_prior_fits_on_vhap_fixture(tmp_path):
    build_vhap_fixture(tmp_path / "seq", fixture_head(), n_timesteps=4, cameras=(2, 8, 14))
    fit(tmp_path, {"class_path": "data_modules.NeRSembleDataModule", "roots": [str(tmp_path / "seq")],
                   "train_ratio": 0.5, "views_per_sample": 2, "texture_cameras": [8]})


@pytest.mark.slow
def test_prior_fits_on_insta_fixture(tmp_path):
    build_insta_fixture(tmp_path / "actor", fixture_head(), n_frames=6, tracker_dir=tmp_path / "tracker")
    fit(tmp_path, {"class_path": "data_modules.INSTADataModule", "roots": [str(tmp_path / "actor")],
                   "tracker_dirs": [str(tmp_path / "tracker")], "n_test": 2, "n_val": 1})
