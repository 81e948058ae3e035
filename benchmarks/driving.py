"""Benchmark of 3DRealHead driving (paper §IV-C2: "driving plus rendering runs at 27 fps" on a GPU).

Run: ``python benchmarks/driving.py [--checkpoint avatar.ckpt|realhead_prior.ckpt]`` (``make bench``).
One frame = what ``RealHeadDriver.predict_step`` does: expression offsets and the mouth Sobel map
back-projected from the frontal frame (conditioning), E_expr + decoder with the cached identity maps
+ per-texel Gaussians (network), posing + rasterisation (raster). The tracked frame is synthetic
(neutral head, a camera 1 m in front, a random image of the render size); the timing does not depend
on what the pixels show. Without ``--checkpoint`` the avatar is an **untrained** prior at the CPU
default size (``experiments/realhead_prior.yaml``: R = 64, 4 levels), which costs the same per frame as
a trained one. Prints per device and size ``N fps`` and the share of each part; CUDA rows only
when a GPU is present. The load average is printed: on a shared machine figures are relative to it.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from avatar_lightning.lit.realhead_enroll import RealHeadEnrollment
from avatar_lightning.lit.realhead_prior import RealHeadPrior
from avatar_lightning.realhead.drive import PARTS, EnrolledAvatar
from avatar_lightning.realhead.enrollment import prior_hyper_parameters, read_prior_checkpoint

#: the CPU default network (experiments/realhead_prior.yaml)
CPU_DEFAULT = {"uv_size": 64, "levels": 4, "c_base": 1024, "c_max": 128, "style_dim": 128}


def load_avatar(checkpoint: str | None) -> tuple[EnrolledAvatar, str]:
    """The avatar to drive and a sentence saying what it is."""
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if "identity.0" in state.get("state_dict", {}):
            enrollment = RealHeadEnrollment.load_from_checkpoint(checkpoint, map_location="cpu")
            return EnrolledAvatar.from_enrollment(enrollment), f"enrolled avatar {checkpoint}"
        hparams = prior_hyper_parameters(read_prior_checkpoint(checkpoint))
        prior = RealHeadPrior(**{**hparams, "adv_weight": 0.0, "lpips_weight": 0.0})
        prior.load_state_dict(state["state_dict"], strict=False)
        what = f"prior {checkpoint} (identity maps from a random texture)"
    else:
        prior = RealHeadPrior(**CPU_DEFAULT, adv_weight=0.0, lpips_weight=0.0)
        what = "UNTRAINED prior at the CPU default size (R 64, 4 levels; pass --checkpoint for a trained one)"
    r = prior.hparams.uv_size
    with torch.no_grad():
        identity = prior.net.encode_identity(torch.rand(1, 3, r, r, generator=torch.Generator().manual_seed(0)))
    return EnrolledAvatar(prior.net, prior.head, prior.texels, identity, use_mouth=prior.hparams.use_mouth), what


def tracked_frame(avatar: EnrolledAvatar, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One tracked frame ``size``² seen by a camera 1 m in front of the face (OpenCV, looking at −z)."""
    K = torch.tensor([[2.4 * size, 0, size / 2], [0, 2.4 * size, size / 2], [0, 0, 1.0]])
    w2c = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    w2c[:3, 3] = torch.tensor([0.0, 0.0, 1.0])
    head = avatar.head
    frame = {"image": torch.rand(1, 1, 3, size, size), "mask": torch.ones(1, 1, 1, size, size),
             "K": K[None, None], "world_to_cam": w2c[None, None], "shape": torch.zeros(1, head.n_shape),
             "expr": 0.5 * torch.randn(1, head.n_expr, generator=torch.Generator().manual_seed(0)),
             "pose": torch.zeros(1, 5, 3),
             "translation": torch.zeros(1, 3), "background": torch.ones(1, 3)}
    return {k: v.to(device) for k, v in frame.items()}


def measure(avatar: EnrolledAvatar, size: int, device: torch.device, frames: int, warmup: int = 2
            ) -> tuple[float, dict[str, float]]:
    """Frames per second of drive + render at ``size``² and each part's share of the time."""
    avatar.to(device)
    batch = tracked_frame(avatar, size, device)
    for _ in range(warmup):
        avatar(batch, 0)
    avatar.times = dict.fromkeys(PARTS, 0.0)
    start = time.perf_counter()
    for _ in range(frames):
        avatar(batch, 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    total = sum(avatar.times.values())
    return frames / seconds, {k: v / total for k, v in avatar.times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="an enrollment avatar.ckpt or a RealHeadPrior checkpoint")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="render widths in pixels")
    parser.add_argument("--frames", type=int, default=10, help="timed frames per row (after 2 warm-up frames)")
    parser.add_argument("--backend", default="auto", help="rasteriser backend")
    args = parser.parse_args()
    avatar, what = load_avatar(args.checkpoint)
    avatar.render_backend = args.backend
    print(f"avatar: {what}; {avatar.texels.num_gaussians} Gaussians; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if len(devices) == 1:
        print("CUDA: no GPU here, CUDA rows skipped")
    for device in devices:
        for size in args.sizes:
            fps, share = measure(avatar, size, device, args.frames)
            parts = ", ".join(f"{k} {100 * v:.0f} %" for k, v in share.items())
            print(f"{device.type.upper()} {size}x{size}: {fps:.2f} fps ({parts})")


if __name__ == "__main__":
    main()
