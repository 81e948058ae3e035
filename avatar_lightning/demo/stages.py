"""Stage study of the SynShot inversion (issue 13): what each stage does to held-out views and expressions.

SynShot §3.3 inverts in two stages: stage 1 tunes E_id only; stage 2 freezes the identity code (the
pivot) and tunes the decoders and regressors on the three inputs. Stage 2 can over-fit the inputs:
it is what makes the near views sharp, and it may be what costs novel expressions. This measures it
on finished ``make demo`` fits, each rebuilt at its earlier stages from its prior and its checkpoint
(:func:`avatar_lightning.real.fit.stage_models`) and scored on exactly its held-out images:

- ``prior``: the prior untouched, E_id reading the inputs' UV maps (no per-subject tuning);
- ``stage1``: the prior's decoders with the fitted pivot (the model at the switch to stage 2);
- ``stage2``: the fitted avatar.

Writes ``RUN/stages.json`` and prints a markdown table: mean ± std over identities per split, and the
paired Δ stage 2 − stage 1 (a winner needs |mean Δ| > its std, as in the demo's table).

    python -m avatar_lightning.demo.stages runs/demo [more runs...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import instantiate_class

from avatar_lightning.demo.methods import SCORES, SPLITS, rescore
from avatar_lightning.io import write_json
from avatar_lightning.lit.checkpoint import recorded_dataset
from avatar_lightning.lit.inversion import SynShotInversion
from avatar_lightning.real.fit import stage_models

STAGES = ("prior", "stage1", "stage2")


def fit_data(ckpt: Path, fallback_config: str) -> Any:
    """The fit's ``FewShotDataModule`` (same subject and split): as its checkpoint records it, or for a
    checkpoint written before datasets were recorded, the data block of ``fallback_config`` (the demo
    prior's config) with the identity named by the fit's folder.

    Raises:
        ValueError: no record and a folder that names no identity.
    """
    try:
        return instantiate_class((), recorded_dataset(ckpt))
    except ValueError:
        if not ckpt.parent.name.isdigit():
            raise
    import yaml

    from avatar_lightning.lit.fewshot_data import FewShotDataModule

    source = yaml.safe_load(Path(fallback_config).read_text())["data"]
    return FewShotDataModule(source=source, identity=int(ckpt.parent.name))


def study_fit(fit_dir: Path, fallback_config: str = "experiments/demo_prior.yaml"
              ) -> dict[str, dict[str, dict[str, float]]]:
    """``{stage: {split: {score: value}}}`` of one inversion fit (``fit_dir/avatar.ckpt``).

    Raises:
        FileNotFoundError: naming a missing ``avatar.ckpt``.
        ValueError: the fit ended in stage 1 (it has no stage-2 model to compare).
    """
    ckpt = fit_dir / "avatar.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"no avatar checkpoint: {ckpt} (an unfinished fit?)")
    fitted = SynShotInversion.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False).eval()
    if int(fitted.stage) != 2:
        raise ValueError(f"{ckpt}: the fit ended in stage 1, so it has no stage-2 model to compare")
    data = fit_data(ckpt, fallback_config)
    data.setup("validate")
    split = data.split
    fitted.inputs = {k: v.clone() for k, v in split.inputs.items()}
    models = {**stage_models(fitted, fitted.hparams.prior_checkpoint), "stage2": fitted}
    return {name: rescore(model, split) for name, model in models.items()}


def summarize(per_fit: dict[str, dict[str, dict[str, dict[str, float]]]]) -> dict[str, Any]:
    """Mean ± std over fits per (stage, split, score), and the paired Δ stage 2 − stage 1."""
    out: dict[str, Any] = {}

    def stat(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n": len(values)}

    fits = list(per_fit.values())
    for split in SPLITS:
        for score in SCORES:
            for stage in STAGES:
                vals = [f[stage][split][score] for f in fits if split in f[stage] and score in f[stage][split]]
                if vals:
                    out.setdefault(split, {}).setdefault(stage, {})[score] = stat(vals)
            deltas = [f["stage2"][split][score] - f["stage1"][split][score] for f in fits
                      if split in f["stage2"] and score in f["stage2"][split]]
            if deltas:
                out.setdefault(split, {}).setdefault("delta_stage2_stage1", {})[score] = stat(deltas)
    return out


def markdown(summary: dict[str, Any], runs: list[str], n: int) -> str:
    """The study as a markdown table (PSNR and LPIPS per stage; Δ with the winner rule)."""
    lines = [f"Stage study over {n} inversion fits ({', '.join(runs)}); mean ± std over fits; Δ paired per fit.", "",
             "| split | prior PSNR / LPIPS | stage 1 | stage 2 | Δ stage 2 − stage 1 PSNR | Δ LPIPS |",
             "|---|---|---|---|---|---|"]
    for split, rows in summary.items():
        cells = [f"{rows[s]['psnr']['mean']:.2f} ± {rows[s]['psnr']['std']:.2f} / {rows[s]['lpips']['mean']:.3f}"
                 for s in STAGES]
        d = rows["delta_stage2_stage1"]
        marks = []
        for score, better in (("psnr", 1), ("lpips", -1)):
            m, s = d[score]["mean"], d[score]["std"]
            won = "stage 2" if better * m > s else "stage 1" if -better * m > s else "tie"
            marks.append(f"{m:+.3f} ± {s:.3f} ({won})")
        lines.append(f"| {split} | " + " | ".join(cells) + " | " + " | ".join(marks) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Study every finished inversion fit of the given demo runs; 0 on success, 1 with an error naming the file."""
    p = argparse.ArgumentParser(prog="python -m avatar_lightning.demo.stages", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="demo output folders (each with inversion/<identity>/avatar.ckpt)")
    p.add_argument("--prior-config", default="experiments/demo_prior.yaml",
                   help="whose data block is the subject's data when a fit's checkpoint records none")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    per_fit = {}
    try:
        for run in args.runs:
            fits = sorted((Path(run) / "inversion").glob("*/avatar.ckpt"))
            if not fits:
                raise FileNotFoundError(f"no inversion fits under {run}/inversion/ "
                                        "(run python -m avatar_lightning.demo)")
            studied = {}
            for ckpt in fits:
                studied[ckpt.parent.name] = study_fit(ckpt.parent, args.prior_config)
                print(f"{ckpt.parent}: " + ", ".join(
                    f"{s} {studied[ckpt.parent.name][s]['novel_expression']['psnr']:.2f}" for s in STAGES)
                    + " dB on novel expressions", flush=True)
            write_json(Path(run) / "stages.json", {"fits": studied, "summary": summarize(studied)})
            per_fit.update({f"{run}:{k}": v for k, v in studied.items()})
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(markdown(summarize(per_fit), args.runs, len(per_fit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
