"""The shipped demo prior (issue 13): ``python -m avatar_lightning.demo.ship`` and ``priors/demo_prior.*``.

The shipping tool is checked on a tiny prior; the shipped files are checked against their own record
(bytes, step, config) and against ``experiments/demo_prior.yaml`` (same network and dataset, so
``make demo`` inverts it on identities it held out).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from avatar_lightning.demo.ship import main, sha256, ship
from avatar_lightning.lit.checkpoint import find_prior_checkpoint
from avatar_lightning.lit.inversion import SynShotInversion
from tests.test_inversion import save_prior

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "priors" / "demo_prior"


def test_ship_keeps_weights_and_records_drops_optimiser_state(tmp_path) -> None:
    run = tmp_path / "run" / "lightning_logs" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed_everything: 0\n")
    save_prior(run / "checkpoints" / "last.ckpt")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    state.update(optimizer_states=[{"state": {0: torch.zeros(1000)}}], global_step=1234, loops={"x": 1},
                 dataset={"class_path": "data_modules.synthetic.SyntheticDataModule", "init_args": {"identities": 3}})
    torch.save(state, run / "checkpoints" / "last.ckpt")
    record = ship(run / "checkpoints" / "last.ckpt", tmp_path / "out" / "prior", "lightning fit -c x.yaml")
    shipped = torch.load(tmp_path / "out" / "prior.ckpt", weights_only=False)
    assert "optimizer_states" not in shipped and "loops" not in shipped
    assert shipped["global_step"] == 1234 and shipped["dataset"] == state["dataset"]
    assert all(torch.equal(v, state["state_dict"][k]) for k, v in shipped["state_dict"].items())
    assert record["sha256"] == sha256(tmp_path / "out" / "prior.ckpt") and record["global_step"] == 1234
    assert record["config_sha256"] == sha256(run / "config.yaml")
    assert (tmp_path / "out" / "prior.config.yaml").read_text() == "seed_everything: 0\n"
    assert json.loads((tmp_path / "out" / "prior.json").read_text())["command"] == "lightning fit -c x.yaml"
    # the inversion loads the slim checkpoint like any prior
    model = SynShotInversion(prior_checkpoint=str(tmp_path / "out" / "prior.ckpt"), render_backend="torch")
    model.configure_model()


def test_ship_refuses_what_is_not_a_prior(tmp_path, capsys) -> None:
    torch.save({"state_dict": {"net.encoder_id.w": torch.zeros(1)}}, tmp_path / "other.ckpt")
    assert main([str(tmp_path / "other.ckpt"), "--out", str(tmp_path / "o"), "--command", "x"]) == 1
    assert f"{tmp_path / 'other.ckpt'} is not a SynShot prior checkpoint" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o"), "--command", "x"]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "o.ckpt").exists()


def test_the_shipped_prior_is_what_its_record_says() -> None:
    record = json.loads(SHIPPED.with_suffix(".json").read_text())
    ckpt = SHIPPED.with_suffix(".ckpt")
    assert sha256(ckpt) == record["sha256"], "priors/demo_prior.ckpt changed without re-shipping it"
    assert sha256(SHIPPED.with_suffix(".config.yaml")) == record["config_sha256"]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == record["global_step"] >= 1500 and "optimizer_states" not in state
    demo = yaml.safe_load((ROOT / "experiments" / "demo_prior.yaml").read_text())
    # the network and the dataset of experiments/demo_prior.yaml: make demo's subjects are held out
    assert state["hyper_parameters"]["net"] == {**state["hyper_parameters"]["net"], **demo["model"]["init_args"]["net"]}
    assert {k: state["dataset"]["init_args"][k] for k in demo["data"]["init_args"]} == demo["data"]["init_args"]
    assert find_prior_checkpoint(str(ckpt)) == ckpt


@pytest.mark.parametrize("name", ["demo_prior.ckpt", "demo_prior.json", "demo_prior.config.yaml"])
def test_the_shipped_files_are_small_enough_for_the_repository(name: str) -> None:
    assert (SHIPPED.parent / name).stat().st_size < 8 * 2**20
