"""Texture back-projection with visibility, the mesh z-buffer, and the DataModules' uv_inputs."""

from __future__ import annotations

import pytest
import torch

from avatar_lightning.batch import validate_batch
from avatar_lightning.head import HeadModel, load_head_model
from avatar_lightning.head.lbs import apply_transforms
from avatar_lightning.head.raster import mesh_depth
from avatar_lightning.head.texture import backproject_texture, uv_inputs
from avatar_lightning.head.uv import sample_uv, uv_rasterize
from avatar_lightning.render import intrinsics_from_fov, look_at

SIZE = 128


@pytest.fixture(scope="module")
def head() -> HeadModel:
    return load_head_model("builtin", n_shape=20, n_expr=15).double()


def _texture(h: int = 64) -> torch.Tensor:
    """A smooth, colourful texture (low frequency, so resampling error is small)."""
    v, u = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(h) + 0.5) / h, indexing="ij")
    return torch.stack([0.5 + 0.4 * torch.sin(6.28 * u), 0.5 + 0.4 * torch.cos(6.28 * v),
                        0.5 + 0.3 * torch.sin(6.28 * (u + v))]).double()


def _render_textured_mesh(head, verts, texture, K, w2c):
    """Exact textured-mesh render: per pixel the nearest triangle's UV, then a bilinear texture lookup."""
    images, masks = [], []
    for k in range(K.shape[0]):
        zb = mesh_depth(apply_transforms(w2c[k], verts), head.faces, K[k], SIZE, SIZE)
        hit = zb.face >= 0
        uv_tri = head.uv_coords[head.uv_faces[zb.face.clamp_min(0)]]  # [H, W, 3, 2]
        uv = (uv_tri * zb.bary[..., None]).sum(-2)
        rgb = sample_uv(texture[None], uv.reshape(-1, 2))[0].reshape(3, SIZE, SIZE)
        images.append(rgb * hit)
        masks.append(hit[None].double())
    return torch.stack(images), torch.stack(masks)


def _cameras():
    K = intrinsics_from_fov(torch.tensor([22.0, 22.0]), SIZE, SIZE).double()
    eyes = torch.tensor([[0.0, 0.02, 0.7], [0.45, 0.05, 0.55]], dtype=torch.float64)
    return K, look_at(eyes, torch.zeros(2, 3, dtype=torch.float64))


def test_mesh_depth_matches_plane_depth() -> None:
    verts = torch.tensor([[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 4.0]], dtype=torch.float64)
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]], dtype=torch.float64)
    zb = mesh_depth(verts, torch.tensor([[0, 1, 2]]), K, 64, 64)
    i, j = torch.nonzero(zb.face >= 0).T
    # ray through each pixel centre meets the plane of the triangle at the buffer's depth
    rays = torch.stack([(j + 0.5 - 32) / 50, (i + 0.5 - 32) / 50, torch.ones_like(i, dtype=torch.float64)], -1)
    n = torch.linalg.cross(verts[1] - verts[0], verts[2] - verts[0])
    t = (verts[0] @ n) / (rays @ n)
    torch.testing.assert_close(zb.depth[i, j], t)
    pts = (zb.bary[i, j][..., None] * verts).sum(1)
    torch.testing.assert_close(pts, rays * t[:, None])  # perspective-correct barycentrics


def test_backprojection_recovers_texture_on_visible_texels(head: HeadModel) -> None:
    texture = _texture()
    raster = uv_rasterize(head.uv_coords, head.uv_faces, 64)
    pose = torch.zeros(1, 5, 3, dtype=torch.float64)
    pose[0, 0, 1] = 0.2  # jaw closed: the lips hide the mouth cavity
    verts = head(torch.zeros(1, 20, dtype=torch.float64), torch.zeros(1, 15, dtype=torch.float64), pose).vertices[0]
    K, w2c = _cameras()
    images, masks = _render_textured_mesh(head, verts, texture, K, w2c)
    baked = backproject_texture(raster, verts, head.faces, images, K, w2c, masks)
    seen = baked.weight[0] > 0.2
    assert seen.sum() > 0.25 * raster.valid.sum()
    err = (baked.texture - texture).abs()[:, seen]
    assert err.mean() < 0.02 and torch.quantile(err.flatten(), 0.95) < 0.06
    # the back of the head and the inside of the mouth are seen by neither camera
    back = torch.zeros(head.num_vertices, dtype=torch.bool)
    back[head.v_template[:, 2] < -0.10] = True
    back[head.regions["mouth_interior"]] = True
    from avatar_lightning.head.uv import region_masks

    hidden = region_masks(raster, head.faces, {"hidden": torch.nonzero(back)[:, 0]}, head.num_vertices)["hidden"]
    assert baked.weight[0][hidden > 0].max() == 0


def test_uv_inputs_fill_the_batch_schema(head: HeadModel) -> None:
    raster = uv_rasterize(head.uv_coords, head.uv_faces, 32)
    K, w2c = _cameras()
    images = torch.rand(2, 3, SIZE, SIZE, dtype=torch.float64)
    shape, expr = torch.randn(20, dtype=torch.float64), torch.randn(15, dtype=torch.float64)
    out = uv_inputs(head, raster, shape, expr, images, torch.ones(2, 1, SIZE, SIZE, dtype=torch.float64), K, w2c,
                    torch.zeros(5, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert set(out) == {"uv_texture", "uv_position", "uv_expression"}
    batch = {k: v[None] for k, v in out.items()}
    batch |= {"image": images[None], "mask": torch.ones(1, 2, 1, SIZE, SIZE, dtype=torch.float64), "K": K[None],
              "world_to_cam": w2c[None], "shape": shape[None], "expr": expr[None],
              "pose": torch.zeros(1, 5, 3, dtype=torch.float64), "translation": torch.zeros(1, 3, dtype=torch.float64),
              "identity": torch.zeros(1, dtype=torch.long), "frame": torch.zeros(1, dtype=torch.long),
              "background": torch.zeros(1, 3, dtype=torch.float64)}
    assert validate_batch(batch, require_uv=True)["h"] == 32
    neutral = head.canonical(shape[None], torch.zeros(1, 15, dtype=torch.float64))[0]
    i, j = torch.nonzero(raster.valid)[5]
    f = head.faces[raster.face[i, j]]
    torch.testing.assert_close(out["uv_position"][:, i, j], (neutral[f] * raster.bary[i, j][:, None]).sum(0))
