"""Step-time cost of the perceptual and identity losses (LPIPS-VGG / -Alex, SFace L_id + L_arc), CPU.

Run: ``python benchmarks/perceptual_losses.py`` (``make bench``). For the image batches the shipped
configs feed these losses per optimiser step, prints the median wall time of forward + backward of
each term next to the prior network's own forward + backward (``benchmarks/prior_step.py``'s
``experiments/prior.yaml`` row), so the added cost reads as a fraction of a step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prior_step import measure as network_step  # noqa: E402
from prior_step import yaml_net  # noqa: E402

from avatar_lightning.losses import LPIPS  # noqa: E402
from avatar_lightning.losses.identity import SFaceIdentityLoss  # noqa: E402

# (config, images per step, side): B × V rendered images compared per optimiser step
BATCHES = {"demo_prior.yaml (2×3 @ 32²)": (6, 32), "prior.yaml (2×4 @ 64²)": (8, 64),
           "invert.yaml demo (3 @ 32²)": (3, 32), "invert.yaml (3 @ 128²)": (3, 128)}


def timed(fn, repeats: int) -> float:
    fn()
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
    return statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    print(f"load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    net_wall, _ = network_step(yaml_net("prior.yaml"), 2, 2 * yaml_net("prior.yaml")["map_resolution"], args.repeats)
    print(f"prior.yaml network forward+backward (batch 2, no rendering): {net_wall * 1e3:.0f} ms")
    terms = {"LPIPS-VGG": LPIPS("vgg"), "LPIPS-Alex": LPIPS("alex"), "SFace L_id+L_arc": SFaceIdentityLoss()}
    print(f"{'batch':30s} {'term':18s} {'ms':>8s} {'× prior.yaml net step':>22s}")
    for name, (n, side) in BATCHES.items():
        g = torch.Generator().manual_seed(0)
        target = torch.rand(n, 3, side, side, generator=g)
        render = torch.rand(n, 3, side, side, generator=g, requires_grad=True)
        mask = torch.ones(n, 1, side, side)
        for term_name, term in terms.items():
            if term_name.startswith("SFace"):
                def run(term=term, render=render, target=target, mask=mask) -> None:
                    out = term(render, target, mask)
                    (out.id + out.arc).backward()
            else:
                def run(term=term, render=render, target=target) -> None:
                    term(render, target).backward()
            wall = timed(run, args.repeats)
            print(f"{name:30s} {term_name:18s} {wall * 1e3:8.0f} {wall / net_wall:22.2f}")


if __name__ == "__main__":
    main()
