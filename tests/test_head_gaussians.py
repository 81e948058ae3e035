"""Posing Gaussians with the head: binding, LBS transforms, rigid-motion equivalence through the rasteriser."""

from __future__ import annotations

import pytest
import torch

from avatar_lightning.head import HeadModel, load_head_model
from avatar_lightning.head.gaussians import (
    MeshBinding,
    closest_rotation,
    point_transforms,
    pose_gaussians,
    surface_points,
)
from avatar_lightning.head.lbs import axis_angle_to_matrix
from avatar_lightning.head.uv import part_masks, uv_rasterize
from avatar_lightning.render import Cameras, Gaussians, intrinsics_from_fov, look_at, quat_to_rotmat, rasterize


@pytest.fixture(scope="module")
def head() -> HeadModel:
    return load_head_model("builtin", n_shape=20, n_expr=15)


@pytest.fixture(scope="module")
def binding(head: HeadModel) -> MeshBinding:
    """Face and hair texels of a 64² UV raster bound to their triangles (as the priors bind their grids)."""
    raster = uv_rasterize(head.uv_coords, head.uv_faces, 64)
    parts = part_masks(raster, head)
    covered = (parts["face"] + parts["hair"]) > 0.5
    return MeshBinding(raster.face[covered], raster.bary[covered])


def _canonical(head: HeadModel, binding: MeshBinding, shape, expr) -> Gaussians:
    g = torch.Generator().manual_seed(3)
    means = surface_points(head.canonical(shape, expr), head.faces, binding)
    N = means.shape[1]
    return Gaussians(means=means, quats=torch.randn(1, N, 4, generator=g),
                     scales=0.002 + 0.002 * torch.rand(1, N, 3, generator=g),
                     opacities=torch.full((1, N), 0.8), sh=torch.rand(1, N, 4, 3, generator=g) - 0.5)


def test_binding_reproduces_uv_points(head: HeadModel, binding: MeshBinding) -> None:
    assert (binding.bary >= 0).all()
    torch.testing.assert_close(binding.bary.sum(-1), torch.ones(len(binding.face)))
    pts = surface_points(head.v_template[None], head.faces, binding)[0]
    assert pts.norm(dim=-1).max() < 0.3  # on the head, not at the origin or far away


def test_closest_rotation_is_the_polar_factor() -> None:
    g = torch.Generator().manual_seed(0)
    R = axis_angle_to_matrix(torch.randn(20, 3, generator=g, dtype=torch.float64))
    torch.testing.assert_close(closest_rotation(R), R)
    S = torch.randn(20, 3, 3, generator=g, dtype=torch.float64) * 0.05
    M = R @ (torch.eye(3, dtype=torch.float64) + S + S.transpose(1, 2))  # rotation × SPD stretch
    U, _, Vh = torch.linalg.svd(M)
    torch.testing.assert_close(closest_rotation(M, iters=8), U @ Vh)


def test_rigid_pose_moves_gaussians_like_the_inverse_camera(head: HeadModel, binding: MeshBinding) -> None:
    """Moving the head by (R, t) renders the same image as moving the camera by (R, t)⁻¹."""
    shape = torch.randn(1, head.n_shape, generator=torch.Generator().manual_seed(1))
    expr = torch.randn(1, head.n_expr, generator=torch.Generator().manual_seed(2))
    canon = _canonical(head, binding, shape, expr)
    pose = torch.zeros(1, 5, 3)
    pose[0, 0] = torch.tensor([0.3, -0.8, 0.2])
    trans = torch.tensor([[0.03, -0.02, 0.05]])
    out = head(shape, expr, pose, trans)
    moved = pose_gaussians(canon, point_transforms(out.vertex_transforms, head.faces, binding))
    rest = pose_gaussians(canon, point_transforms(head(shape, expr).vertex_transforms, head.faces, binding))
    size = 64
    K = intrinsics_from_fov(torch.tensor([25.0]), size, size)[0][None]
    w2c = look_at(torch.tensor([0.1, 0.05, 0.8]), torch.tensor([0.0, 0.0, 0.0]))[None]
    head_motion = out.joint_transforms[0, 0]  # global-only pose: every vertex moves by the root transform
    torch.testing.assert_close(out.vertex_transforms[0, 0], head_motion)
    img_moved = rasterize(moved, Cameras(K=K, world_to_cam=w2c, width=size, height=size), backend="torch")
    img_cam = rasterize(rest, Cameras(K=K, world_to_cam=w2c @ head_motion, width=size, height=size),
                        backend="torch")
    assert img_moved.alpha.mean() > 0.05  # the head is in view
    torch.testing.assert_close(img_moved.rgb, img_cam.rgb, atol=2e-4, rtol=0)
    torch.testing.assert_close(img_moved.alpha, img_cam.alpha, atol=2e-4, rtol=0)


def test_jaw_rotates_jaw_bound_gaussian_frames(head: HeadModel, binding: MeshBinding) -> None:
    z_s, z_e = torch.zeros(1, head.n_shape), torch.zeros(1, head.n_expr)
    canon = _canonical(head, binding, z_s, z_e)
    pose = torch.zeros(1, 5, 3)
    pose[0, 2, 0] = 0.3
    posed = pose_gaussians(canon, point_transforms(head(z_s, z_e, pose).vertex_transforms, head.faces, binding))
    w = head.lbs_weights[:, 2][head.faces[binding.face]]  # [N, 3]
    jaw_only, rigid_only = (w == 1).all(-1), (w == 0).all(-1)
    assert jaw_only.sum() > 10 and rigid_only.sum() > 10
    R = axis_angle_to_matrix(pose[0, 2])
    got = quat_to_rotmat(posed.quats[0, jaw_only])
    torch.testing.assert_close(got, R @ quat_to_rotmat(canon.quats[0, jaw_only]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(posed.means[0, rigid_only], canon.means[0, rigid_only])
    torch.testing.assert_close(posed.quats[0, rigid_only] / posed.quats[0, rigid_only].norm(dim=-1, keepdim=True),
                               canon.quats[0, rigid_only] / canon.quats[0, rigid_only].norm(dim=-1, keepdim=True),
                               atol=1e-6, rtol=0)


def test_pose_correctives_bring_vertex_bound_gaussians_onto_the_posed_mesh(head: HeadModel) -> None:
    """A Gaussian bound at a vertex lands on that vertex of the posed mesh, pose correctives included."""
    faces = head.faces
    binding = MeshBinding(face=torch.arange(len(faces)), bary=torch.tensor([1.0, 0, 0]).expand(len(faces), 3))
    z_s, z_e = torch.zeros(1, head.n_shape), 0.5 * torch.ones(1, head.n_expr)
    canon = _canonical(head, binding, z_s, z_e)
    pose = torch.zeros(1, 5, 3)
    pose[0, 1, 1], pose[0, 2, 0] = 0.2, 0.4  # neck turn, jaw open: both have correctives
    mesh = head(z_s, z_e, pose, torch.tensor([[0.01, 0.02, 0.03]]))
    assert mesh.pose_offsets.norm(dim=-1).max() > 1e-3  # the correctives are not negligible here
    posed = pose_gaussians(canon, point_transforms(mesh.vertex_transforms, faces, binding),
                           surface_points(mesh.pose_offsets, faces, binding))
    torch.testing.assert_close(posed.means, mesh.vertices[:, faces[:, 0]], atol=1e-6, rtol=0)


def test_pose_gaussians_rejects_unbatched(head: HeadModel) -> None:
    g = Gaussians(means=torch.zeros(3, 3), quats=torch.ones(3, 4), scales=torch.ones(3, 3),
                  opacities=torch.ones(3), sh=torch.zeros(3, 1, 3))
    with pytest.raises(ValueError, match="batched"):
        pose_gaussians(g, torch.eye(4).expand(1, 3, 4, 4))


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_rotate_sh_turns_view_dependent_colour(degree: int) -> None:
    from avatar_lightning.head.gaussians import rotate_sh
    from avatar_lightning.render.sh import sh_basis

    g = torch.Generator().manual_seed(degree)
    R = axis_angle_to_matrix(torch.randn(4, 3, generator=g, dtype=torch.float64))
    sh = torch.randn(4, (degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.randn(4, 7, 3, generator=g, dtype=torch.float64), dim=-1)
    rotated = torch.einsum("bnk,bkc->bnc", sh_basis(degree, d), rotate_sh(sh, R))
    original = torch.einsum("bnk,bkc->bnc", sh_basis(degree, d @ R), sh)  # f(Rᵀ d)
    torch.testing.assert_close(rotated, original)


def test_pose_gaussians_gradcheck() -> None:
    g = torch.Generator().manual_seed(4)
    N = 3
    A = torch.eye(4, dtype=torch.float64).repeat(1, N, 1, 1)
    A[..., :3, :3] = axis_angle_to_matrix(torch.randn(1, N, 3, generator=g, dtype=torch.float64))
    A[..., :3, :3] += 0.05 * torch.randn(1, N, 3, 3, generator=g, dtype=torch.float64)  # LBS blends are not rigid
    A[..., :3, 3] = torch.randn(1, N, 3, generator=g, dtype=torch.float64)
    means = torch.randn(1, N, 3, generator=g, dtype=torch.float64, requires_grad=True)
    quats = torch.randn(1, N, 4, generator=g, dtype=torch.float64, requires_grad=True)
    sh = torch.randn(1, N, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    A.requires_grad_(True)

    def fn(means, quats, sh, A):
        ones = torch.ones_like(means)
        canon = Gaussians(means=means, quats=quats, scales=ones, opacities=ones[..., 0], sh=sh)
        out = pose_gaussians(canon, A)
        return out.means, out.quats, out.sh

    assert torch.autograd.gradcheck(fn, (means, quats, sh, A), fast_mode=True)
