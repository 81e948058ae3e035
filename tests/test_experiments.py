"""Every shipped ``experiments/**/*.yaml`` runs a shrunk fit on CPU, as lightning-hydra-template does.

Configs that stack on a base (``# stack-on: <file>`` on their first line) run on top of it. Shrinking
replaces only sizes (data, network, part samples, steps, video lengths) and the settings that need a
GPU (accelerator, devices, strategy); everything else — callbacks, losses, the ablation switches,
bf16-mixed precision — runs as shipped. The inversion configs invert a prior written by a shrunk
fit of ``prior.yaml``, and take their subject from the dataset that prior recorded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

from avatar_lightning.cli import AvatarCLI
from tests.test_lit_prior import TINY_NET
from tests.test_synth_generate import TINY

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CONFIGS = sorted(EXPERIMENTS.glob("**/*.yaml"))
FAMILIES = {"avatar_lightning.lit.synshot_prior.SynShotPrior": "prior",
            "avatar_lightning.lit.realhead_prior.RealHeadPrior": "realhead_prior",  # test_experiments_realhead.py
            # enroll.yaml -> drive.yaml through the CLI: tests/test_realhead_drive.py
            "avatar_lightning.lit.realhead_enroll.RealHeadEnrollment": "realhead_enroll",
            "avatar_lightning.realhead.drive.RealHeadDriver": "realhead_drive",
            "avatar_lightning.lit.inversion.SynShotInversion": "invert",
            "avatar_lightning.lit.baseline.GaussianAvatarBaseline": "baseline"}
#: the tiny synthetic set with 8 cameras: a held-out identity has 2 × 5 evaluation images, not 2 × 25
#: (scoring them, SFace included, is most of an inversion's shrunk fit)
DATA = {**TINY, "cameras": 8}
PRIOR_STEPS, AVATAR_STEPS = 2, 4  # the inversion: 3 stage-1 steps (one per input image), then stage 2
FROZEN_IN_INVERSION = ("net.enc_expr.", "net.quant_", "net.transformer_")
#: shrunk fits whose configs differ from a default-run one only by values (F = 32 / 64, paper scale
#: before the ablation switch); slow-marked to keep `make test` short
SLOW = {"ablations/f32.yaml", "ablations/f64.yaml", "demo_prior.yaml", "demo_prior_shipped.yaml"}

pytestmark = pytest.mark.usefixtures("one_thread")


def config_stack(path: Path) -> list[str]:
    """The ``-c`` arguments for a config, following ``# stack-on:`` headers to the base."""
    first = path.read_text().splitlines()[:1]
    args = ["-c", str(path)]
    if first and first[0].startswith("# stack-on:"):
        base = (path.parent / first[0].split(":", 1)[1].strip()).resolve()
        args = config_stack(base) + args
    return args


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def stacked(path: Path) -> dict[str, Any]:
    """The config's YAML files merged as ``-c a -c b`` merges them (mappings key by key, lists replaced)."""
    config: dict[str, Any] = {}
    for f in config_stack(path)[1::2]:
        config = _merge(config, yaml.safe_load(Path(f).read_text()) or {})
    return config


class StepLosses(Callback):
    """Every optimiser step's loss, as the training loop saw it."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def _run(args: list[str]) -> tuple[AvatarCLI, StepLosses]:
    """``lightning fit <args>`` with a loss recorder appended to the config's callbacks."""
    cli = AvatarCLI(args=[*args, "--trainer.callbacks+=tests.test_experiments.StepLosses"])
    recorder = [cb for cb in cli.trainer.callbacks if isinstance(cb, StepLosses)]
    assert len(recorder) == 1
    return cli, recorder[0]


def _trainer_args(steps: int, out: Path) -> list[str]:
    return ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
            f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={out}", "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false"]


def shrunk_prior_args(cfg: Path, data_root: Path, out: Path) -> tuple[list[str], dict[str, Any]]:
    """CLI arguments of a shrunk prior fit, and the network fields the config's own file sets (an
    ablation's switch or width), which the shrink keeps."""
    config = stacked(cfg)
    own = (yaml.safe_load(cfg.read_text()) or {}).get("model", {}).get("init_args", {}).get("net", {})
    kept = own if cfg.parent.name == "ablations" else {}
    # map_resolution is the data's uv_size (linked by the CLI), not a network setting to shrink
    net = [f"--model.init_args.net.{k}={v}" for k, v in TINY_NET.items() if k not in kept and k != "map_resolution"]
    args = [*config_stack(cfg), *_trainer_args(PRIOR_STEPS, out), *net,
            "--model.init_args.part_samples={face: 8, hair: 6}", f"--data.init_args.root={data_root}",
            *[f"--data.init_args.{k}={v}" for k, v in DATA.items()]]
    if config["trainer"].get("limit_val_batches", 1) != 0:  # validate once, at the end, through the config's loggers
        args += [f"--trainer.val_check_interval={PRIOR_STEPS}", "--trainer.limit_val_batches=1"]
    return args, kept


def shrunk_avatar_args(cfg: Path, out: Path, prior: Path, steps: int = AVATAR_STEPS) -> list[str]:
    """CLI arguments of a shrunk personal-avatar fit (inversion or baseline) of the first held-out
    identity of ``prior``'s dataset (the configs' default subject); an inversion inverts ``prior``."""
    args = [*config_stack(cfg), *_trainer_args(steps, out), f"--data.init_args.prior_checkpoint={prior}",
            f"--model.init_args.output_dir={out / 'avatar'}", "--model.init_args.turntable_frames=2",
            "--model.init_args.expression_steps=1"]
    if family(cfg) == "invert":
        args += [f"--model.init_args.prior_checkpoint={prior}", "--model.init_args.stage1_steps_per_frame=1"]
    return args


def _assert_ran(cli: AvatarCLI, recorder: StepLosses, steps: int) -> None:
    """The trainer finished (not interrupted) after exactly ``steps`` optimiser steps, each with a finite loss."""
    trainer = cli.trainer
    assert trainer.state.finished and not trainer.interrupted
    assert trainer.global_step == steps
    assert len(recorder.losses) == steps and all(math.isfinite(v) for v in recorder.losses), recorder.losses


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synth_c8")


@pytest.fixture(scope="module")
def shrunk_prior(data_root: Path, tmp_path_factory) -> tuple[AvatarCLI, StepLosses, Path]:
    """A shrunk fit of ``experiments/prior.yaml`` and its checkpoint (what the inversion configs invert)."""
    out = tmp_path_factory.mktemp("prior")
    args, _ = shrunk_prior_args(EXPERIMENTS / "prior.yaml", data_root, out)
    cli, recorder = _run(["fit", *args])
    ckpt = out / "prior.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    return cli, recorder, ckpt


def family(cfg: Path) -> str | None:
    """``prior``, ``invert`` or ``baseline``: which shrink the config's model takes (None: unknown)."""
    return FAMILIES.get(stacked(cfg).get("model", {}).get("class_path", ""))


def _params(name: str) -> list:
    cfgs = [c for c in CONFIGS if family(c) == name]
    return [pytest.param(c, id=str(c.relative_to(EXPERIMENTS)),
                         marks=[pytest.mark.slow] if str(c.relative_to(EXPERIMENTS)) in SLOW else []) for c in cfgs]


def test_every_config_has_a_shrunk_fit() -> None:
    unknown = [str(c.relative_to(EXPERIMENTS)) for c in CONFIGS if family(c) is None]
    assert not unknown, f"no shrink for these configs' models: {unknown}; add the model class to FAMILIES"
    assert {family(c) for c in CONFIGS} == set(FAMILIES.values())


@pytest.mark.parametrize("cfg", _params("prior"))
def test_prior_config_runs_a_shrunk_fit(cfg: Path, data_root: Path, request, tmp_path: Path) -> None:
    config = stacked(cfg)
    if cfg == EXPERIMENTS / "prior.yaml":
        cli, recorder, _ = request.getfixturevalue("shrunk_prior")
    else:
        args, kept = shrunk_prior_args(cfg, data_root, tmp_path)
        cli, recorder = _run(["fit", *args])
        for field, value in kept.items():  # the ablation survives the shrink
            assert getattr(cli.model.net.config, field) == value, field
    _assert_ran(cli, recorder, PRIOR_STEPS)
    assert cli.trainer.precision == config["trainer"].get("precision", "32-true")  # bf16-mixed runs on CPU too
    if config["trainer"].get("limit_val_batches", 1) != 0:
        assert math.isfinite(float(cli.trainer.callback_metrics["val/psnr"]))


@pytest.mark.parametrize("cfg", _params("invert") + _params("baseline"))
def test_avatar_config_runs_a_shrunk_fit(cfg: Path, shrunk_prior, tmp_path: Path) -> None:
    inversion = family(cfg) == "invert"
    prior = shrunk_prior[2]
    cli, recorder = _run(["fit", *shrunk_avatar_args(cfg, tmp_path, prior)])
    _assert_ran(cli, recorder, AVATAR_STEPS)
    out = tmp_path / "avatar"
    assert {"avatar.ckpt", "avatar.ply", "metrics.json", "turntable.mp4", "expressions.mp4"} <= {
        p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == AVATAR_STEPS and metrics["stop_kind"] == "cap"  # trainer.max_steps ended the shrunk fit
    assert metrics["n_input_frames"] == cli.datamodule.source.hparams.fewshot_inputs
    if inversion:
        assert [s for _, s, _ in cli.model.loss_history] == [1, 1, 1, 2]
        _assert_inverted(cli.model.state_dict(), prior)


def test_prior_then_invert_through_the_cli_inverts_an_identity_the_prior_never_saw(shrunk_prior,
                                                                                  tmp_path: Path) -> None:
    """prior.yaml → invert.yaml as a user runs them: the inversion's subject comes from the dataset the
    prior checkpoint recorded, and is one of the identities it held out (the leak this replaced: a
    hand-copied dataset config of other size, whose "held-out" identity the prior had trained on)."""
    prior_cli, _, ckpt = shrunk_prior
    splits = prior_cli.datamodule.split_identities()
    assert torch.load(ckpt, weights_only=False)["dataset"]["init_args"]["identities"] == DATA["identities"]
    args = [*shrunk_avatar_args(EXPERIMENTS / "invert.yaml", tmp_path, ckpt, steps=1),
            "--model.init_args.output_dir=null"]
    cli, recorder = _run(["fit", *args])
    _assert_ran(cli, recorder, 1)
    subject = cli.datamodule.split.identity
    assert subject not in splits["train"] and subject == splits["test"][0]
    assert cli.datamodule.source.data_dir == prior_cli.datamodule.data_dir  # the prior's very dataset
    trained = AvatarCLI(args=[*config_stack(EXPERIMENTS / "invert.yaml"), *_trainer_args(1, tmp_path),
                              f"--model.init_args.prior_checkpoint={ckpt}",
                              f"--data.init_args.identity={splits['train'][0]}"], run=False)
    with pytest.raises(ValueError, match="is one the prior trained on"):
        trained.datamodule.setup("fit")


def test_stage_study_rebuilds_each_stage_and_scores_the_fits_own_held_out_images(shrunk_prior, tmp_path: Path,
                                                                               capsys) -> None:
    """python -m avatar_lightning.demo.stages (issue 13: does stage 2 over-fit?) on a shrunk inversion."""
    from avatar_lightning.demo.stages import STAGES, main, study_fit

    prior = shrunk_prior[2]
    fit_dir = tmp_path / "run" / "inversion" / "7"
    args = [*shrunk_avatar_args(EXPERIMENTS / "invert.yaml", tmp_path, prior),
            f"--model.init_args.output_dir={fit_dir}"]
    cli, recorder = _run(["fit", *args])
    assert int(cli.model.stage) == 2  # 3 stage-1 steps, then stage 2
    study = study_fit(fit_dir)
    assert set(study) == set(STAGES)
    own = json.loads((fit_dir / "metrics.json").read_text())
    for split, scores in study["stage2"].items():  # the fitted avatar scores what its own metrics.json says
        for key in ("psnr", "ssim", "lpips"):
            assert scores[key] == pytest.approx(own[split][key], abs=1e-4), (split, key)
    assert study["prior"]["novel_expression"]["psnr"] != study["stage2"]["novel_expression"]["psnr"]
    assert main([str(tmp_path / "run")]) == 0
    assert "Δ stage 2 − stage 1" in capsys.readouterr().out and (tmp_path / "run" / "stages.json").is_file()
    assert main([str(tmp_path / "nothing")]) == 1
    assert f"no inversion fits under {tmp_path / 'nothing'}/inversion/" in capsys.readouterr().err


def _assert_inverted(ours: dict[str, torch.Tensor], prior: Path) -> None:
    """What neither inversion stage trains (E_expr, the VQ codebooks and their statistics, the
    transformers) is the prior checkpoint's, to the bit; the decoders it fine-tuned are not."""
    prior_state = torch.load(prior, map_location="cpu", weights_only=False)["state_dict"]
    frozen = [k for k in prior_state if k.startswith(FROZEN_IN_INVERSION)]
    assert {k.split(".")[1] for k in frozen} == {"enc_expr", "quant_id", "quant_expr", "transformer_id",
                                                 "transformer_expr"}
    assert [k for k in frozen if not torch.equal(ours[k], prior_state[k])] == []
    assert not all(torch.equal(ours[k], prior_state[k]) for k in prior_state if k.startswith("net.dec_feat."))


@pytest.mark.parametrize(("name", "field", "value"), [
    ("prior_paper.yaml", "map_resolution", 512),
    ("prior_paper.yaml", "feature_channels", 128),
    ("ablations/f32.yaml", "feature_channels", 32),
    ("ablations/f32.yaml", "map_resolution", 512),
    ("ablations/without_vq.yaml", "use_vq", False),
])
def test_stacked_configs_take_effect(name: str, field: str, value: object, tmp_path: Path) -> None:
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32"]
    cli = AvatarCLI(args=[*config_stack(EXPERIMENTS / name), *cpu, f"--trainer.default_root_dir={tmp_path}"],
                    run=False)
    assert getattr(cli.model.net.config, field) == value


def test_the_data_decides_head_coefficients_and_map_size(tmp_path: Path) -> None:
    """prior.yaml states head model, coefficient counts and UV size once, under data: the CLI links them."""
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", f"--trainer.default_root_dir={tmp_path}"]
    cli = AvatarCLI(args=[*config_stack(EXPERIMENTS / "prior.yaml"), *cpu, "--data.init_args.uv_size=32",
                          "--data.init_args.n_expr=10"], run=False)
    assert cli.model.net.config.map_resolution == 32 and cli.model.hparams.n_expr == 10 == cli.model.head.n_expr
    model_args = stacked(EXPERIMENTS / "prior.yaml")["model"]["init_args"]
    assert not {"head_model", "n_shape", "n_expr"} & set(model_args) and "map_resolution" not in model_args["net"]
