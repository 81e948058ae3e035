"""Benchmark of the SynShot prior network: forward + backward of ``SynShotNet`` at several sizes (CPU).

Run: ``python benchmarks/prior_step.py`` (``make bench``). Prints one row per configuration:
parameter count, median wall time and process CPU time of one forward + backward (maps only, no
rendering) over the repeats, with 1 and 2 intra-op threads. The load average is printed because
on a shared machine the figures are only meaningful relative to it.

Then the densification of one sample at ``experiments/prior_paper.yaml``'s part grids (face 512²,
hair 384² on the built-in head: sampling φ, TBN, nearest-neighbour scale, Gaussians), once with the
all-pairs nearest-neighbour search the prior used before (``nn_radius=None``, O(N²)) and once with
the part grid's 8-neighbourhood (the default). ``--skip-network`` prints only these rows;
``--skip-reference`` leaves out the slow all-pairs row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import yaml
from torch import Tensor

from avatar_lightning.head.model import HeadModel, load_head_model
from avatar_lightning.head.uv import part_masks, position_map, sample_uv, texel_grid, uv_rasterize
from avatar_lightning.models import GaussianOffsets, PartPrediction, SynShotNet
from avatar_lightning.models.densify import PartGrid, part_gaussians, part_grid, sample_part

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


def yaml_config(name: str) -> dict:
    """``experiments/<name>`` as a dict."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", name)
    with open(path) as f:
        return yaml.safe_load(f)


def yaml_model(name: str) -> dict:
    """The ``model.init_args`` block of ``experiments/<name>``."""
    return dict(yaml_config(name)["model"]["init_args"])


def yaml_net(name: str) -> dict:
    """The ``model.init_args.net`` block of ``experiments/<name>``, with the map resolution the CLI
    links from its data's ``uv_size``."""
    config = yaml_config(name)
    return {**config["model"]["init_args"]["net"], "map_resolution": config["data"]["init_args"]["uv_size"]}


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


def densify_step(head: HeadModel, grids: dict[str, PartGrid], position: Tensor, nn_radius: int | None) -> int:
    """Gaussians of every part from a position map with zero regressor offsets; returns N."""
    n = 0
    for grid in grids.values():
        h, w = grid.uv.shape[:2]
        zero = torch.zeros(position.shape[0], 1, h, w)
        pred = PartPrediction(sh=zero[:, None].expand(-1, 16, 3, -1, -1), offsets=GaussianOffsets(
            zero.expand(-1, 3, -1, -1), zero.expand(-1, 4, -1, -1), zero.expand(-1, 3, -1, -1), zero))
        n += part_gaussians(sample_part(position, grid), pred, grid, nn_radius=nn_radius).num_gaussians
    return n


def densify_rows(skip_reference: bool) -> None:
    """Wall / CPU seconds of densifying one sample at the paper config's part grids (one thread)."""
    samples = dict(yaml_model("prior_paper.yaml")["part_samples"])
    head = load_head_model("builtin")
    grids = {}
    for part, size in samples.items():
        grids[part] = part_grid(part_masks(uv_rasterize(head.uv_coords, head.uv_faces, size), head)[part])
    raster = uv_rasterize(head.uv_coords, head.uv_faces, 512)
    verts = head.canonical(torch.zeros(1, head.n_shape), torch.zeros(1, head.n_expr))
    position = position_map(raster, verts, head.faces)
    torch.set_num_threads(1)
    print(f"\ndensification, one sample, part grids {samples} (prior_paper.yaml), 1 thread")
    print(f"{'nearest neighbour':28s} {'N':>9s} {'wall s':>8s} {'cpu s':>8s}")
    for name, radius in (("all pairs (before)", None), ("grid 3x3 window (after)", 1)):
        if radius is None and skip_reference:
            continue
        w0, c0 = time.perf_counter(), time.process_time()
        n = densify_step(head, grids, position, radius)
        print(f"{name:28s} {n:9d} {time.perf_counter() - w0:8.3f} {time.process_time() - c0:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--skip-network", action="store_true", help="only the densification rows")
    parser.add_argument("--skip-reference", action="store_true", help="leave out the all-pairs densification row")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}, batch {args.batch}")
    if not args.skip_network:
        network_rows(args)
    densify_rows(args.skip_reference)


def network_rows(args: argparse.Namespace) -> None:
    """One row per network case and thread count."""
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
