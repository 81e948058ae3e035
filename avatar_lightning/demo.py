"""``make demo``: the fair few-shot benchmark — prior, inversion and no-prior baseline on held-out identities.

Runs the shipped configs through the same CLI a user runs (``experiments/demo_prior.yaml`` or
``--prior-config``, then ``experiments/invert.yaml`` and ``experiments/baseline.yaml`` per held-out
identity). Fairness rules (issue "Honest measurement"):

- **Own convergence.** Every fit runs until its own EMA plateau (``callbacks.EMAEarlyStopping``),
  under a generous cap (``--cap-steps-per-frame`` × input images, and ``trainer.max_steps``) that no
  run should reach; each fit's ``stop_reason`` is recorded and a fit ended by a cap is flagged in the
  table. Each method keeps its own learning rates (its config's).
- **Same inputs, same evaluation.** Both methods see the same 3 input images and parameters (with
  ``--tracking-noise``, the same perturbed parameters) and are scored by the same head-region
  metrics (:mod:`avatar_lightning.metrics.head_region`) on the same held-out images, split into
  novel views by angle to the nearest input camera (near < 30°, side 30–75°, far > 75°) and novel
  expressions.
- **Several subjects, with the spread**: ``--identities`` (≥ 5 by default) held-out identities; the
  table gives mean ± standard deviation over identities, and Δ (inversion − baseline) as the mean ±
  std of the per-identity differences.

Outputs under ``--out`` (default ``runs/demo``): ``prior.ckpt``, ``<method>/<identity>/`` (the avatar
files and ``results.json`` of each fit), ``table.md``, ``results.json`` (every fit and the
summary), ``side_by_side.png`` (target | inversion | baseline, a novel view and a novel expression
per identity) and ``inversion_curves.png`` (stage-1 / stage-2 losses, SynShot Fig. 11), all
written atomically.

    python -m avatar_lightning.demo [--identities 5] [--seed 0] [--skip-prior PATH.ckpt]
                                    [--tracking-noise shape=0.3,expr=0.3,pose=0.02]
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
from avatar_lightning.lit.checkpoint import recorded_dataset
from avatar_lightning.viz import enlarge, hstack_images, line_plot, make_grid

METHODS = {"inversion": "SynShot inversion (prior)", "baseline": "no-prior baseline (GaussianAvatars-style)"}
SPLITS = ("novel_view_near", "novel_view_side", "novel_view_far", "novel_expression")
SCORES = ("psnr", "ssim", "lpips", "id")
FIGURE_SPLITS = ("novel_view", "novel_expression")  # the side-by-side figure's columns
CAPPED = ("budget", "cap")  # stop kinds that mean "did not converge on its own"


@dataclass
class Fit:
    """One fitted avatar: its metrics, why it stopped, and the first held-out renders for the figure."""

    method: str
    identity: int
    metrics: dict[str, Any]
    seconds: float
    steps: int = 0
    stop_kind: str = "other"
    stop_reason: str = ""
    renders: dict[str, Tensor] = field(default_factory=dict)  # split -> [3, H, W]
    targets: dict[str, Tensor] = field(default_factory=dict)
    losses: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def capped(self) -> bool:
        """Ended by a step cap rather than by its own plateau."""
        return self.stop_kind in CAPPED

    def record(self) -> dict[str, Any]:
        """The per-fit ``results.json`` entry."""
        return {"method": self.method, "identity": self.identity, "steps": self.steps,
                "stop_reason": f"{self.stop_kind}: {self.stop_reason}", "stop_kind": self.stop_kind,
                "capped": self.capped, "seconds": round(self.seconds, 2),
                "metrics": {s: {k: self.metrics[s][k] for k in SCORES if k in self.metrics[s]}
                            for s in (*SPLITS, "novel_view") if s in self.metrics},
                "whole_frame_psnr": {s: self.metrics[s]["psnr_full"] for s in SPLITS
                                     if "psnr_full" in self.metrics.get(s, {})}}


def run_cli(args: list[str]) -> AvatarCLI:
    """``lightning fit <args>`` in this process; returns the CLI (model, datamodule, trainer)."""
    return AvatarCLI(args=["fit", *args])


def train_prior(config: str, overrides: list[str], out: Path) -> Path:
    """Fit the prior; returns its checkpoint path (the checkpoint records the dataset it trained on)."""
    cli = run_cli(["-c", config, f"--trainer.default_root_dir={out / 'prior_run'}", *overrides])
    path = out / "prior.ckpt"
    with atomic_path(path) as tmp:
        cli.trainer.save_checkpoint(tmp)
    return path


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


def fit_avatar(method: str, identity: int, prior: Path, out: Path, overrides: list[str]) -> Fit:
    """Invert the prior (``method="inversion"``) or fit the baseline for one held-out identity of the
    prior's dataset; score it and write its ``results.json``."""
    configs = ["-c", "experiments/invert.yaml"] + (["-c", "experiments/baseline.yaml"] if method == "baseline" else [])
    dest = out / method / str(identity)
    args = [*configs, f"--data.init_args.prior_checkpoint={prior}", f"--data.init_args.identity={identity}",
            f"--trainer.default_root_dir={dest / 'run'}", f"--model.init_args.output_dir={dest}", *overrides]
    if method == "inversion":
        args.append(f"--model.init_args.prior_checkpoint={prior}")
    start = time.perf_counter()
    cli = run_cli(args)
    seconds = time.perf_counter() - start
    metrics = json.loads((dest / "metrics.json").read_text())
    fit = Fit(method, identity, metrics, seconds, steps=int(metrics.get("steps", cli.trainer.global_step)),
              stop_kind=str(metrics.get("stop_kind", "other")), stop_reason=str(metrics.get("stop_reason", "")),
              losses=list(getattr(cli.model, "loss_history", [])))
    write_json(dest / "results.json", fit.record())
    _first_renders(cli, fit)
    return fit


@torch.no_grad()
def _first_renders(cli: AvatarCLI, fit: Fit) -> None:
    """The first held-out image of each figure split: target and render (for the side-by-side figure)."""
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
        if len(fit.renders) == len(FIGURE_SPLITS):
            return


def most_frontal_view(world_to_cam: Tensor) -> int:
    """Index of the camera ``[V, 4, 4]`` looking most directly at the face (heads face +z)."""
    centres = torch.linalg.inv(world_to_cam)[:, :3, 3]
    return int(torch.nn.functional.normalize(centres, dim=-1)[:, 2].argmax())


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(fits: list[Fit]) -> dict[str, dict[str, dict[str, float]]]:
    """``{method | "delta": {"<split>/<score>": {"mean", "std", "n"}}}`` over identities.

    ``delta`` is inversion − baseline per identity (paired), then mean ± std; only identities both
    methods scored on that split count.
    """
    table: dict[str, dict[str, dict[str, float]]] = {}
    by_key = {(f.method, f.identity): f for f in fits}
    for method in METHODS:
        rows = [f for f in fits if f.method == method]
        table[method] = {f"{s}/{m}": _mean_std([r.metrics[s][m] for r in rows if m in r.metrics.get(s, {})])
                         for s in SPLITS for m in SCORES if any(m in r.metrics.get(s, {}) for r in rows)}
    table["delta"] = {}
    identities = sorted({f.identity for f in fits})
    for s in SPLITS:
        for m in SCORES:
            diffs = [by_key["inversion", i].metrics[s][m] - by_key["baseline", i].metrics[s][m] for i in identities
                     if all((meth, i) in by_key and m in by_key[meth, i].metrics.get(s, {}) for meth in METHODS)]
            if diffs:
                table["delta"][f"{s}/{m}"] = _mean_std(diffs)
    return table


def _cell(stat: dict[str, float] | None, digits: int) -> str:
    return "—" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


DIGITS = {"psnr": 2, "ssim": 3, "lpips": 3, "id": 3}
BETTER = {"psnr": 1, "ssim": 1, "lpips": -1, "id": 1}


def winner(delta: dict[str, float] | None, score: str) -> str:
    """Which method a paired Δ favours: the mean beyond one standard deviation, else "tie"."""
    if delta is None:
        return "—"
    signed = BETTER[score] * delta["mean"]
    if abs(delta["mean"]) <= delta["std"]:
        return "tie"
    return "inversion" if signed > 0 else "baseline"


def markdown_table(fits: list[Fit], identities: list[int], settings: str = "") -> str:
    """The demo's result table: per split, each method's mean ± std over identities, then the paired Δ."""
    summary = summarize(fits)
    head = ("| split | method | PSNR ↑ (dB) | SSIM ↑ | LPIPS ↓ | ID ↑ |\n"
            "|---|---|---|---|---|---|\n")
    lines = []
    for s in SPLITS:
        for method, label in METHODS.items():
            cells = [_cell(summary[method].get(f"{s}/{m}"), DIGITS[m]) for m in SCORES]
            lines.append(f"| {s} | {label} | " + " | ".join(cells) + " |")
        deltas = [summary["delta"].get(f"{s}/{m}") for m in SCORES]
        cells = [f"{_cell(d, DIGITS[m])} ({winner(d, m)})" for d, m in zip(deltas, SCORES, strict=True)]
        lines.append(f"| {s} | Δ inversion − baseline (winner) | " + " | ".join(cells) + " |")
    capped = [f"{f.method}/{f.identity} ({f.stop_kind}, {f.steps} steps)" for f in fits if f.capped]
    steps = {m: _mean_std([float(f.steps) for f in fits if f.method == m]) for m in METHODS
             if any(f.method == m for f in fits)}
    notes = [f"Held-out synthetic identities: {identities} (3 frontal-ish neutral inputs each); mean ± std over "
             "identities; head-region metrics (target mask); Δ is paired per identity; a winner needs |mean Δ| > std.",
             "Steps to each fit's own stop: "
             + ", ".join(f"{m} {v['mean']:.0f} ± {v['std']:.0f}" for m, v in steps.items()) + ". "
             + (f"**Stopped by a cap, not converged: {', '.join(capped)}.**" if capped
                else "No fit reached its cap (every fit stopped on its own EMA plateau).")]
    if settings:
        notes.append(settings)
    return head + "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def side_by_side(fits: list[Fit], identities: list[int]) -> Tensor:
    """Rows per identity: target | inversion | baseline for a novel view, then for a novel expression."""
    tiles = []
    for identity in identities:
        by_method = {f.method: f for f in fits if f.identity == identity}
        for split in FIGURE_SPLITS:
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


def write_results(out: Path, fits: list[Fit], identities: list[int], timings: dict[str, float],
                  settings: dict[str, Any]) -> str:
    """Write table.md, results.json and the two figures; returns the table."""
    table = markdown_table(fits, identities, "Settings: " + json.dumps(settings))
    write_bytes(out / "table.md", table.encode())
    write_json(out / "results.json", {"summary": summarize(fits), "settings": settings, "timings_s": timings,
                                      "fits": [f.record() for f in fits]})
    save_image(out / "side_by_side.png", side_by_side(fits, identities))
    with atomic_path(out / "inversion_curves.png") as tmp:
        loss_curves(fits).save(tmp, format="PNG")
    return table


def combine_seeds(dirs: list[Path]) -> str:
    """Markdown table over several demo runs (seeds): per split and score, each method's mean over
    runs of its per-run mean over identities (± std over runs), and the per-run mean Δ listed."""
    runs = [json.loads((Path(d) / "results.json").read_text())["summary"] for d in dirs]
    lines = ["| split | score | inversion (mean ± std over runs) | baseline | Δ per run (inversion − baseline) |",
             "|---|---|---|---|---|"]
    for split in SPLITS:
        for score in SCORES:
            key = f"{split}/{score}"
            if not all(key in r["inversion"] and key in r["baseline"] for r in runs):
                continue
            cells = []
            for method in METHODS:
                means = [r[method][key]["mean"] for r in runs]
                cells.append(_cell(_mean_std(means), DIGITS[score]))
            deltas = ", ".join(f"{r['delta'][key]['mean']:+.{DIGITS[score]}f}" for r in runs)
            lines.append(f"| {split} | {score} | {cells[0]} | {cells[1]} | {deltas} |")
    return "\n".join(lines) + f"\n\nRuns: {', '.join(str(d) for d in dirs)}.\n"


def parse_noise(text: str | None) -> dict[str, float] | None:
    """``"shape=0.3,expr=0.3,pose=0.02"`` -> dict (validated by ``data_modules.tracking_noise``)."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--tracking-noise: expected key=value pairs, got {part!r}")
        out[key.strip()] = float(value)
    return out


def fit_overrides(method: str, seed: int, cap_per_frame: int, max_steps: int, noise: dict[str, float] | None,
                  video_frames: int) -> list[str]:
    """CLI settings of one fit: the generous caps (the same for both methods), the seed, the noise,
    and short export videos (they are not part of the benchmark)."""
    args = [f"--seed_everything={seed}", f"--trainer.max_steps={max_steps}",
            f"--trainer.callbacks.init_args.max_steps_per_frame={cap_per_frame}",
            f"--model.init_args.turntable_frames={video_frames}", "--model.init_args.expression_steps=2"]
    if noise:
        args.append(f"--data.init_args.tracking_noise={json.dumps(noise)}")
    return args


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--prior-config", default="experiments/demo_prior.yaml")
    parser.add_argument("--prior-override", action="append", default=[], help="extra CLI args for the prior fit")
    parser.add_argument("--skip-prior", default=None, help="use this prior checkpoint instead of training one")
    parser.add_argument("--identities", type=int, default=5, help="held-out identities to fit (≥ 5 for the table)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior training and of every fit")
    parser.add_argument("--cap-steps-per-frame", type=int, default=600,
                        help="generous safety cap per input image; a fit that reaches it is flagged")
    parser.add_argument("--max-steps", type=int, default=4000, help="trainer.max_steps of every fit (also a cap)")
    parser.add_argument("--tracking-noise", default=None,
                        help="perturb the parameters the methods get, e.g. shape=0.3,expr=0.3,pose=0.02 "
                             "(σ: coefficient units, radians, metres; targets stay rendered from the truth)")
    parser.add_argument("--video-frames", type=int, default=8, help="frames of each fit's exported turntable")
    parser.add_argument("--prior-only", action="store_true", help="train and save the prior, then stop "
                        "(fit later with --skip-prior OUT/prior.ckpt)")
    parser.add_argument("--combine", nargs="+", default=None, metavar="RUN_DIR",
                        help="only print the table over finished runs (e.g. one per --seed), then stop")
    args = parser.parse_args(argv)
    if args.combine:
        table = combine_seeds([Path(d) for d in args.combine])
        print(table)
        return table
    out = Path(args.out)
    noise = parse_noise(args.tracking_noise)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if args.skip_prior:
        prior = Path(args.skip_prior)
    else:
        prior = train_prior(args.prior_config, [f"--seed_everything={args.seed}", *args.prior_override], out)
    timings["prior"] = time.perf_counter() - start
    if args.prior_only:
        print(f"prior saved to {prior} ({timings['prior']:.0f} s)")
        return ""
    identities = held_out_identities(recorded_dataset(prior), args.identities)
    fits = []
    for identity in identities:
        for method in METHODS:
            t = time.perf_counter()
            overrides = fit_overrides(method, args.seed, args.cap_steps_per_frame, args.max_steps, noise,
                                      args.video_frames)
            fits.append(fit_avatar(method, identity, prior, out, overrides))
            timings[f"{method}/{identity}"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    settings = {"seed": args.seed, "prior": str(prior), "cap_steps_per_frame": args.cap_steps_per_frame,
                "max_steps": args.max_steps, "tracking_noise": noise}
    table = write_results(out, fits, identities, timings, settings)
    print("\n" + table)
    print("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return table


if __name__ == "__main__":
    main()
