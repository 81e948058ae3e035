"""`lightning fit -c experiments/prior.yaml`, shrunk to a tiny synthetic set, then `lightning test` on
the held-out identities and the README report (curve + held-out grid + JSON) from that run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avatar_lightning import report
from avatar_lightning.cli import AvatarCLI, find_last_checkpoint
from tests.test_inversion import reference_head_psnr
from tests.test_lit_prior import TINY_NET
from tests.test_synth_generate import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _shrunk(root: Path, out: Path) -> list[str]:
    data = [f"--data.init_args.{k}={v}" for k, v in TINY.items()]
    net = [f"--model.init_args.net.{k}={v}" for k, v in TINY_NET.items()]
    return ["-c", "experiments/prior.yaml", "--trainer.accelerator=cpu", "--trainer.max_steps=3",
            "--trainer.val_check_interval=3", "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={out}",
            f"--data.init_args.root={root}", *data, *net,
            "--model.init_args.part_samples={face: 8, hair: 6}", "--model.init_args.render_backend=torch"]


def test_prior_yaml_fit_test_and_report(tmp_path_factory, tmp_path: Path) -> None:
    root = tmp_path_factory.getbasetemp() / "synth_tiny"  # shared with the synthetic-data tests
    cli = AvatarCLI(args=["fit", *_shrunk(root, tmp_path / "run")])
    assert cli.trainer.global_step == 3
    assert "val/psnr" in cli.trainer.callback_metrics
    log_dir = Path(cli.trainer.log_dir)
    ckpt = log_dir / "checkpoints" / "last.ckpt"
    cli.trainer.save_checkpoint(ckpt)

    # `lightning fit ... --ckpt_path last` resumes the previous run (Lightning alone would look in
    # the new, empty version folder and start from scratch)
    resumed = AvatarCLI(args=["fit", *_shrunk(root, tmp_path / "run"), "--trainer.max_steps=4", "--ckpt_path=last"])
    assert resumed.trainer.global_step == 4 and resumed.trainer.ckpt_path == str(ckpt)

    tested = AvatarCLI(args=["test", *_shrunk(root, tmp_path / "test"), f"--ckpt_path={ckpt}"])
    metrics = tested.trainer.callback_metrics
    assert {"test/psnr", "test/ssim", "test/loss", "test/psnr_full"} <= set(metrics)
    # recomputed here: the checkpoint's renders of the test split, head-region PSNR per image, averaged
    heldout = _reference_scores(tested.model.eval(), list(tested.datamodule.test_dataloader()))
    assert heldout["identities"] == {2} and heldout["images"] == 2 * 3  # 1 identity × 2 expressions × 3 views
    assert float(metrics["test/psnr"]) == pytest.approx(heldout["psnr"], abs=1e-4)
    assert float(metrics["test/psnr_full"]) == pytest.approx(heldout["psnr_full"], abs=1e-4)
    assert abs(heldout["psnr"] - heldout["psnr_full"]) > 0.1  # the background counts in one of them only

    out = tmp_path / "report"
    result = report.main([str(log_dir), "--ckpt", str(ckpt), "--out", str(out)])
    assert result["global_step"] == 3
    assert result["held_out"]["identities"] == [2] and result["train"]["identities"] == [0]  # 3 ids: train, val, test
    # the report scores the test split's images (same identity, expressions and spread views) with the
    # same checkpoint, so its held-out figures are lightning test's; its train identity is recomputed too
    train = _reference_scores(tested.model, [report.identity_batch(tested.datamodule, 0, [0, 1])])
    for split, ref in (("held_out", heldout), ("train", train)):
        assert result[split]["psnr"] == pytest.approx(ref["psnr"], abs=1e-4), split
        assert result[split]["psnr_full"] == pytest.approx(ref["psnr_full"], abs=1e-4), split
        (identity,) = result[split]["identities"]
        assert result[split]["per_identity"][str(identity)] == pytest.approx(
            {k: v for k, v in result[split].items() if k not in ("identities", "per_identity")})
        assert 0 < result[split]["ssim"] <= 1
    assert result["held_out"]["psnr"] != pytest.approx(result["train"]["psnr"], abs=1e-3)
    saved = json.loads((out / "prior_report.json").read_text())
    assert saved["held_out"]["psnr"] == pytest.approx(result["held_out"]["psnr"])
    assert len(saved["curve"]["val/psnr"]) == 1  # one validation, at the end of the 3 steps
    grid = np.asarray(Image.open(out / "prior_heldout.png"))
    tile = 2 * 16 + 2  # enlarged 2× plus padding
    assert grid.shape[0] == 6 * tile + 2 and grid.shape[1] == 3 * tile + 2  # (1 id × 2 expressions × 3 rows) × 3 views
    assert Image.open(out / "prior_curve.png").size == (640, 240)
    assert Image.open(out / "prior_turntable.png").size == (8 * tile + 2, tile + 2)  # one row of 8 orbit views


@torch.no_grad()
def _reference_scores(model, batches: list[dict[str, torch.Tensor]]) -> dict[str, object]:
    """Head-region and whole-frame PSNR of ``model``'s renders of ``batches``, per image, then averaged."""
    psnr, full, identities = [], [], set()
    for batch in batches:
        render = model(batch).render
        pred, target = render.rgb.flatten(0, 1).clamp(0, 1), batch["image"].flatten(0, 1)
        psnr.append(reference_head_psnr(pred, target, batch["mask"].flatten(0, 1)))
        full.append(-10 * torch.log10(((pred - target) ** 2).mean(dim=(1, 2, 3))))
        identities |= set(batch["identity"].tolist())
    return {"psnr": float(torch.cat(psnr).mean()), "psnr_full": float(torch.cat(full).mean()),
            "images": sum(p.numel() for p in psnr), "identities": identities}


def test_run_dir_resolves_to_the_newest_training_version(tmp_path: Path) -> None:
    for n in (0, 2, 10):
        (tmp_path / "lightning_logs" / f"version_{n}").mkdir(parents=True)
    assert report.resolve_run_dir(tmp_path) == tmp_path / "lightning_logs" / "version_10"
    (tmp_path / "lightning_logs" / "version_2" / "checkpoints").mkdir()
    (tmp_path / "lightning_logs" / "version_2" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert report.resolve_run_dir(tmp_path) == tmp_path / "lightning_logs" / "version_2"  # 10 has no checkpoint
    two = tmp_path / "lightning_logs" / "version_2"
    assert report.resolve_run_dir(two) == two


def test_report_names_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no last.ckpt under"):
        report.main([str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="no last.ckpt under"):
        find_last_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="events.out.tfevents"):
        report.read_scalars(tmp_path, ["val/psnr"])
