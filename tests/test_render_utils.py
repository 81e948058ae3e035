"""SH, quaternions, cameras and the dataclasses of the render package."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from avatar_lightning.render import (
    Cameras,
    Gaussians,
    eval_sh,
    intrinsics_from_fov,
    look_at,
    normalize_quat,
    opengl_to_opencv,
    orbit_cameras,
    quat_multiply,
    quat_to_rotmat,
    quat_wxyz_to_xyzw,
    rasterize,
    rgb_to_sh,
    rotmat_to_quat,
    sh_to_rgb,
)
from avatar_lightning.render.sh import sh_basis

D = torch.float64


def unit_dirs(n: int = 200, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(seed),
                                                     dtype=D), dim=-1)


# ---------------------------------------------------------------- spherical harmonics

def explicit_real_sh(d: torch.Tensor) -> torch.Tensor:
    """Real SH (the standard table) at unit directions, in 3DGS order, without 3DGS's signs."""
    x, y, z = d.unbind(-1)
    pi = math.pi
    return torch.stack([
        torch.full_like(x, 0.5 * math.sqrt(1 / pi)),
        math.sqrt(3 / (4 * pi)) * y, math.sqrt(3 / (4 * pi)) * z, math.sqrt(3 / (4 * pi)) * x,
        0.5 * math.sqrt(15 / pi) * x * y, 0.5 * math.sqrt(15 / pi) * y * z,
        0.25 * math.sqrt(5 / pi) * (3 * z * z - 1), 0.5 * math.sqrt(15 / pi) * x * z,
        0.25 * math.sqrt(15 / pi) * (x * x - y * y),
        0.25 * math.sqrt(35 / (2 * pi)) * y * (3 * x * x - y * y), 0.5 * math.sqrt(105 / pi) * x * y * z,
        0.25 * math.sqrt(21 / (2 * pi)) * y * (5 * z * z - 1), 0.25 * math.sqrt(7 / pi) * z * (5 * z * z - 3),
        0.25 * math.sqrt(21 / (2 * pi)) * x * (5 * z * z - 1), 0.25 * math.sqrt(105 / pi) * z * (x * x - y * y),
        0.25 * math.sqrt(35 / (2 * pi)) * x * (x * x - 3 * y * y),
    ], -1)


# the sign pattern of Inria's computeColorFromSH (and gsplat) relative to the standard table
SH_SIGNS = torch.tensor([1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1], dtype=D)


def test_sh_basis_matches_explicit_table():
    d = unit_dirs()
    torch.testing.assert_close(sh_basis(3, d), SH_SIGNS * explicit_real_sh(d), rtol=1e-12, atol=1e-12)


def test_sh_basis_is_orthonormal_on_the_sphere():
    # Gauss–Legendre in cos θ × uniform φ integrates these degree ≤ 6 products exactly
    nodes, weights = np.polynomial.legendre.leggauss(12)
    phi = torch.arange(24, dtype=D) * (2 * math.pi / 24)
    ct = torch.tensor(nodes, dtype=D)[:, None]
    st = (1 - ct**2).sqrt()
    d = torch.stack([st * torch.cos(phi), st * torch.sin(phi), ct.expand(-1, 24)], -1).reshape(-1, 3)
    w = (torch.tensor(weights, dtype=D)[:, None] * (2 * math.pi / 24)).expand(-1, 24).reshape(-1)
    y = sh_basis(3, d)
    gram = (y * w[:, None]).T @ y
    torch.testing.assert_close(gram, torch.eye(16, dtype=D), atol=1e-12, rtol=0)


def test_eval_sh_uses_only_the_degree_asked_and_normalises_dirs():
    gen = torch.Generator().manual_seed(1)
    sh = torch.randn(50, 16, 3, generator=gen, dtype=D)
    d = unit_dirs(50)
    for deg in range(4):
        k = (deg + 1) ** 2
        want = torch.einsum("nk,nkc->nc", SH_SIGNS[:k] * explicit_real_sh(d)[:, :k], sh[:, :k])
        torch.testing.assert_close(eval_sh(deg, sh, 3.7 * d), want)
    with pytest.raises(ValueError, match="needs K >= 16"):
        eval_sh(3, sh[:, :9], d)


def test_rgb_sh_round_trip_and_dc_colour_is_view_independent():
    rgb = torch.rand(20, 3, dtype=D)
    torch.testing.assert_close(sh_to_rgb(rgb_to_sh(rgb)), rgb)
    sh = torch.zeros(20, 16, 3, dtype=D)
    sh[:, 0] = rgb_to_sh(rgb)
    torch.testing.assert_close(eval_sh(3, sh, unit_dirs(20)) + 0.5, rgb)


# ---------------------------------------------------------------- quaternions

def random_quats(n: int = 100, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=D)


def test_quat_to_rotmat_matches_scipy_and_ignores_scale():
    q = random_quats()
    want = torch.from_numpy(Rotation.from_quat(quat_wxyz_to_xyzw(q).numpy()).as_matrix())
    torch.testing.assert_close(quat_to_rotmat(q), want)
    torch.testing.assert_close(quat_to_rotmat(3.0 * q), want)


def test_rotmat_quat_round_trip_all_branches():
    q = normalize_quat(random_quats())
    # rotations by ~180° (w ≈ 0) exercise the x/y/z-dominant branches
    q = torch.cat([q, torch.tensor([[0.0, 1, 0, 0], [0.0, 0, 1, 0], [0.0, 0, 0, 1], [1e-9, 0.6, 0.8, 0]], dtype=D)])
    back = rotmat_to_quat(quat_to_rotmat(q))
    canon = torch.where(q[:, :1] < 0, -q, q)
    torch.testing.assert_close(back, normalize_quat(canon), atol=1e-9, rtol=0)
    assert torch.all(back[:, 0] >= 0)


def test_quat_multiply_composes_rotations():
    q1, q2 = random_quats(50, 1), random_quats(50, 2)
    torch.testing.assert_close(quat_to_rotmat(quat_multiply(q1, q2)), quat_to_rotmat(q1) @ quat_to_rotmat(q2))


# ---------------------------------------------------------------- cameras

def apply(w2c: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return (w2c[..., :3, :3] @ p[..., None])[..., 0] + w2c[..., :3, 3]


def test_look_at_is_opencv():
    eye, target = torch.tensor([0.3, 0.2, 2.0], dtype=D), torch.tensor([0.0, 0.1, 0.0], dtype=D)
    w2c = look_at(eye, target, torch.tensor([0.0, 1.0, 0.0], dtype=D))
    rot = w2c[:3, :3]
    torch.testing.assert_close(rot @ rot.T, torch.eye(3, dtype=D))
    assert torch.isclose(torch.linalg.det(rot), torch.tensor(1.0, dtype=D))
    torch.testing.assert_close(apply(w2c, eye), torch.zeros(3, dtype=D))
    t_cam = apply(w2c, target)
    torch.testing.assert_close(t_cam[:2], torch.zeros(2, dtype=D))
    assert t_cam[2] > 0  # in front: z forward
    assert apply(w2c, target + torch.tensor([0.0, 0.1, 0.0], dtype=D))[1] < 0  # world up is image up (−y)
    with pytest.raises(ValueError, match="parallel"):
        look_at(eye, eye + torch.tensor([0.0, 1.0, 0.0], dtype=D), torch.tensor([0.0, 1.0, 0.0], dtype=D))


def test_orbit_cameras_circle_the_target():
    target = torch.tensor([0.0, 0.05, 0.0])
    w2c = orbit_cameras(8, radius=1.5, elevation_deg=20.0, target=target)
    centres = -(w2c[:, :3, :3].transpose(1, 2) @ w2c[:, :3, 3:])[..., 0]
    torch.testing.assert_close((centres - target).norm(dim=-1), torch.full((8,), 1.5))
    assert centres[0, 2] > 0 and abs(centres[0, 0]) < 1e-6  # azimuth 0 is in front (+z)
    assert torch.all(centres[:, 1] > target[1])  # positive elevation is above
    assert torch.cdist(centres, centres).add(torch.eye(8)).min() > 0.1  # 360° arc repeats no view
    torch.testing.assert_close(apply(w2c, target.expand(8, 3))[:, :2], torch.zeros(8, 2), atol=1e-6, rtol=0)


def test_intrinsics_from_fov():
    K = intrinsics_from_fov(90.0, 100, 60)
    torch.testing.assert_close(K, torch.tensor([[50.0, 0, 50], [0, 50, 30], [0, 0, 1]]))
    Ky = intrinsics_from_fov(torch.tensor([math.pi / 2]), 100, 60, axis="y", degrees=False)
    assert Ky.shape == (1, 3, 3) and math.isclose(Ky[0, 1, 1].item(), 30.0, rel_tol=1e-6)


def test_opengl_to_opencv():
    c2w_gl = torch.eye(4, dtype=D)
    c2w_gl[2, 3] = 3.0  # at +z looking down −z (OpenGL), i.e. at the origin
    w2c = torch.linalg.inv(opengl_to_opencv(c2w_gl))
    assert apply(w2c, torch.zeros(3, dtype=D))[2] == 3.0  # the origin is 3 in front (OpenCV z forward)
    torch.testing.assert_close(opengl_to_opencv(opengl_to_opencv(c2w_gl)), c2w_gl)


# ---------------------------------------------------------------- dataclasses and argument checks

def tiny() -> tuple[Gaussians, Cameras]:
    g = Gaussians(means=torch.zeros(2, 3), quats=torch.tensor([[1.0, 0, 0, 0]] * 2), scales=torch.full((2, 3), 0.1),
                  opacities=torch.full((2,), 0.5), sh=torch.zeros(2, 1, 3))
    cams = Cameras(K=intrinsics_from_fov(torch.tensor([40.0]), 16, 12),
                   world_to_cam=look_at(torch.tensor([[0.0, 0, 2]]), torch.zeros(1, 3)), width=16, height=12)
    return g, cams


def test_gaussians_validation_names_the_field():
    g, _ = tiny()
    with pytest.raises(ValueError, match="Gaussians.scales"):
        Gaussians(g.means, g.quats, torch.ones(3, 3), g.opacities, g.sh)
    with pytest.raises(ValueError, match="Gaussians.quats"):
        Gaussians(g.means, g.quats[:, :3], g.scales, g.opacities, g.sh)
    with pytest.raises(ValueError, match="Cameras.world_to_cam"):
        Cameras(K=torch.eye(3)[None], world_to_cam=torch.eye(4)[None].expand(2, 4, 4), width=4, height=4)


def test_gaussians_cat_index_and_batch():
    g, _ = tiny()
    both = Gaussians.cat([g, g[:1]])
    assert len(both) == 3 and both.sh_degree == 0
    gb = g.map(lambda t: t.expand(4, *t.shape))
    assert gb.batched and gb[torch.tensor([1])].means.shape == (4, 1, 3)
    assert Gaussians.cat([gb, gb]).means.shape == (4, 4, 3)


def test_background_shapes_are_checked():
    g, cams = tiny()
    corner = rasterize(g, cams, background=torch.tensor([0.0, 1.0, 0.0])).rgb[0, :, 0, 0]
    torch.testing.assert_close(corner, torch.tensor([0.0, 1.0, 0.0]))  # empty corner shows the background
    with pytest.raises(ValueError, match="background"):
        rasterize(g, cams, background=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="batched"):
        rasterize(g, Cameras(K=cams.K[None], world_to_cam=cams.world_to_cam[None], width=16, height=12))
    with pytest.raises(ValueError, match="sh_degree"):
        rasterize(g, cams, sh_degree=2)
