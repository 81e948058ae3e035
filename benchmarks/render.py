"""Benchmark of the torch rasteriser: forward + backward on a head-sized Gaussian cloud (CPU).

Run: ``python benchmarks/render.py`` (``make bench``). Prints one table row per case:
median wall time of forward+backward over the repeats, and peak memory.

Peak memory is measured in a fresh subprocess per case as the growth of the process's resident
high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) from just before the first render
(scene built, torch imported and warmed) to after all repeats. That counts everything torch
allocates on the CPU, which ``tracemalloc`` would not see. ``os.getloadavg()`` is printed because
the figures are only meaningful relative to the machine's load; the process CPU time per step is
printed too (with 2 threads on a loaded machine every parallel op waits for the descheduled
second thread, which inflates wall time far more than CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HEADLINE = [(10_000, 128), (50_000, 256)]
SCALING_N = [(2_500, 128), (5_000, 128), (20_000, 128), (40_000, 128)]
SCALING_PIX = [(10_000, 64), (10_000, 256), (10_000, 512)]


def head_scene(n: int, size: int, seed: int = 0):
    """``n`` Gaussians on and just under an ellipsoidal head (~18×24×20 cm) seen from 0.7 m."""
    import torch

    from avatar_lightning.render import Cameras, Gaussians, intrinsics_from_fov, look_at

    gen = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    depth = 1 - 0.15 * torch.rand(n, 1, generator=gen)
    means = dirs * depth * torch.tensor([0.09, 0.12, 0.10])
    scales = 0.002 + 0.01 * torch.rand(n, 3, generator=gen) ** 2
    scales[:, 2] *= 0.3  # flat splats, as trained heads have
    g = Gaussians(means=means, quats=torch.randn(n, 4, generator=gen), scales=scales,
                  opacities=torch.sigmoid(2 * torch.randn(n, generator=gen)),
                  sh=0.3 * torch.randn(n, 16, 3, generator=gen))
    cams = Cameras(K=intrinsics_from_fov(torch.tensor([24.0]), size, size),
                   world_to_cam=look_at(torch.tensor([[0.1, 0.05, 0.7]]), torch.zeros(1, 3)),
                   width=size, height=size)
    return g, cams


def worker(n: int, size: int, repeats: int, threads: int) -> dict:
    import torch

    from avatar_lightning.render import rasterize

    torch.set_num_threads(threads)
    g, cams = head_scene(n, size)
    leaves = g.map(lambda t: t.clone().requires_grad_(True))

    def step() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        out = rasterize(leaves, cams, backend="torch")
        (out.rgb.mean() + out.alpha.mean() + out.depth.mean()).backward()
        return time.perf_counter() - t0, time.process_time() - c0

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    warm = step()[0]  # the first call also pays one-off allocator set-up; it counts for memory
    runs = [step() for _ in range(repeats)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu = [r[0] for r in runs], [r[1] for r in runs]
    with torch.no_grad():
        alpha = rasterize(g, cams, backend="torch").alpha.mean().item()
    return {"n": n, "size": size, "median_s": statistics.median(times), "min_s": min(times), "warm_s": warm,
            "cpu_s": statistics.median(cpu), "peak_mb": max(peak - base, 0) / 1024, "coverage": alpha,
            "threads": threads}


def run_case(n: int, size: int, repeats: int, threads: int, wait_policy: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(n), str(size), "--repeats", str(repeats),
           "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY=wait_policy)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=2, type=int, metavar=("N", "SIZE"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="headline cases only")
    ap.add_argument("--omp-wait-policy", default=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
                    help="PASSIVE (default) stops idle OpenMP threads spinning, which on a shared machine "
                         "steals the CPU from the thread that has work; ACTIVE is OpenMP's usual default")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.threads)))
        return
    cases = HEADLINE + ([] if args.quick else SCALING_N + SCALING_PIX)
    print(f"torch rasteriser, forward+backward, {args.threads} threads (OMP_WAIT_POLICY="
          f"{args.omp_wait_policy}), median of {args.repeats}")
    print(f"load average before: {os.getloadavg()}")
    print(f"{'N':>7} {'H=W':>5} {'median s':>9} {'min s':>7} {'cpu s':>7} {'peak MB':>8} {'mean alpha':>10}")
    for n, size in cases:
        reps = args.repeats if (n, size) in HEADLINE else max(2, args.repeats // 2)
        r = run_case(n, size, reps, args.threads, args.omp_wait_policy)
        print(f"{r['n']:>7} {r['size']:>5} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['cpu_s']:>7.3f} "
              f"{r['peak_mb']:>8.0f} {r['coverage']:>10.2f}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print("target (10k, 128x128): median <= 1.0 s and peak <= 700 MB on a quiet 2-core CPU. 'cpu s' is the "
          "process CPU time per step (all threads), which a loaded machine inflates less than wall time.")


if __name__ == "__main__":
    main()
