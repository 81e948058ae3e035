"""Report on a trained prior (SynShot or 3DRealHead): the training curve and held-out reconstructions, for the README.

    python -m avatar_lightning.report RUN_DIR [--ckpt PATH] [--out DIR] [--identities N]

``RUN_DIR`` is a Lightning log folder of ``lightning fit -c experiments/prior.yaml`` or
``experiments/realhead_prior.yaml`` (it holds the
TensorBoard events and ``checkpoints/``; ``--ckpt`` defaults to its ``checkpoints/last.ckpt``), or a
``default_root_dir`` such as ``runs/prior``, whose newest ``lightning_logs/version_N`` is taken.
The DataModule is rebuilt from the hyper-parameters stored in the checkpoint, so the report sees
exactly the identities the run held out. Writes, atomically, under ``--out`` (default: RUN_DIR/report):

- ``prior_curve.png``: training image loss and validation PSNR over steps (from TensorBoard);
- ``prior_heldout.png``: per held-out (test) identity, rows target | reconstruction | error over
  the spread evaluation views, neutral and one non-neutral expression;
- ``prior_turntable.png``: a 360° orbit of the first held-out identity, reconstructed (neutral);
- ``prior_report.json``: head-region PSNR / SSIM / LPIPS / ID (and whole-frame PSNR, labelled) of
  the reconstructions of held-out and of training identities (same views, same expressions), per
  identity and over all their images (per image, then averaged), and the curve's points.

Reconstruction means the prior's feed-forward output: for SynShot, E_id / E_expr encode the
identity's UV maps and the decoders and regressors produce Gaussians; for 3DRealHead, the Style
U-Net reads the held-out identity's 3-view neutral texture (mouth zeroed), each frame's expression
offsets and frontal mouth features; the Gaussians are rendered from the evaluation cameras. No
per-subject optimisation is involved (that is the inversion's job, ``experiments/invert.yaml``).
"""

from __future__ import annotations

import argparse
import glob
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avatar_lightning.cli import find_last_checkpoint
from avatar_lightning.io import atomic_path, save_image, write_json
from avatar_lightning.viz import enlarge, error_map, hstack_images, line_plot, make_grid


def resolve_run_dir(path: Path) -> Path:
    """``path`` itself, or for a ``default_root_dir`` its newest ``lightning_logs/version_N`` that
    holds a ``checkpoints/last*.ckpt`` (a training run), else its newest version."""
    versions = sorted((path / "lightning_logs").glob("version_*"),
                      key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else -1)
    trained = [v for v in versions if any((v / "checkpoints").glob("last*.ckpt"))]
    return (trained or versions or [path])[-1]


def read_scalars(run_dir: Path, tags: list[str]) -> dict[str, list[tuple[int, float]]]:
    """The (step, value) points of TensorBoard scalars ``tags`` from every event file under ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {t: [] for t in tags}
    files = sorted(glob.glob(str(run_dir / "**" / "events.out.tfevents*"), recursive=True))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no TensorBoard event files (events.out.tfevents*) under it")
    for f in files:
        acc = EventAccumulator(f, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in set(tags) & set(acc.Tags()["scalars"]):
            out[tag].extend((e.step, float(e.value)) for e in acc.Scalars(tag))
    return {t: sorted(dict(v).items()) for t, v in out.items()}  # a resumed run may log a step twice


def smooth(points: list[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    """Running mean over ``window`` consecutive points (TensorBoard-style smoothing, no look-ahead)."""
    out, acc = [], []
    for step, value in points:
        acc.append(value)
        acc = acc[-window:]
        out.append((step, sum(acc) / len(acc)))
    return out


def prior_class(checkpoint: dict[str, Any]) -> type:
    """The LightningModule class a prior checkpoint was written by: its recorded ``module_class``, else
    (checkpoints written before it was recorded) told apart by its hyper-parameters.

    Raises:
        ValueError: neither a SynShot nor a 3DRealHead prior.
    """
    import importlib

    from avatar_lightning.lit.base import MODULE_KEY

    path = checkpoint.get(MODULE_KEY)
    hparams = checkpoint.get("hyper_parameters") or {}
    if path is None:
        if "net" in hparams:
            path = "avatar_lightning.lit.synshot_prior.SynShotPrior"
        elif "levels" in hparams and "c_base" in hparams:
            path = "avatar_lightning.lit.realhead_prior.RealHeadPrior"
        else:
            raise ValueError("checkpoint is neither a SynShot nor a 3DRealHead prior (no module_class recorded)")
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def load_prior(ckpt: Path) -> tuple[Any, Any, int]:
    """The prior (eval mode, SynShot or 3DRealHead), its DataModule (rebuilt from the dataset the
    checkpoint recorded, set up for testing) and its global step, from one checkpoint."""
    from lightning.pytorch.cli import instantiate_class

    from avatar_lightning.lit.checkpoint import recorded_dataset

    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: prior checkpoint not found")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = prior_class(saved).load_from_checkpoint(ckpt, map_location="cpu").eval()
    data = instantiate_class((), recorded_dataset(ckpt))
    data.prepare_data()
    data.setup("test")
    return model, data, int(saved["global_step"])


def identity_batch(data: Any, identity: int, expressions: list[int]) -> dict[str, Tensor]:
    """One schema batch: ``identity`` at each of ``expressions`` (B = len), seen from the spread cameras
    (with the 3DRealHead conditioning maps when the data serves them, identity texture as evaluated)."""
    from data_modules.synthetic import SampleRef, SyntheticViews

    cams = data.spread_cameras()
    views = SyntheticViews(data.data_dir, data.rig, [SampleRef(identity, e, cams) for e in expressions], len(cams),
                           data.uv)
    if hasattr(data, "identity_maps"):  # RealHeadSyntheticDataModule
        from data_modules.realhead import RealHeadViews

        views = RealHeadViews(views, data.identity_maps, data.hparams.eval_identity_views)
    return {k: torch.stack([views[i][k] for i in range(len(views))]) for k in views[0]}


@torch.no_grad()
def reconstruct(model: Any, data: Any, identities: list[int]) -> dict[int, dict[str, Tensor]]:
    """Render every expression of ``identities`` from the spread evaluation cameras.

    Returns:
        identity → {"target": [X, V, 3, H, W], "render": same, "mask": [X, V, 1, H, W]} (X = expressions).
    """
    out: dict[int, dict[str, Tensor]] = {}
    for identity in identities:
        batch = identity_batch(data, identity, list(range(data.config.expressions)))
        render = model(batch).render
        out[identity] = {"target": batch["image"], "render": render.rgb.clamp(0, 1), "mask": batch["mask"]}
    return out


def head_scores(recs: list[dict[str, Tensor]]) -> dict[str, float]:
    """Head-region PSNR / SSIM / LPIPS / ID / whole-frame PSNR (:mod:`avatar_lightning.metrics.head_region`),
    per image, then averaged over every image of ``recs`` (entries of :func:`reconstruct`)."""
    from avatar_lightning.metrics import MeanScores
    from avatar_lightning.metrics.head_region import shared_head_metrics

    mean = MeanScores()
    for r in recs:
        pred = r["render"].flatten(0, -4)
        mean.update(shared_head_metrics(pred.device)(pred, r["target"].flatten(0, -4), r["mask"].flatten(0, -4)))
    return {k: float(v) for k, v in mean.compute().items()}


def heldout_grid(recons: dict[int, dict[str, Tensor]], expression: int, scale: int = 2) -> Tensor:
    """Rows target | reconstruction | error per identity and expression (0 and ``expression``), views as columns."""
    rows = []
    for rec in recons.values():
        for e in sorted({0, expression}):
            t, r = rec["target"][e], rec["render"][e]
            rows += [t, r, error_map(r, t)]
    tiles = torch.cat(rows)  # [(ids·exprs·3)·V, 3, H, W]
    ncol = next(iter(recons.values()))["target"].shape[1]
    return make_grid(enlarge(tiles, scale), ncol=ncol)


@torch.no_grad()
def turntable_strip(model: Any, data: Any, identity: int, frames: int, scale: int = 2) -> Tensor:
    """One row of ``frames`` orbit views of ``identity`` (neutral), reconstructed by the prior."""
    orbit = model.turntable(identity_batch(data, identity, [0]), frames=frames)
    return make_grid(enlarge(orbit, scale), ncol=frames)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m avatar_lightning.report", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="Lightning log folder of a prior run (lightning_logs/version_N)")
    parser.add_argument("--ckpt", type=Path, default=None, help="checkpoint (default RUN_DIR/checkpoints/last.ckpt)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/report)")
    parser.add_argument("--identities", type=int, default=3, help="held-out identities shown and scored")
    parser.add_argument("--expression", type=int, default=1, help="the non-neutral expression shown in the grid")
    parser.add_argument("--turntable-frames", type=int, default=8, help="orbit views in prior_turntable.png")
    args = parser.parse_args(argv)
    run_dir: Path = resolve_run_dir(args.run_dir)
    ckpt = args.ckpt or run_dir / "checkpoints" / "last.ckpt"
    if args.ckpt is None and not ckpt.is_file():  # e.g. the newest version is a `test` run: newest last.ckpt
        ckpt = find_last_checkpoint(args.run_dir)
    out = args.out or run_dir / "report"

    curves = read_scalars(run_dir, ["train/image_step", "val/psnr", "val/ssim"])
    model, data, global_step = load_prior(ckpt)
    splits = data.split_identities()
    held_out = splits["test"][: args.identities]
    if not held_out:
        raise ValueError(f"{ckpt}: the run held out no test identities (data test_identities=0)")
    train = splits["train"][: len(held_out)]
    metrics: dict[str, Any] = {"checkpoint": str(ckpt), "global_step": global_step, "views": data.spread_cameras()}
    recons = {}
    for name, ids in (("held_out", held_out), ("train", train)):
        rec = reconstruct(model, data, ids)
        per_id = {str(i): head_scores([r]) for i, r in rec.items()}
        metrics[name] = {"identities": ids, "per_identity": per_id, **head_scores(list(rec.values()))}
        recons[name] = rec
    expression = min(args.expression, data.config.expressions - 1)
    save_image(out / "prior_heldout.png", heldout_grid(recons["held_out"], expression))
    save_image(out / "prior_turntable.png", turntable_strip(model, data, held_out[0], args.turntable_frames))

    image_loss = smooth(curves["train/image_step"], 20)
    plots = [line_plot({"train image loss (L1+SSIM)": image_loss}, title="train: image loss (smoothed)"),
             line_plot({"val PSNR": curves["val/psnr"]}, title="val identity: PSNR (dB)")]
    with atomic_path(out / "prior_curve.png") as tmp:
        hstack_images(plots).save(tmp, format="PNG")
    metrics["curve"] = {"train/image_step_smoothed": image_loss[:: max(1, len(image_loss) // 50)],
                        "val/psnr": curves["val/psnr"], "val/ssim": curves["val/ssim"]}
    write_json(out / "prior_report.json", metrics)
    def line(m: dict[str, Any]) -> str:
        return (f"PSNR {m['psnr']:.2f} dB SSIM {m['ssim']:.4f} LPIPS {m['lpips']:.4f} ID {m.get('id', math.nan):.3f} "
                f"(whole-frame PSNR {m['psnr_full']:.2f} dB)")

    print(f"step {metrics['global_step']}, head region: held-out {held_out} {line(metrics['held_out'])} | "
          f"train {train} {line(metrics['train'])} | wrote {out}")
    return metrics


if __name__ == "__main__":
    main()
