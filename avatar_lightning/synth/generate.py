"""Render a synthetic dataset: resumable, atomic, parallel, with a progress bar.

A unit of work is one (identity, expression) sample: its parameters, C images and C masks, and a
``done.json`` written last. Identity assets (appearance, texture, hair proxy) are deterministic
functions of (seed, identity), so whichever worker needs them first writes them. Every random draw
comes from a generator seeded by (seed, identity[, expression]), so the content does not depend on
the number of workers, the order of work, or on interruptions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from avatar_lightning.io import save_image, torch_save, write_json
from avatar_lightning.synth import layout
from avatar_lightning.synth.avatar import avatar_gaussians, sample_frame
from avatar_lightning.synth.config import GeneratorConfig, check_or_write_manifest, read_manifest
from avatar_lightning.synth.identity import IdentityAssets, load_or_build_identity, rig_target
from avatar_lightning.synth.rig import Rig, build_rig


def _sha256(path: Path) -> str:
    """Digest of a file's content. ``.pt`` files are hashed by their tensors: ``torch.save`` embeds
    the (random) temp-file name of the atomic write in the archive, so their bytes differ run to run."""
    if path.suffix != ".pt":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for key, value in sorted(torch.load(path).items()):
        digest.update(f"{key}{tuple(value.shape)}{value.dtype}".encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


def sample_done(root: Path, identity: int, expression: int) -> bool:
    """True when the sample's ``done.json`` exists and every file it lists is present."""
    done = layout.sample_dir(root, identity, expression) / "done.json"
    if not done.is_file():
        return False
    files = json.loads(done.read_text())["files"]
    return all((done.parent / name).is_file() for name in files)


@dataclass
class _Context:
    """Per-process state: the head model, rig and a small identity cache."""

    config: GeneratorConfig
    root: Path
    head: Any
    rig: Rig
    cache: dict[int, IdentityAssets]

    def identity(self, index: int) -> IdentityAssets:
        if index not in self.cache:
            self.cache.clear()  # work is ordered by identity, so one entry is enough
            self.cache[index] = load_or_build_identity(self.head, self.config, self.root, index)
        return self.cache[index]


_CTX: _Context | None = None


def _make_context(config: GeneratorConfig, root: Path) -> _Context:
    from avatar_lightning.head import load_head_model

    head = load_head_model(config.head_model, n_shape=config.n_shape, n_expr=config.n_expr)
    rig = build_rig(config.cameras, config.height, config.width, rig_target(head))
    return _Context(config=config, root=root, head=head, rig=rig, cache={})


def _init_worker(config: GeneratorConfig, root: Path) -> None:
    global _CTX
    torch.set_num_threads(1)  # one thread per worker: processes, not threads, use the cores
    _CTX = _make_context(config, root)


def render_sample(ctx: _Context, identity: int, expression: int) -> bool:
    """Render and store one (identity, expression) sample unless it is already done.

    Returns:
        True if it was rendered, False if it was already complete.
    """
    from avatar_lightning.render import Cameras, rasterize

    if sample_done(ctx.root, identity, expression):
        return False
    assets = ctx.identity(identity)
    rng = np.random.default_rng([ctx.config.seed, identity, expression + 1])
    params = sample_frame(rng, assets.shape, ctx.config.n_expr, neutral=expression == 0)
    with torch.no_grad():
        out = ctx.head(params.shape[None], params.expr[None], params.pose[None], params.translation[None])
        gaussians = avatar_gaussians(out.vertices[0], ctx.head.faces, assets.surface, assets.texture,
                                     assets.hair, assets.appearance)
        cams = Cameras(K=ctx.rig.K, world_to_cam=ctx.rig.world_to_cam, width=ctx.rig.width, height=ctx.rig.height)
        render = rasterize(gaussians, cams, background=params.background)
    folder = layout.sample_dir(ctx.root, identity, expression)
    names = ["params.pt"]
    torch_save(folder / "params.pt", params.to_dict())
    for cam in range(ctx.rig.n):
        for kind, img in (("rgb", render.rgb[cam]), ("mask", render.alpha[cam])):
            path = layout.image_path(ctx.root, identity, expression, cam, kind)
            save_image(path, img)
            names.append(str(path.relative_to(folder)))
    write_json(folder / "done.json", {"files": {n: _sha256(folder / n) for n in names}})
    return True


def _work(unit: tuple[int, int]) -> bool:
    assert _CTX is not None, "worker not initialised"
    return render_sample(_CTX, *unit)


def _remove_partial_files(root: Path) -> int:
    """Delete temp files left by a killed run (``atomic_path`` names them ``.<name>.<random><suffix>``)."""
    removed = 0
    for path in (root / "identities").rglob(".*"):
        if path.is_file():
            path.unlink()
            removed += 1
    return removed


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Render with one torch thread, then restore the caller's setting (e.g. a trainer's).

    The per-camera tensors are small, so intra-op threads mostly wait on each other: on the shared
    2-core machine, 1 process × 2 threads took 36 s/sample against 7.7 s/sample for 2 processes ×
    1 thread (benchmarks/bench_synth.py); parallelism comes from ``workers`` instead.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the dataset folder (released by the OS even if the process dies).

    A second generator on the same folder (another node's rank 0 under multi-node DDP, or a second
    shell) waits, then finds the work done instead of rendering the same samples twice.
    """
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{root} is being generated by another process; waiting for it", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def content_hash(root: Path, config: GeneratorConfig) -> str:
    """sha256 over every sample's file hashes and every identity file, in a fixed order."""
    digest = hashlib.sha256()
    for i in range(config.identities):
        for name in ("appearance.json", "texture.png", "hair.pt"):
            digest.update(f"{i}/{name}:{_sha256(layout.identity_dir(root, i) / name)}".encode())
        for e in range(config.expressions):
            digest.update((layout.sample_dir(root, i, e) / "done.json").read_bytes())
    return digest.hexdigest()


def generate(config: GeneratorConfig, root: str | os.PathLike, workers: int = 1, progress: bool = True) -> dict:
    """Generate (or finish generating) a synthetic dataset in ``root``.

    Args:
        config: what to generate.
        root: dataset folder; reused only if its manifest records the same config.
        workers: parallel processes (each limited to one torch thread); 1 = in this process.
        progress: show a tqdm bar (rate and ETA).

    Returns:
        The final manifest (``complete`` = True, with counts and ``content_hash``).

    Raises:
        ConfigMismatchError: ``root`` holds a dataset made with another config.
    """
    root = Path(root)
    with _exclusive(root):
        manifest = check_or_write_manifest(root, config)
        if (root / "identities").exists():
            _remove_partial_files(root)
        units = [(i, e) for i in range(config.identities) for e in range(config.expressions)]
        todo = [u for u in units if not sample_done(root, *u)]
        bar = tqdm(total=len(units), initial=len(units) - len(todo), unit="sample", disable=not progress,
                   desc=f"synth {root.name}", dynamic_ncols=True)
        ctx = _make_context(config, root)
        write_json(root / layout.CAMERAS, ctx.rig.to_dict())
        if workers <= 1:
            with _one_thread():
                for unit in todo:
                    render_sample(ctx, *unit)
                    bar.update(1)
        elif todo:
            with mp.get_context("spawn").Pool(workers, _init_worker, (config, root)) as pool:
                for _ in pool.imap_unordered(_work, todo, chunksize=1):
                    bar.update(1)
        bar.close()
        manifest.update(complete=True, content_hash=content_hash(root, config),
                        counts={"identities": config.identities, "expressions": config.expressions,
                                "cameras": config.cameras, "images": len(units) * config.cameras})
        write_json(root / layout.MANIFEST, manifest)
    return manifest


def is_complete(root: str | os.PathLike, config: GeneratorConfig) -> bool:
    """True if ``root`` holds a finished dataset of exactly ``config``."""
    manifest = read_manifest(Path(root))
    return bool(manifest and manifest.get("complete") and manifest.get("config_hash") == config.hash())
