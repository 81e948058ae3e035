"""Synthetic generation speed: render a fraction of the quick-start set and extrapolate.

Quick-start set = 64 identities × 4 expressions × 28 cameras at 128×128 (7,168 images). This
renders ``--identities`` of them (default 2, i.e. 1/32) and scales the wall time linearly (every
sample costs the same: same Gaussian counts, same cameras). Prints seconds per sample, images per
second, and the extrapolated time for the full set with the given number of workers.

    python benchmarks/bench_synth.py [--identities 2] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from avatar_lightning.synth.config import GeneratorConfig
from avatar_lightning.synth.generate import generate

QUICK_START = GeneratorConfig(identities=64, expressions=4, height=128, width=128, cameras=28)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--identities", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    part = GeneratorConfig(**{**QUICK_START.__dict__, "identities": args.identities})
    with tempfile.TemporaryDirectory() as tmp:
        # Load (and on first use build) the head model outside the timed region.
        from avatar_lightning.head import load_head_model

        load_head_model(part.head_model, n_shape=part.n_shape, n_expr=part.n_expr)
        start = time.perf_counter()
        generate(part, tmp, workers=args.workers, progress=False)
        wall = time.perf_counter() - start
    samples = part.identities * part.expressions
    full = QUICK_START.identities * QUICK_START.expressions
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine: timings inflate)")
    print(f"rendered {samples} samples ({samples * part.cameras} images, 128x128, 28 cameras) "
          f"with {args.workers} worker(s) in {wall:.1f} s: {wall / samples:.2f} s/sample, "
          f"{samples * part.cameras / wall:.1f} images/s")
    print(f"extrapolated quick-start set (64 x 4 x 28 = {full * part.cameras} images): "
          f"{wall / samples * full / 60:.1f} min")


if __name__ == "__main__":
    main()
