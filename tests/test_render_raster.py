"""The torch rasteriser against the dense float64 reference: forward, gradients, batching, memory knobs."""

from __future__ import annotations

import pytest
import torch

from avatar_lightning.render import Cameras, Gaussians, look_at, raster_torch, rasterize
from tests.render_reference import dense_render

FIELDS = ("means", "quats", "scales", "opacities", "sh")


def make_scene(n: int = 60, seed: int = 0, sh_k: int = 16, spread: float = 0.6, opacity=(0.2, 0.95),
               dtype=torch.float64) -> Gaussians:
    """Anisotropic Gaussians (axis ratios up to ~20) around the origin."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=gen, dtype=dtype)  # noqa: E731
    scales = 0.01 + 0.12 * r(n, 3) ** 2
    return Gaussians(means=(r(n, 3) - 0.5) * 2 * spread, quats=torch.randn(n, 4, generator=gen, dtype=dtype),
                     scales=scales, opacities=opacity[0] + (opacity[1] - opacity[0]) * r(n),
                     sh=0.6 * torch.randn(n, sh_k, 3, generator=gen, dtype=dtype))


def make_cameras(width: int = 37, height: int = 29, dtype=torch.float64, **kw) -> Cameras:
    """Three cameras with off-centre principal points and different focal lengths."""
    eyes = torch.tensor([[0.0, 0.0, 2.5], [1.6, 0.4, 1.8], [-1.2, -0.8, 1.9]], dtype=dtype)
    w2c = look_at(eyes, torch.zeros(3, 3, dtype=dtype), torch.tensor([0.0, 1.0, 0.0], dtype=dtype).expand(3, 3))
    K = torch.zeros(3, 3, 3, dtype=dtype)
    K[:, 0, 0] = torch.tensor([40.0, 55.0, 33.0])
    K[:, 1, 1] = torch.tensor([42.0, 50.0, 36.0])
    K[:, 0, 2] = torch.tensor([0.42, 0.5, 0.61]) * width
    K[:, 1, 2] = torch.tensor([0.58, 0.45, 0.5]) * height
    K[:, 2, 2] = 1
    return Cameras(K=K, world_to_cam=w2c, width=width, height=height, **kw)


def with_hard_cases(g: Gaussians) -> Gaussians:
    """Add Gaussians behind camera 0, between it and `near`, far off-screen (clamp limits), huge, opaque."""
    dt = g.means.dtype
    means = torch.tensor([[0.0, 0.0, 3.0],  # behind camera 0 (at z=2.5 looking at -z)
                          [0.0, 0.0, 2.495],  # 5 mm in front of camera 0: z < near = 0.01
                          [3.0, 0.2, 0.0],  # far outside the view: Jacobian clamped
                          [-2.0, 1.5, -0.5],
                          [0.1, -0.1, 0.2],  # big and soft
                          [0.05, -0.05, 0.8]], dtype=dt)  # opacity 1: the 0.99 cap binds near its centre
    extra = Gaussians(means=means, quats=torch.tensor([[1.0, 0.2, -0.3, 0.1]], dtype=dt).expand(6, 4),
                      scales=torch.tensor([[0.3, 0.05, 0.2]] * 4 + [[0.6, 0.4, 0.5], [0.15, 0.2, 0.1]], dtype=dt),
                      opacities=torch.tensor([0.9, 0.9, 0.8, 0.8, 0.3, 1.0], dtype=dt),
                      sh=0.5 * torch.ones(6, g.sh.shape[1], 3, dtype=dt))
    return Gaussians.cat([g, extra])


def leaves(g: Gaussians) -> Gaussians:
    return g.map(lambda t: t.detach().clone().requires_grad_(True))


def loss_weights(out, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in (out.rgb, out.alpha, out.depth)]


def weighted(out, ws) -> torch.Tensor:
    return sum((t * w).sum() for t, w in zip((out.rgb, out.alpha, out.depth), ws, strict=True))


def assert_forward_close(out, ref, atol: float = 1e-5) -> None:
    for name in ("rgb", "alpha", "depth"):
        a, b = getattr(out, name), getattr(ref, name)
        assert a.shape == b.shape, name
        err = (a - b).abs().max().item()
        assert err < atol, f"{name}: max abs error {err:.3g}"


def assert_grads_close(g_fast: Gaussians, g_ref: Gaussians, rtol: float = 1e-3) -> None:
    for f in FIELDS:
        a, b = getattr(g_fast, f).grad, getattr(g_ref, f).grad
        assert b.abs().max() > 0, f"{f}: reference gradient is zero, the test would be vacuous"
        rel = ((a - b).norm() / b.norm()).item()
        assert rel < rtol, f"{f}: relative gradient error {rel:.3g}"


def compare(g: Gaussians, cams: Cameras, bg=None, **kw):
    """Forward + gradient parity of the torch backend against the dense reference; returns ref."""
    gf, gr = leaves(g), leaves(g)
    out = rasterize(gf, cams, background=bg, backend="torch", **kw)
    ref = dense_render(gr, cams, background=bg, **kw)
    assert_forward_close(out, ref)
    ws = loss_weights(out)
    weighted(out, ws).backward()
    weighted(ref, ws).backward()
    assert_grads_close(gf, gr)
    return ref


def test_parity_anisotropic_offcentre_multicamera_hard_cases():
    g = with_hard_cases(make_scene(50))
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    ref = compare(g, make_cameras(), bg)
    assert ref.alpha.amax() > 0.9 and ref.alpha.amin() < 0.1  # both covered and empty pixels


def test_parity_heavy_overlap_triggers_transmittance_stop():
    g = make_scene(80, seed=3, spread=0.15, opacity=(0.6, 1.0))  # some > 0.99: the α cap binds
    ref = compare(g, make_cameras())
    assert ref.stopped > 50, f"the 1e-4 transmittance stop fired on only {ref.stopped} pixels"


def test_parity_far_plane_and_sh_degree_override():
    g = make_scene(40, seed=5)
    cams = make_cameras(near=0.5, far=2.6)  # culls part of the cloud for every camera
    compare(g, cams, sh_degree=1)


@pytest.mark.parametrize(("tile_size", "segment"), [(raster_torch.TILE_SIZE, 3), (16, 16)])
def test_segments_tiles_and_tiny_budget_match_default(monkeypatch, tile_size, segment):
    """Short segments, 4-tile groups and another tile size change nothing."""
    g = make_scene(80, seed=3, spread=0.15, opacity=(0.6, 0.99))
    cams = make_cameras()
    gf = leaves(g)
    out = rasterize(gf, cams, backend="torch")
    ws = loss_weights(out)
    weighted(out, ws).backward()
    monkeypatch.setattr(raster_torch, "DEFAULT_SEGMENT", segment)
    monkeypatch.setattr(raster_torch, "DEFAULT_BUDGET", 4 * tile_size**2 * segment)  # 4 tiles per group
    monkeypatch.setattr(raster_torch, "TILE_SIZE", tile_size)
    gs = leaves(g)
    out_s = rasterize(gs, cams, backend="torch")
    weighted(out_s, ws).backward()
    assert_forward_close(out_s, out, atol=1e-12)
    assert_grads_close(gs, gf, rtol=1e-9)


def test_batched_avatars_with_own_cameras():
    g1, g2 = make_scene(30, seed=7), make_scene(30, seed=8)
    c1, c2 = make_cameras(), make_cameras()
    c2 = Cameras(K=c2.K * torch.tensor([1.1, 1.1, 1.0], dtype=torch.float64)[:, None],
                 world_to_cam=c2.world_to_cam.flip(0), width=c2.width, height=c2.height)
    gb = Gaussians(**{f: torch.stack([getattr(g1, f), getattr(g2, f)]) for f in FIELDS})
    cb = Cameras(K=torch.stack([c1.K, c2.K]), world_to_cam=torch.stack([c1.world_to_cam, c2.world_to_cam]),
                 width=c1.width, height=c1.height)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]], dtype=torch.float64)
    out = rasterize(gb, cb, background=bg, backend="torch")
    assert out.rgb.shape == (2, 3, 3, c1.height, c1.width)
    for i, (g, c) in enumerate([(g1, c1), (g2, c2)]):
        ref = dense_render(g, c, background=bg[i])
        assert_forward_close(type(out)(out.rgb[i], out.alpha[i], out.depth[i]), ref)


def test_batched_gaussians_share_unbatched_cameras():
    g = make_scene(20, seed=9)
    gb = g.map(lambda t: torch.stack([t, t.flip(0)]))
    out = rasterize(gb, make_cameras(), backend="torch")
    single = rasterize(g, make_cameras(), backend="torch")
    assert out.rgb.shape[:2] == (2, 3)
    torch.testing.assert_close(out.rgb[0], single.rgb)
    torch.testing.assert_close(out.alpha[1], single.alpha)  # same set, other order


def test_gradcheck_tiny_scene():
    """float64 gradcheck w.r.t. every Gaussian field, the background and the cameras."""
    g = make_scene(4, seed=11, sh_k=4, spread=0.2, opacity=(0.3, 0.8))
    cams = make_cameras(width=9, height=7)[:2]
    K = cams.K * torch.tensor([0.25, 0.25, 1.0], dtype=torch.float64)[:, None]

    def fn(*xs):
        c = Cameras(K=xs[6], world_to_cam=xs[7], width=9, height=7)
        out = rasterize(Gaussians(*xs[:5]), c, background=xs[5], backend="torch")
        return out.rgb, out.alpha, out.depth

    bg = torch.tensor([0.3, 0.1, 0.6], dtype=torch.float64)
    inputs = (*(getattr(leaves(g), f) for f in FIELDS),
              *(t.clone().requires_grad_(True) for t in (bg, K, cams.world_to_cam)))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_float32_close_to_float64_reference():
    g = make_scene(50, seed=2)
    cams = make_cameras()
    ref = dense_render(g, cams)
    out = rasterize(g.to(torch.float32), cams.to(torch.float32), backend="torch")
    assert out.rgb.dtype == torch.float32
    assert_forward_close(out, ref, atol=2e-4)


def test_empty_and_fully_culled():
    g = make_scene(5)
    g = Gaussians(g.means + torch.tensor([0.0, 0.0, 10.0], dtype=torch.float64), g.quats, g.scales,
                  g.opacities, g.sh)  # all behind camera 0
    cams = make_cameras()[:1]
    out = rasterize(g, cams, background=torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64), backend="torch")
    assert torch.all(out.alpha == 0) and torch.all(out.rgb == 0.5) and torch.all(out.depth == 0)


def test_blocks_respect_the_budget_however_crowded_the_tile(monkeypatch):
    """Peak work memory is set by the budget: the most crowded tile is split, not materialised whole."""
    blocks, longest = [], []
    real_block, real_bin = raster_torch._composite_block, raster_torch.bin_gaussians

    def spy_block(feat, blk, trans, done):
        blocks.append(feat.shape[0] * blk.mu.numel())  # P · G · L elements of this block
        return real_block(feat, blk, trans, done)

    def spy_bin(*args):
        bins = real_bin(*args)
        longest.append(int(bins.count.max()))
        return bins

    budget = raster_torch.TILE_SIZE**2 * 8  # one tile of 8 Gaussians per block
    monkeypatch.setattr(raster_torch, "_composite_block", spy_block)
    monkeypatch.setattr(raster_torch, "bin_gaussians", spy_bin)
    monkeypatch.setattr(raster_torch, "DEFAULT_BUDGET", budget)
    monkeypatch.setattr(raster_torch, "DEFAULT_SEGMENT", 8)
    g = make_scene(80, seed=3, spread=0.15, opacity=(0.6, 1.0))
    rasterize(leaves(g), make_cameras(), backend="torch").rgb.sum().backward()
    assert longest[0] > 5 * 8  # the worst tile holds several blocks' worth of Gaussians
    assert max(blocks) <= budget


@pytest.mark.slow
def test_parity_larger_scene():
    """A denser, larger scene (slow: the reference loops over 400 Gaussians per camera)."""
    g = with_hard_cases(make_scene(400, seed=21, spread=0.4, opacity=(0.05, 1.0)))
    ref = compare(g, make_cameras(width=64, height=48), torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    assert ref.stopped > 100
