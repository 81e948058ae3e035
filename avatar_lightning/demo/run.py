"""The demo's entry point: train the priors the chosen methods need, fit every method on every
held-out identity, write the tables and figures (``python -m avatar_lightning.demo --help``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from avatar_lightning.cli import AvatarCLI
from avatar_lightning.demo.figures import loss_curves, side_by_side
from avatar_lightning.demo.methods import (
    DEFAULT_METHODS,
    METHODS,
    Fit,
    check_same_data,
    fit_avatar,
    fit_overrides,
    parse_methods,
)
from avatar_lightning.demo.tables import combine_seeds, markdown_table, summarize
from avatar_lightning.io import atomic_path, save_image, write_bytes, write_json
from avatar_lightning.lit.checkpoint import recorded_dataset

#: Each prior the demo may train: its checkpoint name under --out and its default config.
PRIORS = {"synshot": ("prior", "experiments/demo_prior.yaml"),
          "realhead": ("realhead_prior", "experiments/demo_realhead_prior.yaml")}


def train_prior(config: str, overrides: list[str], out: Path, name: str = "prior") -> Path:
    """Fit a prior; returns ``out/<name>.ckpt`` (the checkpoint records the dataset it trained on)."""
    cli = AvatarCLI(args=["fit", "-c", config, f"--trainer.default_root_dir={out / f'{name}_run'}", *overrides])
    path = out / f"{name}.ckpt"
    with atomic_path(path) as tmp:
        cli.trainer.save_checkpoint(tmp)
    return path


def dataset_of(data_config: dict[str, Any]) -> Any:
    """The DataModule of a ``{class_path, init_args}`` config (built, not set up)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    return parser.instantiate_classes(parser.parse_object({"data": data_config})).data


def held_out_identities(data_config: dict[str, Any], count: int) -> list[int]:
    """The first ``count`` test identities of the prior's dataset (its ``split_identities()``)."""
    test = list(dataset_of(data_config).split_identities()["test"])
    if len(test) < count:
        raise ValueError(f"the prior's dataset holds {len(test)} test identities, the demo needs {count}; "
                         "raise data.init_args.test_identities in the prior config")
    return test[:count]


def same_subjects(priors: dict[str, Path], count: int) -> list[int]:
    """The held-out identities every prior shares: their datasets must be one folder with one split.

    Raises:
        ValueError: the priors were trained on different data (other generator settings or splits).
    """
    seen = {}
    for kind, path in priors.items():
        dm = dataset_of(recorded_dataset(path))
        seen[kind] = (str(dm.data_dir), held_out_identities(recorded_dataset(path), count))
    if len(set(map(str, seen.values()))) > 1:
        raise ValueError("the priors were trained on different datasets or splits, so their methods would not "
                         f"see the same subjects: {seen}; give both prior configs the same data block")
    return next(iter(seen.values()))[1]


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


def write_results(out: Path, fits: list[Fit], identities: list[int], timings: dict[str, float],
                  settings: dict[str, Any]) -> str:
    """Write table.md, results.json and the figures; returns the table."""
    table = markdown_table(fits, identities, "Settings: " + json.dumps(settings))
    write_bytes(out / "table.md", table.encode())
    write_json(out / "results.json", {"summary": summarize(fits), "settings": settings, "timings_s": timings,
                                      "fits": [f.record() for f in fits]})
    if any(f.renders for f in fits):  # fits read back by --resume have none: keep the earlier figure
        save_image(out / "side_by_side.png", side_by_side(fits, identities))
    if any(f.method == "inversion" for f in fits):
        with atomic_path(out / "inversion_curves.png") as tmp:
            loss_curves(fits).save(tmp, format="PNG")
    return table


def _parser() -> argparse.ArgumentParser:
    from avatar_lightning.demo import __doc__ as doc

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated from {list(METHODS)}, or 'all' (make demo-three-way)")
    parser.add_argument("--prior-config", default=PRIORS["synshot"][1])
    parser.add_argument("--prior-override", action="append", default=[], help="extra CLI args for the prior fit")
    parser.add_argument("--skip-prior", default=None, help="use this SynShot prior checkpoint instead of training one")
    parser.add_argument("--realhead-prior-config", default=PRIORS["realhead"][1])
    parser.add_argument("--realhead-prior-override", action="append", default=[],
                        help="extra CLI args for the 3DRealHead prior fit")
    parser.add_argument("--skip-realhead-prior", default=None, help="use this 3DRealHead prior checkpoint")
    parser.add_argument("--resume", action="store_true", help="reuse OUT's priors and finished fits (their "
                        "results.json) from an interrupted run of the same command")
    parser.add_argument("--identities", type=int, default=5, help="held-out identities to fit (≥ 5 for the table)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior training and of every fit")
    parser.add_argument("--cap-steps-per-frame", type=int, default=600,
                        help="generous safety cap per input image of a 3-image fit; every fit (a 1-view one "
                        "too) may run this × 3 steps; a fit that reaches it is flagged")
    parser.add_argument("--max-steps", type=int, default=4000, help="trainer.max_steps of every fit (also a cap)")
    parser.add_argument("--tracking-noise", default=None,
                        help="perturb the parameters the methods get, e.g. shape=0.3,expr=0.3,pose=0.02 "
                             "(σ: coefficient units, radians, metres; targets stay rendered from the truth; "
                             "SynShot inversion and baseline only)")
    parser.add_argument("--video-frames", type=int, default=8, help="frames of each fit's exported turntable")
    parser.add_argument("--prior-only", action="store_true", help="train and save the priors, then stop "
                        "(fit later with --skip-prior OUT/prior.ckpt / --skip-realhead-prior)")
    parser.add_argument("--combine", nargs="+", default=None, metavar="RUN_DIR",
                        help="only print the table over finished runs (e.g. one per --seed), then stop")
    return parser


def _priors(args: argparse.Namespace, methods: list[str], out: Path, timings: dict[str, float]) -> dict[str, Path]:
    """The checkpoint of every prior the methods need: given, resumed or trained now."""
    given = {"synshot": (args.skip_prior, args.prior_config, args.prior_override),
             "realhead": (args.skip_realhead_prior, args.realhead_prior_config, args.realhead_prior_override)}
    priors = {}
    for kind in sorted({METHODS[m].prior for m in methods}, key=list(PRIORS).index):
        skip, config, overrides = given[kind]
        name = PRIORS[kind][0]
        start = time.perf_counter()
        if skip:
            priors[kind] = Path(skip)
        elif args.resume and (out / f"{name}.ckpt").is_file():
            priors[kind] = out / f"{name}.ckpt"
        else:
            priors[kind] = train_prior(config, [f"--seed_everything={args.seed}", *overrides], out, name)
        timings[name] = time.perf_counter() - start
    return priors


def _fit_or_resume(method: str, identity: int, priors: dict[str, Path], out: Path, args: argparse.Namespace,
                   noise: dict[str, float] | None) -> Fit:
    done = out / method / str(identity) / "results.json"
    if args.resume and done.is_file():
        return Fit.from_record(json.loads(done.read_text()))
    overrides = fit_overrides(method, args.seed, args.cap_steps_per_frame, args.max_steps, noise, args.video_frames)
    return fit_avatar(method, identity, priors, out, overrides)


def main(argv: list[str] | None = None) -> str:
    args = _parser().parse_args(argv)
    if args.combine:
        table = combine_seeds([Path(d) for d in args.combine])
        print(table)
        return table
    out = Path(args.out)
    methods = parse_methods(args.methods)
    noise = parse_noise(args.tracking_noise)
    if noise and any(METHODS[m].prior == "realhead" for m in methods):
        raise ValueError("--tracking-noise: the 3DRealHead enrollment's cached conditioning maps come from the exact "
                         "parameters; run the noisy benchmark with --methods inversion,baseline")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    priors = _priors(args, methods, out, timings)
    if args.prior_only:
        print("priors saved: " + ", ".join(f"{k} {v}" for k, v in priors.items()))
        return ""
    identities = same_subjects(priors, args.identities)
    settings = {"seed": args.seed, "methods": methods, "priors": {k: str(v) for k, v in priors.items()},
                "cap_steps_per_frame": args.cap_steps_per_frame, "max_steps": args.max_steps,
                "tracking_noise": noise}
    fits: list[Fit] = []
    table = ""
    for identity in identities:
        for method in methods:
            t = time.perf_counter()
            fits.append(_fit_or_resume(method, identity, priors, out, args, noise))
            timings[f"{method}/{identity}"] = max(time.perf_counter() - t, fits[-1].seconds)  # resumed: its own
            check_same_data(fits)  # a comparison on other inputs or images is no comparison: stop at once
        timings["total"] = time.perf_counter() - start
        table = write_results(out, fits, identities, timings, settings)  # a partial table after each identity
    print("\n" + table)
    print("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return table
