"""SynShotPrior, the render step and the UV binding on the built-in head, at tiny sizes on CPU."""

from __future__ import annotations

import math

import pytest
import torch

from avatar_lightning.batch import validate_batch
from avatar_lightning.head.model import load_head_model
from avatar_lightning.head.uv import uv_rasterize
from avatar_lightning.lit.render_step import MeshBinding, pose_gaussians, render_batch
from avatar_lightning.lit.synshot_prior import SynShotPrior
from avatar_lightning.models import texel_grid
from avatar_lightning.render import Gaussians, intrinsics_from_fov, orbit_cameras, quat_to_rotmat

TINY_NET = {
    "map_resolution": 16, "latent_resolution": 4, "feature_channels": 8, "id_code_dim": 4, "expr_code_dim": 4,
    "id_codebook_size": 16, "expr_codebook_size": 16, "channels": 8, "max_channels": 16,
    "transformer_width": 16, "transformer_heads": 2, "transformer_depth": 1, "regressor_hidden": 8,
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def head():
    return load_head_model("builtin")


def tiny_batch(head, b: int = 2, v: int = 2, size: int = 24, res: int = 16) -> dict[str, torch.Tensor]:
    """A schema batch around the built-in head (random UV maps; the geometry maps need not match)."""
    torch.manual_seed(0)
    cams = orbit_cameras(v, radius=0.6, arc_deg=60.0, start_azimuth_deg=-30.0)
    return {
        "image": torch.rand(b, v, 3, size, size), "mask": torch.ones(b, v, 1, size, size),
        "K": intrinsics_from_fov(torch.tensor(30.0), size, size).expand(b, v, 3, 3).clone(),
        "world_to_cam": cams.expand(b, v, 4, 4).clone(),
        "shape": 0.1 * torch.randn(b, head.n_shape), "expr": 0.1 * torch.randn(b, head.n_expr),
        "pose": torch.zeros(b, 5, 3), "translation": torch.zeros(b, 3),
        "identity": torch.arange(b), "frame": torch.zeros(b, dtype=torch.long), "background": torch.ones(b, 3),
        "uv_texture": torch.rand(b, 3, res, res), "uv_position": 0.1 * torch.randn(b, 3, res, res),
        "uv_expression": 0.01 * torch.randn(b, 3, res, res),
    }


def _binding(head, size: int) -> MeshBinding:
    """Every covered texel of a size² UV raster, bound to its triangle."""
    raster = uv_rasterize(head.uv_coords, head.uv_faces, size)
    return MeshBinding(raster.face[raster.valid], raster.bary[raster.valid])


def _gaussians(means: torch.Tensor) -> Gaussians:
    n = means.shape[1]
    return Gaussians(means=means, quats=torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4),
                     scales=torch.full((1, n, 3), 0.01), opacities=torch.full((1, n), 0.7), sh=torch.zeros(1, n, 1, 3))


def test_pose_follows_a_rigid_head_motion(head) -> None:
    b = _binding(head, 12)
    shape, expr = torch.zeros(1, head.n_shape), torch.zeros(1, head.n_expr)
    canonical_mesh = head.canonical(shape, expr)
    means = (canonical_mesh[:, head.faces[b.face]] * b.bary[None, :, :, None]).sum(2)  # points on the surface
    g = _gaussians(means)
    rest = head(shape, expr)
    posed_rest = pose_gaussians(g, rest.vertex_transforms, head.faces, b)
    torch.testing.assert_close(posed_rest.means, means, atol=1e-5, rtol=0)  # identity pose: unchanged
    angle = 0.4
    pose = torch.zeros(1, 5, 3)
    pose[0, 0, 1] = angle  # global yaw about the root joint
    t = torch.tensor([[0.1, -0.05, 0.2]])
    out = head(shape, expr, pose, t)
    posed = pose_gaussians(g, out.vertex_transforms, head.faces, b)
    rot = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    root = out.joints[0, 0] - t[0]  # rotation centre = rest root joint
    expected = (means[0] - root) @ rot.T + root + t[0]
    torch.testing.assert_close(posed.means[0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(quat_to_rotmat(posed.quats[0]), rot.expand(b.face.shape[0], 3, 3), atol=1e-5, rtol=0)


def test_render_batch_shapes(head) -> None:
    batch = tiny_batch(head, b=1)
    b = _binding(head, 8)
    mesh = head.canonical(batch["shape"], batch["expr"])
    means = (mesh[:, head.faces[b.face]] * b.bary[None, :, :, None]).sum(2)
    out = render_batch(batch, _gaussians(means), b, head, backend="torch")
    assert out.rgb.shape == (1, 2, 3, 24, 24) and out.alpha.shape == (1, 2, 1, 24, 24)
    assert out.alpha.max() > 0.1  # the head is in view


def _prior(**kwargs) -> SynShotPrior:
    args = {"net": TINY_NET, "part_samples": {"face": 10, "hair": 8}, "lr": 1e-3, "render_backend": "torch"}
    return SynShotPrior(**{**args, **kwargs})


@pytest.fixture(scope="module")
def prior() -> SynShotPrior:
    return _prior()


def test_prior_step_shapes_losses_and_gradients(head, prior) -> None:
    model = prior
    batch = tiny_batch(head)
    validate_batch(batch, require_uv=True)
    out, assembled, render = model(batch)
    n = sum(assembled.counts.values())
    assert assembled.gaussians.means.shape == (2, n, 3) and assembled.gaussians.sh.shape == (2, n, 16, 3)
    assert set(assembled.counts) == {"face", "hair"} and render.rgb.shape == (2, 2, 3, 24, 24)
    terms = model.losses(batch, out, assembled, render)
    assert {"loss", "image", "geometry", "vq", "reg", "map_tex"} <= set(terms)
    assert all(torch.isfinite(t) for t in terms.values())
    terms["loss"].backward()
    for name, module in model.net.paper_modules().items():
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name


def test_prior_log_images(head, prior) -> None:
    images = prior.log_images(tiny_batch(head))
    assert images["views"].shape == (6, 3, 24, 24) and images["maps"].shape == (6, 3, 16, 16)
    assert all(v.min() >= 0 and v.max() <= 1 for v in images.values())


def test_prior_turntable(head, prior) -> None:
    frames = prior.turntable(tiny_batch(head), frames=4)
    assert frames.shape == (4, 3, 24, 24) and frames.min() >= 0 and frames.max() <= 1
    assert not torch.allclose(frames[0], frames[2])  # front and back views differ


def test_turntable_centre_ignores_stray_gaussians(head, prior, monkeypatch) -> None:
    """The orbit looks at the head mesh: one Gaussian thrown 10 m away must not move the framing."""
    from avatar_lightning.lit import synshot_prior
    from avatar_lightning.lit.render_step import head_centre

    batch = tiny_batch(head)
    mesh = head(batch["shape"][:1], batch["expr"][:1], batch["pose"][:1], batch["translation"][:1])
    torch.testing.assert_close(head_centre(batch, head), mesh.vertices[0].mean(0))
    seen = []
    real = synshot_prior.orbit_cameras
    monkeypatch.setattr(synshot_prior, "orbit_cameras", lambda *a, **k: seen.append(k["target"]) or real(*a, **k))
    prior.turntable(batch, frames=2)
    original = prior.assembler.forward

    def stray(net, maps):
        out = original(net, maps)
        out.gaussians.means[:, 0] = 10.0
        return out

    monkeypatch.setattr(prior.assembler, "forward", stray)
    prior.turntable(batch, frames=2)
    torch.testing.assert_close(seen[0], seen[1])


def test_prior_ablations_change_the_gaussian_layout(head) -> None:
    parts = _prior()
    assert parts.assembler.parts == ("face", "hair")
    assert parts.assembler.grid("face").uv.shape[:2] == (10, 10) and parts.assembler.grid("hair").uv.shape[:2] == (8, 8)
    n_face, n_hair = (parts.assembler.grid(p).num_gaussians for p in ("face", "hair"))
    assert 0 < n_hair < 64 and 0 < n_face < 100
    single = _prior(net={**TINY_NET, "single_layer": True})
    assert single.assembler.parts == ("all",) and single.assembler.grid("all").uv.shape[:2] == (10, 10)
    # one Gaussian per texel of the 16² map that lies inside the UV layout
    texel = _prior(net={**TINY_NET, "no_sampling": True})
    grid = texel.assembler.grid("all")
    assert grid.uv.shape[:2] == (16, 16) and 0 < grid.num_gaussians < 256
    torch.testing.assert_close(grid.uv, texel_grid(16))


def test_prior_step_under_bf16_autocast(head, prior) -> None:
    batch = tiny_batch(head)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, assembled, render = prior(batch)
        terms = prior.losses(batch, out, assembled, render)
    assert out.maps.feat.dtype == torch.bfloat16  # the network did run in bf16
    assert render.rgb.dtype == torch.float32 and torch.isfinite(terms["loss"])
    terms["loss"].backward()


def test_color_from_texture_starts_at_the_decoded_texture(head) -> None:
    from avatar_lightning.models.densify import sample_part
    from avatar_lightning.render.sh import sh_to_rgb

    model = _prior(net={**TINY_NET, "color_from_texture": True})
    batch = tiny_batch(head)
    out = model.net(batch["uv_texture"], batch["uv_position"], batch["uv_expression"])
    assembled = model.assembler(model.net, out.maps)
    expected = torch.cat([sample_part(out.maps.tex, model.assembler.grid(p)).permute(0, 2, 3, 1)[
        :, model.assembler.grid(p).valid] for p in model.net.parts], dim=1)  # [B, N, 3]
    sh = assembled.gaussians.sh
    torch.testing.assert_close(sh_to_rgb(sh[:, :, 0]), expected, atol=1e-5, rtol=0)
    assert sh[:, :, 1:].abs().max() == 0  # the residual starts at zero
    # and gradients reach D_id (the texture branch) through the render colours
    prior_loss = assembled.gaussians.sh[:, :, 0].sum()
    prior_loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.dec_id.parameters())
