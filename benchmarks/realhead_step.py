"""Benchmark of one 3DRealHead prior iteration (paper §IV-B) at the CPU default and at paper size.

Run: ``python benchmarks/realhead_step.py`` (``make bench``); ``--skip-paper`` leaves out the
paper-size rows (minutes on a CPU). One iteration = what ``RealHeadPrior.training_step`` does once
the adversarial term is on: Style U-Net forward, per-texel Gaussians, posing and rendering every
supervising view, L1 + SSIM + LPIPS-VGG, the generator's hinge term through the projected
discriminator, backward; then the discriminator's real and fake passes and backward. Inputs are
random tensors of the right shapes (the data pipeline is not timed). Prints per configuration the
Gaussian count, the median wall and process-CPU seconds over the repeats after one warm-up, and the
share of the wall time spent in the network, the renderer and the losses + discriminator (timed
separately in one extra forward). The load average is printed: on a shared machine the figures are
only meaningful relative to it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from avatar_lightning.lit.realhead_prior import RealHeadPrior
from avatar_lightning.losses.adversarial import d_hinge_loss
from avatar_lightning.realhead.inputs import region_mask  # noqa: F401  (imports the input stack once)

#: (name, model kwargs, image H, W, views V, batch B)
CASES = [
    ("CPU default (experiments/realhead_prior.yaml)", {"uv_size": 64, "levels": 4, "disc_crop": 64}, 32, 32, 3, 2),
    ("CPU default at 64² images", {"uv_size": 64, "levels": 4, "disc_crop": 128}, 64, 64, 3, 2),
    ("paper size (R 256, L 6, 802×550, DINO-size crop 224; alex D)",
     {"uv_size": 256, "levels": 6, "c_base": 16384, "c_max": 512, "style_dim": 512, "disc_crop": 224}, 550, 802, 1, 2),
]


def fake_batch(model: RealHeadPrior, height: int, width: int, views: int, batch: int) -> dict[str, torch.Tensor]:
    """Random inputs with the schema's shapes; a camera 1 m in front of the head looking at it."""
    r = model.hparams.uv_size
    K = torch.tensor([[1.2 * width, 0, width / 2], [0, 1.2 * width, height / 2], [0, 0, 1.0]])
    w2c = torch.eye(4)
    w2c[:3, 3] = torch.tensor([0.0, -0.02, 1.0])
    w2c[1, 1] = w2c[2, 2] = -1  # OpenCV: y down, z forward, looking at the head's face (+z)
    mask = torch.zeros(batch, views, 1, height, width)
    mask[..., height // 6: -height // 6, width // 4: -width // 4] = 1
    return {"image": torch.rand(batch, views, 3, height, width), "mask": mask,
            "K": K.expand(batch, views, 3, 3), "world_to_cam": w2c.expand(batch, views, 4, 4),
            "shape": torch.zeros(batch, model.head.n_shape), "expr": torch.zeros(batch, model.head.n_expr),
            "pose": torch.zeros(batch, 5, 3), "translation": torch.zeros(batch, 3),
            "background": torch.ones(batch, 3), "uv_identity": torch.rand(batch, 3, r, r),
            "uv_expr_offset": torch.randn(batch, 3, r, r), "uv_mouth": torch.randn(batch, 3, r, r)}


def iteration(model: RealHeadPrior, batch: dict[str, torch.Tensor]) -> None:
    out = model(batch)
    loss = model.compute_losses(batch, out)["loss"]  # adversarial term on (adv_start = 0)
    loss.backward()
    real = model.discriminator(model._disc_input(batch["image"], batch))
    fake = model.discriminator(model._disc_input(out.render.rgb.detach(), batch))
    d_hinge_loss(real, fake).backward()


def shares(model: RealHeadPrior, batch: dict[str, torch.Tensor]) -> tuple[float, float, float]:
    """Seconds of one forward spent in the network, in posing + rendering, and in losses + discriminator."""
    from avatar_lightning.lit.render_step import render_batch

    t0 = time.perf_counter()
    raw = model.net(batch["uv_identity"], model.expression_input(batch))
    maps, gaussians = model.gaussians_from_raw(raw, batch)
    t1 = time.perf_counter()
    render = render_batch(batch, gaussians, model.texels.binding, model.head, "torch")
    t2 = time.perf_counter()
    from avatar_lightning.lit.realhead_prior import RealHeadOutputs

    model.compute_losses(batch, RealHeadOutputs(render=render, raw=raw, maps=maps, gaussians=gaussians))
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-paper", action="store_true", help="leave out the paper-size row")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"3DRealHead prior iteration (G + D, adversarial on), threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'configuration':62s} {'N':>7s} {'wall s':>8s} {'cpu s':>8s}  net / render / loss+D")
    for name, kwargs, h, w, v, b in CASES:
        if args.skip_paper and name.startswith("paper"):
            continue
        torch.manual_seed(0)
        model = RealHeadPrior(**kwargs, adv_start=0, adv_ramp=1, render_backend="torch")
        batch = fake_batch(model, h, w, v, b)
        repeats = 1 if name.startswith("paper") else args.repeats
        iteration(model, batch)
        walls, cpus = [], []
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            iteration(model, batch)
            model.zero_grad(set_to_none=True)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        with torch.no_grad():
            net, render, rest = shares(model, batch)
        total = net + render + rest
        print(f"{name:62s} {model.texels.num_gaussians:7d} {statistics.median(walls):8.3f} "
              f"{statistics.median(cpus):8.3f}  {net / total:.0%} / {render / total:.0%} / {rest / total:.0%}")


if __name__ == "__main__":
    main()
