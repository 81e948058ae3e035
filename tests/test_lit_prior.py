"""SynShotPrior, the render step and the UV binding on the built-in head, at tiny sizes on CPU."""

from __future__ import annotations

import math

import pytest
import torch

from avatar_lightning.batch import validate_batch
from avatar_lightning.head.gaussians import MeshBinding
from avatar_lightning.head.model import load_head_model
from avatar_lightning.head.uv import texel_grid, uv_rasterize
from avatar_lightning.lit.render_step import pose_gaussians, render_batch
from avatar_lightning.lit.synshot_prior import SynShotPrior
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


def test_render_batch_poses_gaussians_with_the_mesh_pose_correctives(head, monkeypatch) -> None:
    """What render_batch rasterises sits on the posed mesh the data was rendered with: Gaussians bound at
    vertices follow them through a jaw opening, pose correctives included."""
    from avatar_lightning.lit import render_step

    seen = []
    monkeypatch.setattr(render_step, "rasterize", lambda g, *a, **k: seen.append(g))
    batch = tiny_batch(head, b=1)
    batch["pose"][0, 2, 0] = 0.4  # open the jaw
    faces = head.faces
    binding = MeshBinding(face=torch.arange(len(faces)), bary=torch.tensor([1.0, 0, 0]).expand(len(faces), 3))
    canonical = head.canonical(batch["shape"], batch["expr"])[:, faces[:, 0]]  # each face's first vertex
    render_batch(batch, _gaussians(canonical), binding, head, backend="torch")
    mesh = head(batch["shape"], batch["expr"], batch["pose"], batch["translation"])
    assert mesh.pose_offsets.norm(dim=-1).max() > 1e-3
    torch.testing.assert_close(seen[0].means, mesh.vertices[:, faces[:, 0]], atol=1e-6, rtol=0)


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
    outputs = model(batch)
    assembled, render = outputs.assembled, outputs.render
    n = sum(assembled.counts.values())
    assert assembled.gaussians.means.shape == (2, n, 3) and assembled.gaussians.sh.shape == (2, n, 16, 3)
    assert set(assembled.counts) == {"face", "hair"} and render.rgb.shape == (2, 2, 3, 24, 24)
    terms = model.compute_losses(batch, outputs)
    assert {"loss", "image", "geometry", "vq", "reg", "map_tex"} <= set(terms)
    assert all(torch.isfinite(t) for t in terms.values())
    terms["loss"].backward()
    for name, module in model.net.paper_modules().items():
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name


def _with_maps(outputs, **maps):
    from dataclasses import replace

    return replace(outputs, net=replace(outputs.net, maps=replace(outputs.net.maps, **maps)))


def test_geometry_maps_are_supervised_in_cm_over_the_uv_layout(head, prior) -> None:
    """Predicting zero geometry is not free (L1 in cm), and texels outside the UV layout do not count."""
    from avatar_lightning.head.uv import expression_map, position_map

    batch = tiny_batch(head)
    raster = uv_rasterize(head.uv_coords, head.uv_faces, 16)
    batch["uv_position"] = position_map(raster, head.canonical(batch["shape"], torch.zeros_like(batch["expr"])),
                                        head.faces)
    batch["uv_expression"] = expression_map(head, raster, batch["expr"])
    with torch.no_grad():
        outputs = prior(batch)
        out = outputs.net
        exact = prior.compute_losses(batch, _with_maps(outputs, verts=batch["uv_position"],
                                                       expr=batch["uv_expression"]))
        zeros = prior.compute_losses(batch, _with_maps(outputs, verts=torch.zeros_like(out.maps.verts),
                                                       expr=torch.zeros_like(out.maps.expr)))
        assert exact["geometry"] == 0
        # the mean distance of in-layout surface points from the origin, in cm: several cm, not 1e-4
        inside = raster.valid.expand(2, 3, -1, -1)
        expected = 100 * batch["uv_position"].abs()[inside].mean() + 100 * batch["uv_expression"].abs()[inside].mean()
        torch.testing.assert_close(zeros["geometry"], expected)
        assert zeros["geometry"] > 3.0 and zeros["loss"] - exact["loss"] > 3.0
        # anything outside the layout, in the prediction or the target, changes no loss term
        outside = ~raster.valid
        noisy = {k: batch[k] + 5 * torch.randn_like(batch[k]) * outside for k in ("uv_position", "uv_expression",
                                                                                   "uv_texture")}
        pred = _with_maps(outputs, verts=batch["uv_position"] - 7 * outside,
                          expr=batch["uv_expression"] + 3 * outside, tex=out.maps.tex + 2 * outside)
        moved = prior.compute_losses({**batch, **noisy}, pred)
        same = prior.compute_losses(batch, _with_maps(outputs, verts=batch["uv_position"],
                                                      expr=batch["uv_expression"]))
    assert moved["geometry"] == 0
    for key in ("map_tex", "geometry_verts", "geometry_expr"):
        torch.testing.assert_close(moved[key], same[key], msg=key)


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
    from avatar_lightning.lit import render_step
    from avatar_lightning.lit.render_step import head_centre

    batch = tiny_batch(head)
    mesh = head(batch["shape"][:1], batch["expr"][:1], batch["pose"][:1], batch["translation"][:1])
    torch.testing.assert_close(head_centre(batch, head), mesh.vertices[0].mean(0))
    seen = []
    real = render_step.orbit_cameras
    monkeypatch.setattr(render_step, "orbit_cameras", lambda *a, **k: seen.append(k["target"]) or real(*a, **k))
    prior.turntable(batch, frames=2)
    original = prior.assembler.forward

    def stray(net, maps):
        out = original(net, maps)
        out.gaussians.means[:, 0] = 10.0
        return out

    monkeypatch.setattr(prior.assembler, "forward", stray)
    prior.turntable(batch, frames=2)
    torch.testing.assert_close(seen[0], seen[1])


def _region_count(head, part: str, size: int) -> int:
    """Texels of ``part``'s region (``"all"``: the whole UV layout) on a size² raster."""
    from avatar_lightning.head.uv import part_masks

    raster = uv_rasterize(head.uv_coords, head.uv_faces, size)
    return int(raster.valid.sum()) if part == "all" else int((part_masks(raster, head)[part] > 0.5).sum())


def test_prior_ablations_change_the_gaussian_layout(head) -> None:
    """Exact counts: each part keeps the texels of its region at its own grid side; the single layer
    samples the whole layout once at the smaller side (fewer Gaussians, as Table 1 says); "No Sampling"
    keeps one Gaussian per in-layout texel of the map."""
    parts = _prior()
    assert parts.assembler.parts == ("face", "hair")
    assert parts.assembler.grid("face").uv.shape[:2] == (10, 10) and parts.assembler.grid("hair").uv.shape[:2] == (8, 8)
    n_face, n_hair = (parts.assembler.grid(p).num_gaussians for p in ("face", "hair"))
    assert (n_face, n_hair) == (_region_count(head, "face", 10), _region_count(head, "hair", 8))
    single = _prior(net={**TINY_NET, "single_layer": True})
    assert single.assembler.parts == ("all",) and single.assembler.grid("all").uv.shape[:2] == (8, 8)
    assert single.assembler.grid("all").num_gaussians == _region_count(head, "all", 8) < n_face + n_hair
    texel = _prior(net={**TINY_NET, "no_sampling": True})
    grid = texel.assembler.grid("all")
    assert grid.num_gaussians == _region_count(head, "all", 16)
    torch.testing.assert_close(grid.uv, texel_grid(16))


@pytest.mark.parametrize("ablation", [{}, {"single_layer": True}])
def test_gaussian_counts_do_not_depend_on_the_map_resolution(head, ablation) -> None:
    from avatar_lightning.lit.assemble import GaussianAssembler
    from avatar_lightning.models import SynShotNet

    parts = SynShotNet(**{**TINY_NET, **ablation}).parts
    counts = {res: [GaussianAssembler(head, parts, {"face": 64, "hair": 48}, res).grid(p).num_gaussians
                    for p in parts] for res in (16, 64, 512)}
    assert counts[16] == counts[64] == counts[512]


def test_single_layer_ablation_config_has_fewer_gaussians_than_the_paper_config(head) -> None:
    """experiments/ablations/single_layer.yaml against prior_paper.yaml, at their own part grids."""
    from pathlib import Path

    import yaml

    def part_samples(name: str) -> dict[str, int]:
        with open(Path(__file__).parents[1] / "experiments" / name) as f:
            return yaml.safe_load(f)["model"]["init_args"]["part_samples"]

    paper, single = part_samples("prior_paper.yaml"), part_samples("ablations/single_layer.yaml")
    two_layers = sum(_region_count(head, p, size) for p, size in paper.items())
    assert set(paper) == {"face", "hair"} and set(single) == {"all"}
    assert _region_count(head, "all", single["all"]) < two_layers


def test_prior_step_under_bf16_autocast(head, prior) -> None:
    batch = tiny_batch(head)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = prior(batch)
        terms = prior.compute_losses(batch, outputs)
    assert outputs.net.maps.feat.dtype == torch.bfloat16  # the network did run in bf16
    assert outputs.render.rgb.dtype == torch.float32 and torch.isfinite(terms["loss"])
    terms["loss"].backward()


def test_assembler_geometry_is_float32_under_bf16_at_a_512_grid(head) -> None:
    """A bf16 decoder under autocast must give the Gaussians of the same maps in float32: same means,
    same nearest-neighbour scales, none collapsed to the 1e-5 floor, at the paper's 512² part grid
    (the scalp part alone: 57k Gaussians, a few seconds on a CPU)."""
    from types import SimpleNamespace

    from avatar_lightning.head.uv import position_map
    from avatar_lightning.lit.assemble import GaussianAssembler
    from avatar_lightning.models import GaussianOffsets, PartPrediction, PriorMaps

    class ZeroRegressors:  # stands in for SynShotNet: zero offsets in bf16, as a zero-initialised R_gauss gives
        config = SimpleNamespace(color_from_texture=False)

        def regress(self, part, s):
            z = torch.zeros(s.shape[0], 1, *s.shape[-2:], dtype=torch.bfloat16)
            return PartPrediction(sh=z[:, None].expand(-1, 1, 3, -1, -1),
                                  offsets=GaussianOffsets(z.expand(-1, 3, -1, -1), z.expand(-1, 4, -1, -1),
                                                          z.expand(-1, 3, -1, -1), z))

    raster = uv_rasterize(head.uv_coords, head.uv_faces, 64)
    verts = head.canonical(torch.zeros(1, head.n_shape), torch.zeros(1, head.n_expr))
    pos = position_map(raster, verts, head.faces).to(torch.bfloat16)  # what a bf16 D_id hands over
    maps = PriorMaps(feat=torch.zeros(1, 2, 64, 64, dtype=torch.bfloat16), tex=pos, verts=pos, expr=pos, position=pos)
    assembler = GaussianAssembler(head, ("hair",), {"hair": 512}, map_resolution=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = assembler(ZeroRegressors(), maps).gaussians
    full = assembler(ZeroRegressors(), PriorMaps(*(m.float() for m in vars(maps).values()))).gaussians
    assert low.num_gaussians > 50_000 and low.means.dtype == torch.float32
    torch.testing.assert_close(low.means, full.means, atol=1e-7, rtol=0)
    torch.testing.assert_close(low.scales, full.scales, atol=1e-7, rtol=0)
    assert (low.scales > 1e-5).all(), "neighbouring samples coincided"


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
