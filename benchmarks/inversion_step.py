"""Seconds per optimiser step of the few-shot inversion and the no-prior baseline (CPU).

A randomly initialised prior at the demo's CPU size and the built-in head; 3 input views. Prints
one line per (method, image size). Timings depend on the machine's load: run it on a quiet machine.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/inversion_step.py
"""

from __future__ import annotations

import time

import torch

from avatar_lightning.lit.baseline import GaussianAvatarBaseline
from avatar_lightning.lit.inversion import SynShotInversion
from avatar_lightning.lit.synshot_prior import SynShotPrior
from avatar_lightning.render import intrinsics_from_fov, orbit_cameras

NET = {"map_resolution": 32, "latent_resolution": 8, "feature_channels": 16, "id_code_dim": 8, "expr_code_dim": 8,
       "id_codebook_size": 64, "expr_codebook_size": 64, "channels": 16, "max_channels": 32, "transformer_width": 32,
       "transformer_heads": 2, "transformer_depth": 1, "regressor_hidden": 16, "regressor_blocks": 2, "sh_degree": 1}


def batch(head, size: int, views: int = 3, res: int = 32) -> dict[str, torch.Tensor]:
    cams = orbit_cameras(views, 0.55, 0.0, start_azimuth_deg=-35.0, arc_deg=70.0)
    return {"image": torch.rand(1, views, 3, size, size), "mask": torch.ones(1, views, 1, size, size),
            "K": intrinsics_from_fov(30.0, size, size).expand(1, views, 3, 3).clone(), "world_to_cam": cams[None],
            "shape": torch.zeros(1, head.n_shape), "expr": torch.zeros(1, head.n_expr), "pose": torch.zeros(1, 5, 3),
            "translation": torch.zeros(1, 3), "identity": torch.zeros(1, dtype=torch.long),
            "frame": torch.zeros(1, dtype=torch.long), "background": torch.ones(1, 3),
            "uv_texture": torch.rand(1, 3, res, res), "uv_position": 0.05 * torch.randn(1, 3, res, res),
            "uv_expression": torch.zeros(1, 3, res, res)}


def seconds_per_step(model, b: dict[str, torch.Tensor], loss_fn, steps: int = 5) -> float:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn(b).backward()  # warm-up (first-call allocations)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(b).backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    torch.manual_seed(0)
    prior = SynShotPrior(net=NET, part_samples={"face": 24, "hair": 16}, render_backend="torch")
    inversion = SynShotInversion(prior_hparams=dict(prior.hparams), render_backend="torch")
    baseline = GaussianAvatarBaseline(render_backend="torch")
    for size in (32, 64):
        b = batch(inversion.head, size)
        inversion.capture_identity(b)

        def inv_loss(x):
            return inversion.compute_losses(x, inversion(x))["photometric"]

        def base_loss(x):
            return baseline.compute_losses(x, baseline(x))["photometric"]

        n_inv = inversion.assemble(b).gaussians.num_gaussians
        print(f"inversion stage 1  {size}x{size} x3 views  N={n_inv:6d}  "
              f"{seconds_per_step(inversion, b, inv_loss):.2f} s/step")
        print(f"baseline           {size}x{size} x3 views  N={baseline.num_gaussians:6d}  "
              f"{seconds_per_step(baseline, b, base_loss):.2f} s/step")


if __name__ == "__main__":
    main()
