"""Part-based densification: grids, TBN rotations (Eq. 2), nearest-neighbour scales, offsets."""

from __future__ import annotations

import math

import pytest
import torch

from avatar_lightning.models import GaussianOffsets, PartPrediction
from avatar_lightning.models.densify import (
    axis_angle_to_quat,
    grid_nearest_neighbor_distance,
    nearest_neighbor_distance,
    part_gaussians,
    part_grid,
    sample_part,
    tbn_quaternions,
)
from avatar_lightning.render import quat_to_rotmat


def _plane(n: int = 6, rot: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Positions (u, v, 0) on an n×n grid laid out as a part grid (rows go down in v), optionally rotated."""
    t = torch.linspace(0, 1, n, dtype=dtype)
    vv, uu = torch.meshgrid(1 - t, t, indexing="ij")
    phi = torch.stack([uu, vv, torch.zeros_like(uu)], dim=-1)
    if rot is not None:
        phi = phi @ rot.T
    return phi.permute(2, 0, 1)[None]


def _rotation(axis_angle: list[float]) -> torch.Tensor:
    a = torch.tensor(axis_angle, dtype=torch.float64)
    theta = a.norm()
    k = a / theta
    kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(theta) * kx + (1 - math.cos(theta)) * kx @ kx


def test_part_grid_is_the_masked_texel_grid() -> None:
    region = torch.zeros(8, 8)
    region[0:4, 0:4] = 1  # top-left block (high v, low u)
    grid = part_grid(region)
    assert grid.uv.shape == (8, 8, 2) and grid.num_gaussians == 16
    assert (grid.uv[grid.valid][:, 0] < 0.5).all() and (grid.uv[grid.valid][:, 1] > 0.5).all()
    # sampling the region mask at the grid points gives back ``valid``
    assert torch.equal(sample_part(region[None, None], grid)[0, 0] > 0.5, grid.valid)


def test_part_grid_rejects_empty_region() -> None:
    with pytest.raises(ValueError, match="empty"):
        part_grid(torch.zeros(4, 4))


def test_tbn_of_uv_plane_is_identity() -> None:
    q = tbn_quaternions(_plane())
    torch.testing.assert_close(q, torch.tensor([1.0, 0, 0, 0]).expand_as(q), atol=1e-6, rtol=0)


def test_tbn_rotates_with_the_surface() -> None:
    rot = _rotation([0.3, -0.8, 0.5])
    q = tbn_quaternions(_plane(rot=rot, dtype=torch.float64))
    torch.testing.assert_close(quat_to_rotmat(q), rot.expand(1, 6, 6, 3, 3), atol=1e-8, rtol=0)


def test_tbn_of_degenerate_frame_is_identity() -> None:
    q = tbn_quaternions(torch.zeros(1, 3, 4, 4))
    torch.testing.assert_close(q, torch.tensor([1.0, 0, 0, 0]).expand_as(q))


def test_nearest_neighbor_distance_matches_brute_force() -> None:
    pts = torch.randn(2, 37, 3)
    d = torch.cdist(pts, pts) + torch.eye(37) * 1e9
    torch.testing.assert_close(nearest_neighbor_distance(pts, chunk=5), d.min(-1).values)


def _bumpy_surface(n: int) -> torch.Tensor:
    """[1, 3, n, n] a smooth, curved, anisotropically sampled surface (a head-sized patch, metres)."""
    t = torch.linspace(-1, 1, n)
    vv, uu = torch.meshgrid(-t, t, indexing="ij")
    phi = torch.stack([0.12 * uu, 0.07 * vv + 0.01 * uu, 0.03 * torch.sin(2 * uu) * torch.cos(3 * vv)], dim=0)
    return phi[None]


@pytest.mark.parametrize("radius", [1, 2])
def test_grid_nearest_neighbor_matches_the_all_pairs_reference(radius: int) -> None:
    phi = _bumpy_surface(24).expand(2, -1, -1, -1) * torch.tensor([1.0, 1.3]).view(2, 1, 1, 1)
    i, j = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    valid = (i - 13) ** 2 / 90 + (j - 12) ** 2 / 60 < 1  # a region as part masks are: one blob
    valid[1, 2] = True  # and an isolated texel: its nearest point lies outside any window
    points = phi.permute(0, 2, 3, 1)[:, valid]
    reference = nearest_neighbor_distance(points)
    torch.testing.assert_close(grid_nearest_neighbor_distance(phi, valid, radius), reference)


def test_part_gaussians_use_the_grid_neighbourhood_by_default() -> None:
    phi = _bumpy_surface(16)
    grid = part_grid(torch.ones(16, 16))
    grid_scales = part_gaussians(phi, _prediction(16, 16), grid).scales
    torch.testing.assert_close(grid_scales, part_gaussians(phi, _prediction(16, 16), grid, nn_radius=None).scales)


def test_axis_angle_to_quat_matches_rodrigues() -> None:
    aa = [0.3, -0.8, 0.5]
    q = axis_angle_to_quat(torch.tensor(aa, dtype=torch.float64))
    torch.testing.assert_close(quat_to_rotmat(q), _rotation(aa))
    torch.testing.assert_close(axis_angle_to_quat(torch.zeros(3)), torch.tensor([1.0, 0, 0, 0]))


def _prediction(h: int, w: int, rot_dim: int = 4, dtype: torch.dtype = torch.float32, scale: float = 0.0
                ) -> PartPrediction:
    def t(c: int) -> torch.Tensor:
        return scale * torch.randn(1, c, h, w, dtype=dtype)

    return PartPrediction(sh=torch.randn(1, 16, 3, h, w, dtype=dtype),
                          offsets=GaussianOffsets(t(3), t(rot_dim), t(3), t(1)))


def test_initial_gaussians_follow_the_paper() -> None:
    phi = _plane(6) * 0.5
    region = torch.ones(6, 6)
    region[0, 0] = 0
    grid = part_grid(region)
    pred = _prediction(6, 6)
    g = part_gaussians(phi, pred, grid)
    n = grid.num_gaussians
    assert n == 35 and g.means.shape == (1, 35, 3) and g.sh.shape == (1, 35, 16, 3)
    torch.testing.assert_close(g.opacities, torch.full((1, n), 0.7))
    torch.testing.assert_close(g.scales, torch.full((1, n, 3), 0.1))  # grid spacing 0.5 / 5
    torch.testing.assert_close(g.quats, torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(g.means, phi.permute(0, 2, 3, 1)[:, grid.valid])


def test_offsets_apply_additively_in_the_stated_spaces() -> None:
    phi = _plane(4)
    grid = part_grid(torch.ones(4, 4))
    pred = _prediction(4, 4, rot_dim=3, scale=0.3)
    g0 = part_gaussians(phi, _prediction(4, 4, rot_dim=3), grid)
    g = part_gaussians(phi, pred, grid)
    off = {k: v.permute(0, 2, 3, 1).reshape(1, 16, -1) for k, v in vars(pred.offsets).items()}
    torch.testing.assert_close(g.means - g0.means, off["position"])
    torch.testing.assert_close(torch.log(g.scales / g0.scales), off["scale"])
    logit = torch.log(g.opacities / (1 - g.opacities)) - math.log(0.7 / 0.3)
    torch.testing.assert_close(logit, off["opacity"][..., 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g.quats, axis_angle_to_quat(off["rotation"]), atol=1e-6, rtol=1e-6)


def test_part_gaussians_gradcheck() -> None:
    phi = _plane(3, dtype=torch.float64).requires_grad_(True)
    grid = part_grid(torch.ones(3, 3))
    pred = _prediction(3, 3, dtype=torch.float64, scale=0.1)
    offset = pred.offsets.scale.clone().requires_grad_(True)
    phi0 = phi.detach().clone()

    def fn(p: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pred.offsets.scale = s
        means = part_gaussians(p, pred, grid).means
        # the initial scale and rotation are detached from φ by design, so scales are checked at fixed φ
        return means, part_gaussians(phi0, pred, grid).scales

    assert torch.autograd.gradcheck(fn, (phi, offset))
