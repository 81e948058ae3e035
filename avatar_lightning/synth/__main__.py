"""``python -m avatar_lightning.synth``: generate a synthetic head dataset (see ``--help``)."""

from __future__ import annotations

import argparse
import sys
import time

from avatar_lightning.synth.config import ConfigMismatchError, GeneratorConfig

DESCRIPTION = """\
Generate a synthetic head dataset (SynShot §3.4-style): random identities (3DMM shape, skin,
lips, brows, irises, hair style and colour, beard, light) and expressions on the head model,
rendered from a rig of cameras in front of and above the head with the project's Gaussian
rasteriser. Writes one PNG image and one foreground mask per (identity, expression, camera), the
cameras (K, world_to_cam), the 3DMM parameters, each identity's UV texture and hair proxy, and a
manifest with the generator config and a content hash.
"""
EPILOG = """\
Paper scale (SynShot §3.4): --identities 2000 --image-size 768x512 --cameras 28 (≈14M images with
its expressions). Quick start (CPU): --identities 64 --expressions 4 --image-size 128.

The run is resumable: run the same command again after an interruption and it renders only the
missing samples. A folder made with a different config is refused, never silently reused.
"""


def parse_size(text: str) -> tuple[int, int]:
    """``"128"`` → (128, 128); ``"768x512"`` → (768, 512) as height × width."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--image-size must be N or HxW, got {text!r}") from err
    if len(sizes) not in (1, 2) or min(sizes) < 8:
        raise argparse.ArgumentTypeError(f"--image-size must be N or HxW with sides >= 8, got {text!r}")
    return (sizes[0], sizes[-1])


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(prog="python -m avatar_lightning.synth", description=DESCRIPTION,
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset folder (created; resumed if it holds the same config)")
    p.add_argument("--identities", type=int, default=64, help="number of identities (default: 64)")
    p.add_argument("--expressions", type=int, default=4, help="expressions per identity, #0 neutral (default: 4)")
    p.add_argument("--image-size", type=parse_size, default=(128, 128), metavar="N|HxW",
                   help="image size, square N or height x width (default: 128; paper: 768x512)")
    p.add_argument("--cameras", type=int, default=28,
                   help="rig cameras: half frontal, half upper hemisphere (default: 28)")
    p.add_argument("--seed", type=int, default=0, help="master seed (default: 0)")
    p.add_argument("--head-model", default="builtin",
                   help="'builtin' or the path of a FLAME pickle (default: builtin)")
    p.add_argument("--n-shape", type=int, default=20, help="identity coefficients sampled (default: 20)")
    p.add_argument("--n-expr", type=int, default=15, help="expression coefficients sampled (default: 15)")
    p.add_argument("--texture-size", type=int, default=256, help="UV texture side (default: 256)")
    p.add_argument("--surface-points", type=int, default=0,
                   help="surface Gaussians per avatar; 0 = chosen from the image size (default: 0)")
    p.add_argument("--hair-density", type=float, default=0.0,
                   help="hair-proxy point multiplier; 0 = chosen from the image size (default: 0)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes, one torch thread each (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the generator; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from avatar_lightning.synth.generate import generate

    try:
        config = GeneratorConfig(identities=args.identities, expressions=args.expressions, height=args.image_size[0],
                                 width=args.image_size[1], cameras=args.cameras, seed=args.seed,
                                 head_model=args.head_model, n_shape=args.n_shape, n_expr=args.n_expr,
                                 texture_size=args.texture_size, surface_points=args.surface_points,
                                 hair_density=args.hair_density)
        start = time.perf_counter()
        manifest = generate(config, args.out, workers=args.workers, progress=not args.no_progress)
    except (ConfigMismatchError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {manifest['counts']['images']} images, content hash {manifest['content_hash'][:16]}, "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
