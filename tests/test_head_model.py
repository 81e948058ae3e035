"""FLAME-format head model: LBS invariants, the loader on a true-format fixture, the built-in head."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_lightning.head.lbs import axis_angle_to_matrix, linear_blend_skinning
from avatar_lightning.head.model import HeadModel, load_head_model
from tests.flame_fixture import write_flame_fixture


@pytest.fixture(scope="module")
def head() -> HeadModel:
    return load_head_model("builtin", n_shape=20, n_expr=15).double()


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flame")
    write_flame_fixture(root)
    return root


def _params(head: HeadModel, B: int = 2, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    shape = torch.randn(B, head.n_shape, generator=g, dtype=torch.float64)
    expr = torch.randn(B, head.n_expr, generator=g, dtype=torch.float64)
    pose = 0.3 * scale * torch.randn(B, 5, 3, generator=g, dtype=torch.float64)
    trans = 0.1 * torch.randn(B, 3, generator=g, dtype=torch.float64)
    return shape, expr, pose, trans


def test_axis_angle_matches_matrix_exponential() -> None:
    aa = torch.randn(64, 3, dtype=torch.float64)
    aa[:4] *= 1e-6  # the series branch
    zero = torch.zeros(64, dtype=torch.float64)
    x, y, z = aa.unbind(-1)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(64, 3, 3)
    torch.testing.assert_close(axis_angle_to_matrix(aa), torch.linalg.matrix_exp(skew))


def test_axis_angle_gradcheck() -> None:
    aa = torch.tensor([[0.3, -0.2, 0.5], [1e-7, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa,))


def _slow_lbs(v_shaped, pose, J_reg, parents, weights, posedirs):
    """Per-vertex loop reference of FLAME's LBS (float64)."""
    rot = [[axis_angle_to_matrix(pose[b, j]) for j in range(len(parents))] for b in range(pose.shape[0])]
    out = torch.zeros_like(v_shaped)
    for b in range(v_shaped.shape[0]):
        feat = torch.cat([(rot[b][j] - torch.eye(3, dtype=pose.dtype)).reshape(-1) for j in range(1, len(parents))])
        v = v_shaped[b] + (feat @ posedirs).reshape(-1, 3)
        J = J_reg @ v_shaped[b]
        G = []
        for j, p in enumerate(parents):
            local = torch.eye(4, dtype=pose.dtype)
            local[:3, :3] = rot[b][j]
            local[:3, 3] = J[j] - (J[p] if p >= 0 else 0)
            G.append(local if p < 0 else G[p] @ local)
        A = []
        for j in range(len(parents)):
            Aj = G[j].clone()
            Aj[:3, 3] -= G[j][:3, :3] @ J[j]  # acts on rest-pose coordinates
            A.append(Aj)
        for i in range(v.shape[0]):
            T = sum(weights[i, j] * A[j] for j in range(len(parents)))
            out[b, i] = T[:3, :3] @ v[i] + T[:3, 3]
    return out


def test_lbs_matches_slow_reference() -> None:
    g = torch.Generator().manual_seed(1)
    V, parents = 7, [-1, 0, 1, 1, 1]
    v = torch.randn(2, V, 3, generator=g, dtype=torch.float64)
    pose = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    J_reg = torch.rand(5, V, generator=g, dtype=torch.float64)
    J_reg /= J_reg.sum(1, keepdim=True)
    w = torch.rand(V, 5, generator=g, dtype=torch.float64)
    w /= w.sum(1, keepdim=True)
    posedirs = 0.01 * torch.randn(36, V * 3, generator=g, dtype=torch.float64)
    fast = linear_blend_skinning(v, pose, J_reg, parents, w, posedirs).vertices
    torch.testing.assert_close(fast, _slow_lbs(v, pose, J_reg, parents, w, posedirs))


def test_zero_parameters_return_template(head: HeadModel) -> None:
    z = torch.zeros(3, head.n_shape, dtype=torch.float64)
    out = head(z, torch.zeros(3, head.n_expr, dtype=torch.float64))
    torch.testing.assert_close(out.vertices, head.v_template.expand(3, -1, -1))
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(out.vertex_transforms, eye.expand_as(out.vertex_transforms))
    torch.testing.assert_close(out.joint_transforms, eye.expand_as(out.joint_transforms))


def test_global_rotation_is_rigid_about_root(head: HeadModel) -> None:
    shape, expr, _, trans = _params(head)
    pose = torch.zeros(2, 5, 3, dtype=torch.float64)
    pose[:, 0] = torch.tensor([[0.4, -0.7, 0.2], [-1.1, 0.3, 0.9]], dtype=torch.float64)
    rest = head(shape, expr)
    out = head(shape, expr, pose, trans)
    R = axis_angle_to_matrix(pose[:, 0])
    root = rest.joints[:, :1]
    expected = torch.einsum("bij,bvj->bvi", R, rest.vertices - root) + root + trans[:, None]
    torch.testing.assert_close(out.vertices, expected)
    # all pairwise distances are preserved (rigid)
    idx = torch.randperm(head.num_vertices)[:200]
    torch.testing.assert_close(torch.cdist(out.vertices[:, idx], out.vertices[:, idx]),
                               torch.cdist(rest.vertices[:, idx], rest.vertices[:, idx]))


def test_jaw_moves_only_jaw_weighted_vertices(head: HeadModel) -> None:
    shape, expr, _, _ = _params(head, B=1)
    pose = torch.zeros(1, 5, 3, dtype=torch.float64)
    pose[0, 2, 0] = 0.3  # open the mouth
    rest, out = head(shape, expr), head(shape, expr, pose)
    moved = (out.vertices - rest.vertices).norm(dim=-1)[0]
    w_jaw = head.lbs_weights[:, 2]
    assert moved[w_jaw == 0].max() < 1e-12
    assert (moved[w_jaw > 0.5] > 1e-3).all()
    # fully jaw-weighted vertices rotate rigidly about the jaw joint (after their pose correctives)
    full = w_jaw == 1
    R = axis_angle_to_matrix(pose[0, 2])
    J = rest.joints[0, 2]
    corrected = rest.vertices[0, full] + out.pose_offsets[0, full]
    torch.testing.assert_close(out.vertices[0, full], (corrected - J) @ R.T + J)
    assert out.pose_offsets.abs().max() > 1e-4  # the built-in jaw has a corrective


def test_eyes_are_rigged_to_eye_joints(head: HeadModel) -> None:
    shape, expr, _, _ = _params(head, B=1)
    pose = torch.zeros(1, 5, 3, dtype=torch.float64)
    pose[0, 3, 1] = 0.4  # left eye looks to the side
    rest, out = head(shape, expr), head(shape, expr, pose)
    moved = (out.vertices - rest.vertices).norm(dim=-1)[0] > 1e-9
    left = torch.zeros(head.num_vertices, dtype=torch.bool)
    left[head.regions["left_eyeball"]] = True
    assert torch.equal(moved, left & moved) and moved[left].sum() > left.sum() // 2
    centre = rest.vertices[0, left].mean(0)
    torch.testing.assert_close(out.vertices[0, left].mean(0), centre)  # spins in place
    torch.testing.assert_close(rest.joints[0, 3], centre)


def test_jaw_opens_the_lips(head: HeadModel) -> None:
    z = torch.zeros(1, head.n_shape, dtype=torch.float64)
    e = torch.zeros(1, head.n_expr, dtype=torch.float64)
    pose = torch.zeros(1, 5, 3, dtype=torch.float64)
    pose[0, 2, 0] = 0.25
    lips = head.regions["lips"]
    out = head(z, e, pose).vertices[0, lips]
    rest = head.v_template[lips]
    gap = lambda v: v[:, 1].max() - v[:, 1].min()  # noqa: E731
    assert gap(out) > gap(rest) + 0.01


def test_forward_rejects_wrong_shapes(head: HeadModel) -> None:
    with pytest.raises(ValueError, match=r"shape must have shape \[B, 20\]"):
        head(torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 15, dtype=torch.float64))
    with pytest.raises(ValueError, match="pose must have shape"):
        head(torch.zeros(1, 20, dtype=torch.float64), torch.zeros(1, 15, dtype=torch.float64),
             torch.zeros(1, 4, 3, dtype=torch.float64))


def test_flame_loader_reads_true_format_fixture(fixture_dir: Path) -> None:
    raw = (fixture_dir / "generic_model.pkl").read_bytes()
    assert b"chumpy.ch" in raw and b"csc_matrix" in raw  # the fixture really holds chumpy + sparse objects
    m = load_head_model(fixture_dir / "generic_model.pkl", n_shape=12, n_expr=8).double()
    from avatar_lightning.head.builtin import generate_builtin_head

    truth, uv, uv_faces, regions = generate_builtin_head(rows=16, cols=24)
    np.testing.assert_allclose(m.v_template.numpy(), truth["v_template"], atol=1e-6)
    np.testing.assert_allclose(m.J_regressor.numpy(), truth["J_regressor"].toarray(), atol=1e-6)
    np.testing.assert_allclose(m.exprdirs.numpy(), truth["shapedirs"][:, :, 300:308], atol=1e-6)
    np.testing.assert_array_equal(m.uv_faces.numpy(), uv_faces)
    np.testing.assert_allclose(m.uv_coords.numpy(), uv, atol=1e-6)
    assert set(m.regions) >= {"face", "scalp", "hair", "neck", "eyes", "mouth"}
    assert m.parents == [-1, 0, 1, 1, 1]
    out = m(torch.zeros(1, 12, dtype=torch.float64), torch.zeros(1, 8, dtype=torch.float64))
    torch.testing.assert_close(out.vertices[0], m.v_template)


def test_flame_loader_names_missing_key(tmp_path: Path) -> None:
    paths = write_flame_fixture(tmp_path, drop_keys=("J_regressor",))
    with pytest.raises(KeyError, match=r"generic_model\.pkl.*J_regressor"):
        load_head_model(paths.model)


def test_flame_loader_names_bad_shape_and_missing_files(fixture_dir: Path, tmp_path: Path) -> None:
    from avatar_lightning.head.flame_io import read_pickle

    data = read_pickle(fixture_dir / "generic_model.pkl")
    data["weights"] = data["weights"][:, :4]
    bad = tmp_path / "generic_model.pkl"
    bad.write_bytes(pickle.dumps(data))
    with pytest.raises(ValueError, match=r"generic_model\.pkl: key 'weights' must have shape \(\d+, 5\)"):
        load_head_model(bad)
    with pytest.raises(FileNotFoundError, match="head_template_mesh.obj"):
        load_head_model(fixture_dir / "generic_model.pkl", uv_template=tmp_path / "head_template_mesh.obj")
    with pytest.raises(FileNotFoundError, match="nothing.pkl"):
        load_head_model(tmp_path / "nothing.pkl")
    with pytest.raises(ValueError, match="n_shape=301"):
        load_head_model(fixture_dir / "generic_model.pkl", n_shape=301)


def test_lbs_gradcheck() -> None:
    g = torch.Generator().manual_seed(2)
    V, parents = 4, [-1, 0, 1, 1, 1]
    J_reg = torch.rand(5, V, generator=g, dtype=torch.float64)
    w = torch.rand(V, 5, generator=g, dtype=torch.float64)
    w /= w.sum(1, keepdim=True)
    posedirs = 0.1 * torch.randn(36, V * 3, generator=g, dtype=torch.float64)
    v = torch.randn(1, V, 3, generator=g, dtype=torch.float64, requires_grad=True)
    pose = torch.randn(1, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(v, pose):
        r = linear_blend_skinning(v, pose, J_reg, parents, w, posedirs)
        return r.vertices, r.vertex_transforms

    assert torch.autograd.gradcheck(fn, (v, pose))


def test_uv_template_and_masks_are_optional(tmp_path: Path) -> None:
    paths = write_flame_fixture(tmp_path, uv_template=False, masks=False)
    m = load_head_model(paths.model, n_shape=4, n_expr=3)
    out = m(torch.zeros(1, 4), torch.zeros(1, 3))
    torch.testing.assert_close(out.vertices[0], m.v_template)
    with pytest.raises(ValueError, match="no UV layout; pass uv_template="):
        _ = m.uv_coords
    with pytest.raises(KeyError, match="no vertex region 'face'.*FLAME_masks.pkl"):
        _ = m.regions["face"]
