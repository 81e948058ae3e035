"""``make demo``: train the prior, invert held-out identities, fit the no-prior baseline, print the table.

Runs the shipped configs through the same CLI a user runs (``experiments/prior.yaml``, then
``experiments/invert.yaml`` and ``experiments/baseline.yaml`` per held-out identity), with the
overrides below to fit a 2-core CPU, and ends with a table of PSNR / SSIM on novel views and novel
expressions (SynShot's central claim: a prior generalises where per-subject optimisation does not).
Both methods get the same inputs, the same step budget and the same evaluation.

Outputs under ``--out`` (default ``runs/demo``): ``prior.ckpt``, ``<method>/<identity>/`` (the avatar
files of each fit), ``table.md``, ``results.json``, ``side_by_side.png`` (target | inversion |
baseline, a novel view and a novel expression per identity) and ``inversion_curves.png`` (stage-1 /
stage-2 losses, SynShot Fig. 11), all written atomically.

    python -m avatar_lightning.demo [--identities 3] [--skip-prior PATH.ckpt] [--steps-per-frame 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from avatar_lightning.cli import AvatarCLI
from avatar_lightning.io import atomic_path, save_image, write_bytes, write_json
from avatar_lightning.viz import enlarge, hstack_images, line_plot, make_grid

METHODS = {"inversion": "SynShot inversion (prior)", "baseline": "no-prior baseline (GaussianAvatars-style)"}
SPLITS = ("novel_view", "novel_expression")


@dataclass
class Fit:
    """One fitted avatar: its metrics and the first held-out renders for the side-by-side image."""

    method: str
    identity: int
    metrics: dict[str, Any]
    seconds: float
    renders: dict[str, Tensor] = field(default_factory=dict)  # split -> [3, H, W]
    targets: dict[str, Tensor] = field(default_factory=dict)
    losses: list[tuple[int, int, float]] = field(default_factory=list)


def run_cli(args: list[str]) -> AvatarCLI:
    """``lightning fit <args>`` in this process; returns the CLI (model, datamodule, trainer)."""
    return AvatarCLI(args=["fit", *args])


def train_prior(config: str, overrides: list[str], out: Path) -> tuple[Path, dict[str, Any]]:
    """Fit the prior; returns its checkpoint path and the data config it trained on."""
    cli = run_cli(["-c", config, f"--trainer.default_root_dir={out / 'prior_run'}", *overrides])
    path = out / "prior.ckpt"
    with atomic_path(path) as tmp:
        cli.trainer.save_checkpoint(tmp)
    return path, cli.config["fit"]["data"].as_dict()


def held_out_identities(data_config: dict[str, Any], count: int) -> list[int]:
    """The first ``count`` test identities of the prior's dataset (its ``split_identities()``)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    dm = parser.instantiate_classes(parser.parse_object({"data": data_config})).data
    test = list(dm.split_identities()["test"])
    if len(test) < count:
        raise ValueError(f"the prior's dataset holds {len(test)} test identities, the demo needs {count}; "
                         "raise data.init_args.test_identities in the prior config")
    return test[:count]


def fit_avatar(method: str, identity: int, prior: Path, data_config: dict[str, Any], out: Path,
               overrides: list[str]) -> Fit:
    """Invert the prior (``method="inversion"``) or fit the baseline for one identity; score it."""
    configs = ["-c", "experiments/invert.yaml"] + (["-c", "experiments/baseline.yaml"] if method == "baseline" else [])
    dest = out / method / str(identity)
    args = [*configs, f"--data.init_args.source={json.dumps(data_config)}", f"--data.init_args.identity={identity}",
            f"--trainer.default_root_dir={dest / 'run'}", f"--model.init_args.output_dir={dest}", *overrides]
    if method == "inversion":
        args.append(f"--model.init_args.prior_checkpoint={prior}")
    start = time.perf_counter()
    cli = run_cli(args)
    seconds = time.perf_counter() - start
    fit = Fit(method, identity, json.loads((dest / "metrics.json").read_text()), seconds,
              losses=list(getattr(cli.model, "loss_history", [])))
    _first_renders(cli, fit)
    return fit


@torch.no_grad()
def _first_renders(cli: AvatarCLI, fit: Fit) -> None:
    """The first held-out image of each split: target and render (for the side-by-side figure)."""
    model = cli.model.eval()
    for batch in cli.datamodule.val_dataloader():
        for i, frame in enumerate(batch["frame"].tolist()):
            split = "novel_view" if frame == 0 else "novel_expression"
            if split in fit.renders:
                continue
            sample = {k: v[i:i + 1].to(model.device) for k, v in batch.items()}
            view = most_frontal_view(sample["world_to_cam"][0])
            sample = {**sample, **{k: sample[k][:, view:view + 1] for k in ("image", "mask", "K", "world_to_cam")}}
            fit.renders[split] = model.render(sample).rgb[0, 0].clamp(0, 1).cpu()
            fit.targets[split] = sample["image"][0, 0].cpu()
        if len(fit.renders) == len(SPLITS):
            return


def most_frontal_view(world_to_cam: Tensor) -> int:
    """Index of the camera ``[V, 4, 4]`` looking most directly at the face (heads face +z)."""
    centres = torch.linalg.inv(world_to_cam)[:, :3, 3]
    return int(torch.nn.functional.normalize(centres, dim=-1)[:, 2].argmax())


def summarize(fits: list[Fit]) -> dict[str, dict[str, float]]:
    """Mean over identities: ``{method: {"novel_view/psnr": ..., ...}}``."""
    table: dict[str, dict[str, float]] = {}
    for method in METHODS:
        rows = [f for f in fits if f.method == method]
        table[method] = {f"{s}/{m}": statistics.fmean(r.metrics[s][m] for r in rows if s in r.metrics)
                         for s in SPLITS for m in ("psnr", "ssim") if any(s in r.metrics for r in rows)}
    return table


def markdown_table(fits: list[Fit], identities: list[int]) -> str:
    """The demo's result table (means over identities, then the PSNR gap)."""
    summary = summarize(fits)
    head = ("| method | novel view PSNR ↑ | novel view SSIM ↑ | novel expression PSNR ↑ | novel expression SSIM ↑ |\n"
            "|---|---|---|---|---|\n")
    lines = []
    nan = float("nan")
    for method, label in METHODS.items():
        v = summary[method]
        cells = [f"{v.get(f'{s}/psnr', nan):.2f} | {v.get(f'{s}/ssim', nan):.4f}" for s in SPLITS]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    gap = {s: summary["inversion"].get(f"{s}/psnr", nan) - summary["baseline"].get(f"{s}/psnr", nan) for s in SPLITS}
    lines.append(f"| Δ PSNR (inversion − baseline) | {gap['novel_view']:+.2f} dB | | "
                 f"{gap['novel_expression']:+.2f} dB | |")
    note = f"Held-out synthetic identities: {identities} (3 frontal-ish neutral inputs each)."
    return head + "\n".join(lines) + "\n\n" + note + "\n"


def side_by_side(fits: list[Fit], identities: list[int]) -> Tensor:
    """Rows per identity: target | inversion | baseline for a novel view, then for a novel expression."""
    tiles = []
    for identity in identities:
        by_method = {f.method: f for f in fits if f.identity == identity}
        for split in SPLITS:
            if all(split in f.renders for f in by_method.values()) and len(by_method) == len(METHODS):
                tiles += [by_method["inversion"].targets[split], by_method["inversion"].renders[split],
                          by_method["baseline"].renders[split]]
    if not tiles:
        return torch.ones(3, 8, 8)
    scale = max(1, 128 // tiles[0].shape[-1])  # small CPU renders: enlarge (nearest) to be readable
    return make_grid(enlarge(torch.stack(tiles), scale), ncol=6)


def loss_curves(fits: list[Fit], size: tuple[int, int] = (640, 240)) -> Image.Image:
    """SynShot Fig. 11 from the logged inversion losses: stage 1 (left) and stage 2 (right) panels."""
    inversions = [f for f in fits if f.method == "inversion"]
    panels = [line_plot({f"id {f.identity}": [(s, v) for s, st, v in f.losses if st == stage] for f in inversions},
                        title=f"stage {stage}: {'E_id' if stage == 1 else 'decoders + regressors'}",
                        size=(size[0] // 2, size[1]))
              for stage in (1, 2)]
    return hstack_images(panels)


def write_results(out: Path, fits: list[Fit], identities: list[int], timings: dict[str, float]) -> str:
    """Write table.md, results.json and the two figures; returns the table."""
    table = markdown_table(fits, identities)
    write_bytes(out / "table.md", table.encode())
    write_json(out / "results.json", {"summary": summarize(fits), "timings_s": timings, "fits": [
        {"method": f.method, "identity": f.identity, "metrics": f.metrics, "seconds": f.seconds} for f in fits]})
    save_image(out / "side_by_side.png", side_by_side(fits, identities))
    with atomic_path(out / "inversion_curves.png") as tmp:
        loss_curves(fits).save(tmp, format="PNG")
    return table


def demo_overrides(steps_per_frame: int, stage1_steps_per_frame: int) -> list[str]:
    """CPU-budget settings shared by both methods: the same step budget, no periodic validation."""
    return [f"--trainer.callbacks.init_args.max_steps_per_frame={steps_per_frame}",
            f"--model.init_args.stage1_steps_per_frame={stage1_steps_per_frame}"]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--prior-config", default="experiments/prior.yaml")
    parser.add_argument("--prior-override", action="append", default=[], help="extra CLI args for the prior fit")
    parser.add_argument("--skip-prior", default=None, help="use this prior checkpoint instead of training one")
    parser.add_argument("--identities", type=int, default=3, help="held-out identities to invert (≥ 3)")
    parser.add_argument("--steps-per-frame", type=int, default=10, help="step budget per input image (both methods)")
    parser.add_argument("--stage1-steps-per-frame", type=int, default=4, help="inversion stage-1 steps per image")
    args = parser.parse_args(argv)
    out = Path(args.out)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if args.skip_prior:
        prior = Path(args.skip_prior)
        data_config = torch.load(prior, map_location="cpu", weights_only=False)["demo_data_config"]
    else:
        prior, data_config = train_prior(args.prior_config, args.prior_override, out)
        ckpt = torch.load(prior, map_location="cpu", weights_only=False)
        ckpt["demo_data_config"] = data_config  # lets --skip-prior rebuild the same dataset
        with atomic_path(prior) as tmp:
            torch.save(ckpt, tmp)
    timings["prior"] = time.perf_counter() - start
    identities = held_out_identities(data_config, args.identities)
    fits = []
    for identity in identities:
        for method in METHODS:
            t = time.perf_counter()
            overrides = demo_overrides(args.steps_per_frame, args.stage1_steps_per_frame)
            if method == "baseline":
                overrides = overrides[:1]
            fits.append(fit_avatar(method, identity, prior, data_config, out, overrides))
            timings[f"{method}/{identity}"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    table = write_results(out, fits, identities, timings)
    print("\n" + table)
    print("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return table


if __name__ == "__main__":
    main()
