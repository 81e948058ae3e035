"""End-to-end synthetic generation on a tiny set: counts, rig, images vs rendered alpha, resume, config safety.

The tiny set (3 identities × 2 expressions × 28 cameras at 16×16, few Gaussians) is generated
once per session through :class:`SyntheticDataModule`, so the DataModule tests reuse it.

Re-rendering a sample is compared with a tolerance, not bit for bit: the torch rasteriser groups
tiles after an unstable sort, so float rounding (and a rare 1/255-threshold flip at a silhouette
pixel) can differ between two renders of the same Gaussians in one process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from avatar_lightning.io import load_image
from avatar_lightning.synth import generate as gen_mod
from avatar_lightning.synth import layout
from avatar_lightning.synth.config import ConfigMismatchError, GeneratorConfig
from avatar_lightning.synth.rig import Rig
from data_modules.synthetic import SyntheticDataModule

TINY = dict(identities=3, expressions=2, image_size=16, cameras=28, views=3, val_identities=1, test_identities=1,
            uv_size=16, batch_size=2, surface_points=1500, texture_size=64, hair_density=0.15)


@pytest.fixture(scope="session")
def tiny_dm(tmp_path_factory) -> SyntheticDataModule:
    # A fixed folder under the session's base temp: the DataModule tests import this fixture into
    # their module (a second fixture instance), which then finds the dataset and UV cache complete.
    dm = SyntheticDataModule(root=str(tmp_path_factory.getbasetemp() / "synth_tiny"), **TINY)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def assert_close_images(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to PNG quantisation, except for a rare silhouette pixel (see the module docstring)."""
    diff = (a - b).abs()
    assert float(diff.mean()) <= 1.0 / 255
    assert float((diff > 1.0 / 255).float().mean()) <= 0.03 and float(diff.max()) <= 0.15


def _files(root: Path) -> list[str]:
    """Generated files (the DataModule's UV-input cache and the lock excluded)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != ".lock" and not str(p.relative_to(root)).startswith("uv_cache"))


def test_counts_manifest_and_rig(tiny_dm: SyntheticDataModule) -> None:
    root, cfg = tiny_dm.data_dir, tiny_dm.config
    manifest = json.loads((root / layout.MANIFEST).read_text())
    assert manifest["complete"] and manifest["config_hash"] == cfg.hash() == root.name
    assert manifest["counts"]["images"] == 3 * 2 * 28
    assert len(list(root.glob("identities/*/e*/rgb/*.png"))) == 3 * 2 * 28
    assert len(list(root.glob("identities/*/e*/mask/*.png"))) == 3 * 2 * 28
    for i in range(3):
        assert {p.name for p in layout.identity_dir(root, i).iterdir()} >= {"appearance.json", "texture.png", "hair.pt"}
    rig = Rig.from_dict(json.loads((root / layout.CAMERAS).read_text()))
    assert rig.n == 28 and int(rig.frontal.sum()) == 14
    # Every camera looks at the head: the rig target projects to the image centre.
    cam = torch.einsum("cij,j->ci", rig.world_to_cam[:, :3, :3], rig.target) + rig.world_to_cam[:, :3, 3]
    pix = torch.einsum("cij,cj->ci", rig.K, cam)
    assert torch.allclose(pix[:, :2] / pix[:, 2:], torch.full((28, 2), 8.0), atol=1e-3)
    params = torch.load(layout.sample_dir(root, 0, 1) / "params.pt")
    assert params["shape"].shape == (cfg.n_shape,) and params["expr"].shape == (cfg.n_expr,)
    assert params["pose"].shape == (5, 3) and bool(params["expr"].abs().sum() > 0)
    assert float(torch.load(layout.sample_dir(root, 0, 0) / "params.pt")["expr"].abs().sum()) == 0  # neutral


def test_images_vary_and_masks_are_the_rendered_alpha(tiny_dm: SyntheticDataModule) -> None:
    from avatar_lightning.render import Cameras, rasterize
    from avatar_lightning.synth.avatar import avatar_gaussians

    root = tiny_dm.data_dir
    ctx = gen_mod._make_context(tiny_dm.config, root)
    assets = ctx.identity(1)
    params = torch.load(layout.sample_dir(root, 1, 1) / "params.pt")
    with torch.no_grad():
        verts = ctx.head(params["shape"][None], params["expr"][None], params["pose"][None],
                         params["translation"][None]).vertices[0]
        g = avatar_gaussians(verts, ctx.head.faces, assets.surface, assets.texture, assets.hair, assets.appearance)
        cams = Cameras(K=ctx.rig.K, world_to_cam=ctx.rig.world_to_cam, width=16, height=16)
        out = rasterize(g, cams, background=params["background"])
    masks = torch.stack([load_image(layout.image_path(root, 1, 1, c, "mask")) for c in range(28)])
    images = torch.stack([load_image(layout.image_path(root, 1, 1, c, "rgb"))[:3] for c in range(28)])
    assert_close_images(masks, out.alpha)
    assert_close_images(images, out.rgb.clamp(0, 1))
    assert bool((masks > 0.99).any()) and bool((masks < 0.01).any())  # head and background both present
    assert float(images.std()) > 0.05 and float(images[:, :, 4:12, 4:12].std(dim=(1, 2, 3)).min()) > 0.005
    other = load_image(layout.image_path(root, 0, 1, 3, "rgb"))[:3]
    assert float((other - images[3]).abs().mean()) > 0.02  # another identity looks different


def test_resume_after_a_crash_rerenders_only_the_unfinished_sample(tiny_dm, tmp_path, monkeypatch) -> None:
    src, cfg = tiny_dm.data_dir, tiny_dm.config
    root = tmp_path / "copy"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("uv_cache_*", ".lock"))
    sample = layout.sample_dir(root, 2, 1)
    (sample / "done.json").unlink()
    for path in list((sample / "rgb").glob("*.png"))[:5]:
        path.unlink()
    (sample / "rgb" / ".c03.png.stale123.png").write_bytes(b"half a png")  # temp file of a killed writer

    calls = {"n": 0}
    real_save = gen_mod.save_image

    def crashing_save(path, image):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated kill mid-sample")
        real_save(path, image)

    monkeypatch.setattr(gen_mod, "save_image", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        gen_mod.generate(cfg, root, progress=False)
    assert not (sample / "done.json").exists()
    assert not [p for p in root.rglob(".*") if p.name != ".lock" and p.is_file() and p.name.endswith(".png")][1:]
    monkeypatch.setattr(gen_mod, "save_image", real_save)
    rendered = []
    real_render = gen_mod.render_sample
    monkeypatch.setattr(gen_mod, "render_sample", lambda ctx, i, e: rendered.append((i, e)) or real_render(ctx, i, e))
    manifest = gen_mod.generate(cfg, root, progress=False)
    assert rendered == [(2, 1)] and manifest["complete"] and manifest["content_hash"]
    assert not [p for p in root.rglob(".*") if p.name != ".lock"]
    assert _files(root) == _files(src)
    for name in _files(src):  # untouched samples are byte-identical, the re-rendered one matches
        if not name.startswith("identities/i00002/e001/"):
            assert name.endswith("manifest.json") or (root / name).read_bytes() == (src / name).read_bytes(), name
        elif name.endswith(".png"):
            assert_close_images(load_image(root / name), load_image(src / name))
        elif name.endswith(".pt"):  # torch.save bytes embed the temp-file name; compare the tensors
            new, old = torch.load(root / name), torch.load(src / name)
            assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)


def test_another_config_is_never_silently_reused(tiny_dm, tmp_path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(tiny_dm.data_dir, root, ignore=shutil.ignore_patterns("uv_cache_*", ".lock"))
    other = GeneratorConfig(**{**tiny_dm.config.__dict__, "seed": 1})
    with pytest.raises(ConfigMismatchError, match="seed"):
        gen_mod.generate(other, root, progress=False)
    # The DataModule keys its folder by config instead: another seed means another folder.
    dm = SyntheticDataModule(root=str(tiny_dm.data_dir.parent), **{**TINY, "seed": 1})
    assert dm.data_dir != tiny_dm.data_dir


def test_cli_help_documents_the_options() -> None:
    out = subprocess.run([sys.executable, "-m", "avatar_lightning.synth", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--out", "--identities", "--expressions", "--image-size", "--cameras", "--seed", "--head-model",
                 "--workers"):
        assert flag in out


@pytest.mark.slow
def test_killed_cli_run_resumes_to_the_same_content(tiny_dm, tmp_path) -> None:
    """Kill a real generator process mid-run (SIGKILL: no cleanup at all), then resume it."""
    cfg = tiny_dm.config.resolved()
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "avatar_lightning.synth", "--out", str(out), "--identities", "3", "--expressions", "2",
           "--image-size", "16", "--cameras", "28", "--surface-points", str(cfg.surface_points),
           "--hair-density", str(cfg.hair_density), "--texture-size", "64", "--no-progress"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not list(out.glob("identities/*/e*/done.json")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not json.loads((out / layout.MANIFEST).read_text())["complete"]
    subprocess.run(cmd, check=True)
    manifest = json.loads((out / layout.MANIFEST).read_text())
    assert manifest["complete"] and manifest["config_hash"] == tiny_dm.config.hash()
    assert not [p for p in out.rglob(".*") if p.name != ".lock"]
    assert _files(out) == _files(tiny_dm.data_dir)
    for name in _files(tiny_dm.data_dir):
        if name.endswith(".png"):
            assert_close_images(load_image(out / name), load_image(tiny_dm.data_dir / name))
