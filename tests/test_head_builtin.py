"""The built-in head: a closed, rigged, UV-mapped head in the FLAME layout; teeth; the cache."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_lightning.head import HeadModel, load_head_model
from avatar_lightning.head.builtin import builtin_head_files, generate_builtin_head


@pytest.fixture(scope="module")
def head() -> HeadModel:
    return load_head_model("builtin", n_shape=26, n_expr=18).double()


def test_mesh_is_closed_and_outward(head: HeadModel) -> None:
    f = head.faces.numpy()
    edges = Counter(map(tuple, np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])))
    assert all(n == 1 and edges.get((b, a)) == 1 for (a, b), n in edges.items()), "closed, manifold, consistent"
    v = head.v_template.numpy()
    volume = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
    assert 0.003 < volume < 0.008  # litres of a head with neck, normals pointing out
    size = v.max(0) - v.min(0)
    assert 0.14 < size[0] < 0.22 and 0.25 < size[1] < 0.35 and 0.18 < size[2] < 0.26


def test_has_many_smooth_decorrelated_components(head: HeadModel) -> None:
    S = head.shapedirs.reshape(-1, head.n_shape)
    assert (S.norm(dim=0) > 1e-3).all() and head.n_shape >= 20
    Sn = S / S.norm(dim=0)
    assert (Sn.T @ Sn - torch.eye(head.n_shape, dtype=S.dtype)).abs().max() < 1e-3
    E = head.exprdirs.reshape(-1, head.n_expr)
    assert (E.norm(dim=0) > 1e-3).all() and head.n_expr >= 15
    En = E / E.norm(dim=0)
    # Expressions are hand-built and correlated in pairs (smile and frown move the same corners),
    # but none may be a mix of the others, or its coefficient could not be recovered from a fit:
    # at least a quarter of each (unit) component lies outside the span of all the others.
    for k in range(head.n_expr):
        others = torch.cat([En[:, :k], En[:, k + 1:]], dim=1)
        rest = En[:, k] - others @ torch.linalg.lstsq(others, En[:, k:k + 1]).solution[:, 0]
        assert rest.norm() > 0.25, f"expression component {k} is (almost) a mix of the others"
    # smooth: displacement gradients along edges stay well below 1, so ±2σ cannot fold the mesh;
    # expressions only near their sharp features (the eyelids of a blink)
    f, v = head.faces, head.v_template
    length = (v[f[:, 0]] - v[f[:, 1]]).norm(dim=1)[:, None]
    grad = lambda b: (b[f[:, 0]] - b[f[:, 1]]).norm(dim=1) / length  # noqa: E731
    assert grad(head.shapedirs).amax() < 0.5
    assert grad(head.exprdirs).quantile(0.99, dim=0).amax() < 0.3


def test_left_and_right_expressions_are_mirror_images(head: HeadModel) -> None:
    """blink_left/blink_right and mouth_left/mouth_right (slots 7/8, 11/12 of the built-in rig)."""
    v = head.v_template
    nn = torch.cdist(v * torch.tensor([-1.0, 1.0, 1.0], dtype=v.dtype), v).argmin(1)  # mirror partner
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=v.dtype)
    for left, right in ((7, 8), (11, 12)):
        mirrored = head.exprdirs[nn, :, left] * flip
        err = (mirrored - head.exprdirs[:, :, right]).norm() / head.exprdirs[:, :, right].norm()
        assert err < 0.01, (left, right, float(err))
        # and the left one acts on the left side (+x) of the face: its motion's centroid is there
        motion = head.exprdirs[:, :, left].norm(dim=1)
        assert (motion * v[:, 0]).sum() / motion.sum() > 0.003


def test_identity_components_are_mirror_symmetric(head: HeadModel) -> None:
    v = head.v_template
    mirrored = v * torch.tensor([-1.0, 1.0, 1.0], dtype=v.dtype)
    nn = torch.cdist(mirrored, v).argmin(1)
    assert (v[nn] - mirrored).norm(dim=-1).quantile(0.9) < 1e-3  # the template is symmetric
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=v.dtype)[:, None]
    err = (head.shapedirs[nn] - head.shapedirs * flip).norm(dim=1).quantile(0.9, dim=0)
    assert (err < 0.25 * head.shapedirs.norm(dim=1).amax(0)).all()


def test_regions_are_named_and_disjoint(head: HeadModel) -> None:
    r = head.regions
    for name in ("face", "scalp", "hair", "neck", "eyes", "mouth", "lips", "left_ear", "right_ear"):
        assert len(r[name]) > 0, name
    assert len(np.intersect1d(r["face"], r["scalp"])) == 0
    assert len(np.intersect1d(r["face"], r["neck"])) == 0
    # left eye is on +x (FLAME: the subject's left)
    assert head.v_template[r["left_eyeball"], 0].mean() > 0.01


@pytest.mark.slow  # (test_flame_loader_reads_true_format_fixture also compares two generations)
def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = generate_builtin_head(seed=0, rows=12, cols=20)[0]
    b = generate_builtin_head(seed=0, rows=12, cols=20)[0]
    c = generate_builtin_head(seed=5, rows=12, cols=20)[0]
    np.testing.assert_array_equal(a["shapedirs"], b["shapedirs"])
    np.testing.assert_array_equal(a["v_template"], b["v_template"])
    assert np.abs(a["v_template"] - c["v_template"]).max() > 1e-4


def test_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import avatar_lightning.head.builtin as builtin

    calls = []
    real = builtin.generate_builtin_head
    monkeypatch.setattr(builtin, "generate_builtin_head", lambda seed: calls.append(seed) or real(seed, 12, 20))
    files = builtin_head_files(seed=3, cache_dir=tmp_path)
    again = builtin_head_files(seed=3, cache_dir=tmp_path)
    assert files == again and calls == [3]
    with files.model.open("rb") as fh:
        data = pickle.load(fh, encoding="latin1")
    assert set(data) >= {"v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f"}
    assert data["shapedirs"].shape[2] == 400 and data["posedirs"].shape[2] == 36
    assert not list(tmp_path.rglob(".*"))  # no temp files left behind


def test_teeth_follow_the_jaw(head: HeadModel) -> None:
    t = load_head_model("builtin", n_shape=26, n_expr=18, teeth=True).double()
    assert t.num_vertices == head.num_vertices + 120
    torch.testing.assert_close(t.v_template[: head.num_vertices], head.v_template)
    pose = torch.zeros(1, 5, 3, dtype=torch.float64)
    pose[0, 2, 0] = 0.3
    z_s, z_e = torch.zeros(1, 26, dtype=torch.float64), torch.zeros(1, 18, dtype=torch.float64)
    moved = (t(z_s, z_e, pose).vertices[0] - t.v_template).norm(dim=-1)
    assert (moved[t.regions["teeth_lower"]] > 1e-3).all() and moved[t.regions["teeth_upper"]].max() < 1e-12
    uv = t.uv_coords[t.uv_faces]
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    assert ((e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) > 0).all()  # still no UV fold-overs
    # the teeth sit behind the lips, inside the head
    lips_z = t.v_template[t.regions["lips"], 2].max()
    assert t.v_template[t.regions["teeth"], 2].max() < lips_z


def test_teeth_need_lip_rings(tmp_path: Path) -> None:
    from tests.flame_fixture import write_flame_fixture

    paths = write_flame_fixture(tmp_path)
    with paths.masks.open("rb") as fh:
        masks = pickle.load(fh)
    del masks["lip_outside_ring_upper"]
    paths.masks.write_bytes(pickle.dumps(masks))
    with pytest.raises(ValueError, match="lip_outside_ring_upper"):
        load_head_model(paths.model, teeth=True)
