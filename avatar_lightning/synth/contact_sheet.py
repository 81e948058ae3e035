"""``python -m avatar_lightning.synth.contact_sheet``: a grid of generated samples (README figure).

One row per identity: its neutral expression from several rig cameras, then its other
expressions from the frontal camera.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from avatar_lightning.io import load_image, save_image
from avatar_lightning.synth import layout
from avatar_lightning.viz import make_grid


def contact_sheet(root: Path, identities: list[int], cameras: list[int], expressions: list[int],
                  front_camera: int) -> Tensor:
    """Assemble the sheet.

    Args:
        root: generated dataset folder.
        identities: rows.
        cameras: cameras shown for the neutral expression.
        expressions: further expressions shown from ``front_camera``.
        front_camera: camera used for the expression columns.

    Returns:
        RGB image.  # [3, H', W']
    """
    tiles = []
    for i in identities:
        tiles += [load_image(layout.image_path(root, i, 0, c))[:3] for c in cameras]
        tiles += [load_image(layout.image_path(root, i, e, front_camera))[:3] for e in expressions]
    return make_grid(torch.stack(tiles), ncol=len(cameras) + len(expressions), pad=2, pad_value=1.0)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m avatar_lightning.synth.contact_sheet", description=__doc__)
    p.add_argument("--data", required=True, help="generated dataset folder")
    p.add_argument("--out", default="docs/synthetic_samples.png", help="PNG to write")
    p.add_argument("--rows", type=int, default=8, help="identities shown (the first ones)")
    p.add_argument("--cameras", default="3,1,5,0,22,18", help="comma-separated cameras for the neutral expression")
    args = p.parse_args(argv)
    root = Path(args.data)
    config = json.loads((root / layout.MANIFEST).read_text())["config"]
    cameras = [int(c) for c in args.cameras.split(",") if int(c) < config["cameras"]]
    front = cameras[0]
    rows = list(range(min(args.rows, config["identities"])))
    sheet = contact_sheet(root, rows, cameras, list(range(1, config["expressions"])), front)
    save_image(args.out, sheet)
    extra = config["expressions"] - 1
    print(f"wrote {args.out}: {len(rows)} identities x ({len(cameras)} views + {extra} expressions)")


if __name__ == "__main__":
    main()
