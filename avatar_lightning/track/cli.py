"""Command line of the face tracker.

Usage::

    python -m avatar_lightning.track photo.jpg [more.jpg | folder/ ...] --out runs/me
    python -m avatar_lightning.track clip.mp4 --out runs/clip [--max-frames 300] [--stride 2]
    python -m avatar_lightning.track clip.mp4 --out runs/clip --head-model generic_model.pkl \\
        --embedding mediapipe_landmark_embedding.npz --n-shape 100 --n-expr 50

Writes an INSTA actor folder (see :mod:`avatar_lightning.track.export`) plus ``track.json`` and
``overlays/``; prints the reprojection error and, for a video, the landmark jitter.
"""

from __future__ import annotations

import argparse
import logging
import sys

from avatar_lightning.track.fit import FitConfig
from avatar_lightning.track.pipeline import TrackOptions, track


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` lists every option with its default)."""
    d, f = TrackOptions(), FitConfig()
    p = argparse.ArgumentParser(prog="python -m avatar_lightning.track",
                                description="Track a face in photos or a video and write an INSTA actor folder.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="photos, folders of photos, or one video (one person)")
    p.add_argument("--out", required=True, help="actor folder to write (INSTA layout)")
    p.add_argument("--head-model", default=d.head_model, help="'builtin' or a FLAME generic_model.pkl")
    p.add_argument("--embedding", default=None,
                   help="mediapipe_landmark_embedding.npz of the head model (needed for a FLAME file)")
    p.add_argument("--n-shape", type=int, default=d.n_shape, help="identity coefficients fitted")
    p.add_argument("--n-expr", type=int, default=d.n_expr, help="expression coefficients fitted")
    p.add_argument("--size", type=int, default=d.size, help="side of the square output images")
    p.add_argument("--margin", type=float, default=d.margin, help="crop side / landmark box side")
    p.add_argument("--sequence", action=argparse.BooleanOptionalAction, default=None,
                   help="fit as a sequence (default: yes for a video, no for photos)")
    p.add_argument("--max-frames", type=int, default=None, help="read at most this many frames")
    p.add_argument("--stride", type=int, default=d.stride, help="keep every n-th frame")
    p.add_argument("--fov", type=float, default=d.fov_deg, help="prior horizontal field of view of the camera, deg")
    p.add_argument("--mask", choices=("segment", "mesh"), default=d.mask, help="foreground matte")
    p.add_argument("--no-overlays", action="store_true", help="do not draw overlays/")
    p.add_argument("--smooth-mm", type=float, default=f.smooth_mm, help="sequences: landmark acceleration prior")
    p.add_argument("--steps", type=int, default=f.steps, help="L-BFGS iterations of the full fit")
    p.add_argument("--fixed-focal", action="store_true", help="keep the focal length given by --fov")
    p.add_argument("--fit-neck", action="store_true",
                   help="also fit the neck rotation (INSTA files cannot hold it: the loader reads it as zero)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the tracker; return 0, or print the error (naming the file) and return 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    fit = FitConfig(smooth_mm=args.smooth_mm, steps=args.steps, fit_focal=not args.fixed_focal,
                    fit_neck=args.fit_neck)
    options = TrackOptions(head_model=args.head_model, embedding=args.embedding, n_shape=args.n_shape,
                           n_expr=args.n_expr, size=args.size, margin=args.margin, sequence=args.sequence,
                           max_frames=args.max_frames, stride=args.stride, fov_deg=args.fov, mask=args.mask,
                           overlays=not args.no_overlays, fit=fit)
    try:
        res = track(args.inputs, args.out, options)
    except (FileNotFoundError, ValueError, KeyError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    n = len(res.names)
    print(f"{n} frame(s) -> {res.out}; reprojection error {res.error_px:.2f} px ({100 * res.error_rel:.1f}% of the "
          f"face size); focal {float(res.fit.K[0, 0]):.0f} px")
    if n > 2:
        print(f"jitter (RMS landmark acceleration): fitted {res.jitter_px:.2f} px, "
              f"detected {res.jitter_detected_px:.2f} px")
    print("seconds per frame: " + ", ".join(f"{k} {v / n:.3f}" for k, v in res.seconds.items()))
    return 0
