"""Benchmark of the SynShot prior network: forward + backward of ``SynShotNet`` at several sizes (CPU).

Run: ``python benchmarks/prior_step.py`` (``make bench``). Prints one row per configuration:
parameter count, median wall time and process CPU time of one forward + backward (maps only, no
rendering) over the repeats, with 1 and 2 intra-op threads. The load average is printed because
on a shared machine the figures are only meaningful relative to it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import yaml

from avatar_lightning.models import SynShotNet, sample_uv, texel_grid

CASES = {
    "tiny (16², F=8)": {"map_resolution": 16, "latent_resolution": 4, "feature_channels": 8, "channels": 8,
                        "max_channels": 16, "id_code_dim": 4, "expr_code_dim": 4, "transformer_width": 16,
                        "regressor_hidden": 8},
    "small (32², F=16)": {"map_resolution": 32, "latent_resolution": 8, "feature_channels": 16, "channels": 16,
                                "max_channels": 32, "id_code_dim": 8, "expr_code_dim": 8, "transformer_width": 32,
                                "transformer_depth": 1, "regressor_hidden": 16},
    "experiments/prior.yaml": "prior.yaml",  # read from the config, so the row follows the shipped default
    "mid (128², F=32)": {"map_resolution": 128, "latent_resolution": 16, "feature_channels": 32, "channels": 32,
                         "max_channels": 128, "regressor_hidden": 32},
}


def yaml_net(name: str) -> dict:
    """The ``model.init_args.net`` block of ``experiments/<name>``."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", name)
    with open(path) as f:
        return dict(yaml.safe_load(f)["model"]["init_args"]["net"])


def step(net: SynShotNet, batch: int, samples: int) -> None:
    """One forward + backward through encoders, VQ, transformer, decoders and both part regressors."""
    r = net.map_resolution
    x = torch.rand(batch, 3, r, r)
    out = net(x, x, x)
    loss = out.maps.tex.square().mean() + out.identity.vq.loss + out.expression.vq.loss
    for part in net.parts:
        pred = net.regress(part, sample_uv(out.maps.feat, texel_grid(samples)))
        loss = loss + pred.sh.square().mean() + pred.offsets.position.square().mean()
    loss.backward()


def measure(kwargs: dict, batch: int, samples: int, repeats: int) -> tuple[float, float]:
    """Median (wall s, CPU s) of one step after a warm-up step."""
    torch.manual_seed(0)
    net = SynShotNet(**kwargs)
    step(net, batch, samples)
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        step(net, batch, samples)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}, batch {args.batch}")
    print(f"{'case':28s} {'params':>9s} {'threads':>7s} {'wall s':>8s} {'cpu s':>8s}")
    for name, case in CASES.items():
        kwargs = yaml_net(case) if isinstance(case, str) else case
        params = sum(p.numel() for p in SynShotNet(**kwargs).parameters())
        samples = 2 * kwargs["map_resolution"]  # per-part grids denser than the maps, as SynShot's
        for threads in (1, 2):
            torch.set_num_threads(threads)
            wall, cpu = measure(kwargs, args.batch, samples, args.repeats)
            print(f"{name:28s} {params:9d} {threads:7d} {wall:8.3f} {cpu:8.3f}")


if __name__ == "__main__":
    main()
