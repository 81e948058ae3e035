"""Backend selection and the CUDA backends (parity tests run only where CUDA exists: `-m gpu`)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from avatar_lightning.render import (
    Cameras,
    Gaussians,
    backends,
    intrinsics_from_fov,
    look_at,
    rasterize,
    resolve_backend,
)
from avatar_lightning.render.rasterize import choose_auto

HAS_CUDA = torch.cuda.is_available()


def scene(n: int = 300, opacity_max: float = 0.95, device: str = "cpu") -> tuple[Gaussians, Cameras]:
    gen = torch.Generator().manual_seed(0)
    g = Gaussians(means=0.3 * torch.randn(n, 3, generator=gen), quats=torch.randn(n, 4, generator=gen),
                  scales=0.01 + 0.05 * torch.rand(n, 3, generator=gen),
                  opacities=0.1 + (opacity_max - 0.1) * torch.rand(n, generator=gen),
                  sh=0.5 * torch.randn(n, 16, 3, generator=gen))
    eyes = torch.tensor([[0.0, 0.0, 2.5], [1.5, 0.5, 2.0]])
    cams = Cameras(K=intrinsics_from_fov(torch.tensor([40.0, 50.0]), 64, 48),
                   world_to_cam=look_at(eyes, torch.zeros(2, 3)), width=64, height=48)
    return g.to(device), cams.to(device)


def off_centre(cams: Cameras) -> Cameras:
    K = cams.K.clone()
    K[:, 0, 2] += 3.0
    return Cameras(K=K, world_to_cam=cams.world_to_cam, width=cams.width, height=cams.height)


def test_auto_rule():
    assert choose_auto("cuda", True, True) == "gsplat"
    assert choose_auto("cuda", True, False) == "torch"  # an opacity > 0.99: gsplat's α cap would differ
    assert choose_auto("cuda", False, True) == "torch"
    assert choose_auto("cpu", True, True) == "torch"


def test_auto_on_cpu_is_torch_even_with_gsplat_installed(monkeypatch):
    monkeypatch.setattr(backends, "gsplat_available", lambda: True)
    g, cams = scene()
    assert resolve_backend("auto", g) == "torch"
    torch.testing.assert_close(rasterize(g, cams).rgb, rasterize(g, cams, backend="torch").rgb)
    with pytest.raises(ValueError, match="backend must be one of"):
        rasterize(g, cams, backend="cuda")


def test_gsplat_semantics_check():
    g, _ = scene(opacity_max=0.99)
    assert backends.gsplat_semantics_match(g)
    g.opacities[0] = 0.995
    assert not backends.gsplat_semantics_match(g)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU error")
def test_gsplat_on_cpu_is_a_clear_error():
    g, cams = scene()
    with pytest.raises(RuntimeError, match="only CUDA.*backend='torch'"):
        rasterize(g, cams, backend="gsplat")


def test_gsplat_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(backends, "_require_cuda", lambda name, t: None)
    monkeypatch.setitem(sys.modules, "gsplat", None)  # makes `import gsplat` fail
    g, cams = scene()
    with pytest.raises(ImportError, match=r"pip install -e \.\[gpu\]"):
        rasterize(g, cams, backend="gsplat")


def test_inria_refuses_off_centre_principal_points():
    g, cams = scene()
    with pytest.raises(ValueError, match="no principal point"):
        rasterize(g, off_centre(cams), backend="inria")


def test_inria_refuses_gaussians_its_fixed_near_plane_would_cull():
    g, cams = scene()
    g.means[0] = torch.tensor([0.0, 0.0, 2.4])  # 0.1 in front of camera 0: inside [near, 0.2]
    with pytest.raises(ValueError, match="fixed near plane"):
        rasterize(g, cams, backend="inria")


# ---------------------------------------------------------------- CUDA parity (run with -m gpu)

def _grads(g: Gaussians, cams: Cameras, backend: str):
    leaves = g.map(lambda t: t.detach().clone().requires_grad_(True))
    bg = torch.tensor([0.2, 0.4, 0.6], device=g.means.device)
    out = rasterize(leaves, cams, background=bg, backend=backend)
    gen = torch.Generator(device=g.means.device).manual_seed(3)
    w = [torch.rand(t.shape, generator=gen, device=t.device) for t in (out.rgb, out.alpha, out.depth)]
    sum((t * wi).sum() for t, wi in zip((out.rgb, out.alpha, out.depth), w, strict=True)).backward()
    return out, leaves


def _assert_parity(g, cams, backend, atol, grad_rtol):
    out_t, g_t = _grads(g, cams, "torch")
    out_b, g_b = _grads(g, cams, backend)
    for name in ("rgb", "alpha", "depth"):
        err = (getattr(out_t, name) - getattr(out_b, name)).abs().max().item()
        assert err < atol, f"{backend} vs torch {name}: max abs error {err:.3g}"
    for name in ("means", "quats", "scales", "opacities", "sh"):
        a, b = getattr(g_t, name).grad, getattr(g_b, name).grad
        rel = ((a - b).norm() / b.norm()).item()
        assert rel < grad_rtol, f"{backend} vs torch d/d{name}: relative error {rel:.3g}"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or importlib.util.find_spec("gsplat") is None, reason="needs CUDA and gsplat")
def test_gsplat_matches_torch_on_cuda():
    g, cams = scene(device="cuda")
    _assert_parity(g, off_centre(cams), "gsplat", atol=1e-4, grad_rtol=1e-3)
    assert resolve_backend("auto", g) == "gsplat"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or importlib.util.find_spec("diff_gaussian_rasterization") is None,
                    reason="needs CUDA and diff_gaussian_rasterization")
def test_inria_matches_torch_on_cuda():
    # Inria evaluates a Gaussian only in tiles its 3σ square touches; the contract keeps every
    # α >= 1/255, so tails can differ by up to ~0.011·o per Gaussian: a looser tolerance.
    g, cams = scene(device="cuda")
    _assert_parity(g, cams, "inria", atol=3e-2, grad_rtol=5e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_torch_backend_on_cuda_matches_cpu():
    g, cams = scene()
    out_cpu = rasterize(g, cams, backend="torch")
    out_gpu = rasterize(g.to("cuda"), cams.to("cuda"), backend="torch")
    torch.testing.assert_close(out_gpu.rgb.cpu(), out_cpu.rgb, atol=1e-5, rtol=1e-4)
