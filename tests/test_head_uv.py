"""UV toolkit: rasterisation coverage, maps, region masks, tangent frames, sampling."""

from __future__ import annotations

import pytest
import torch

from avatar_lightning.head import HeadModel, load_head_model
from avatar_lightning.head.raster import triangle_pixels
from avatar_lightning.head.uv import (
    UVRaster,
    expression_map,
    part_masks,
    position_map,
    region_masks,
    sample_uv,
    tangent_frames,
    uv_rasterize,
)


@pytest.fixture(scope="module")
def head() -> HeadModel:
    return load_head_model("builtin", n_shape=20, n_expr=15).double()


@pytest.fixture(scope="module")
def raster(head: HeadModel) -> UVRaster:
    return uv_rasterize(head.uv_coords, head.uv_faces, 256)


def _signed_areas(uv: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    t = uv[faces]
    e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    return 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])


def test_triangle_pixels_match_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    tri = torch.rand(12, 3, 2, generator=g, dtype=torch.float64) * 24 - 2  # some stick out of the grid
    tp = triangle_pixels(tri, 20, 20)
    got = {(int(f), int(r), int(c)) for f, r, c in zip(tp.face, tp.row, tp.col, strict=True)}
    want = set()
    for f in range(12):
        a, b, c = tri[f]
        for r in range(20):
            for col in range(20):
                p = torch.tensor([col + 0.5, r + 0.5], dtype=torch.float64)
                s = [((q2 - q1)[0] * (p - q1)[1] - (q2 - q1)[1] * (p - q1)[0]).item()
                     for q1, q2 in ((a, b), (b, c), (c, a))]
                if all(x >= 0 for x in s) or all(x <= 0 for x in s):
                    want.add((f, r, col))
    assert got == want
    # barycentrics reproduce the pixel centre
    centre = (tp.bary[:, :, None] * tri[tp.face]).sum(1)
    torch.testing.assert_close(centre, torch.stack([tp.col, tp.row], -1).double() + 0.5)


def test_uv_layout_has_no_overlaps_and_raster_covers_its_area(head: HeadModel, raster: UVRaster) -> None:
    areas = _signed_areas(head.uv_coords, head.uv_faces)
    assert (areas > 0).all(), "every UV triangle winds the same way (no fold-overs)"
    assert head.uv_coords.min() >= 0 and head.uv_coords.max() <= 1
    total = areas.sum().item()
    for size in (128, 384):
        r = uv_rasterize(head.uv_coords, head.uv_faces, size)
        covered = r.valid.double().mean().item()
        # texel centres inside the union; overlapping triangles would cover less than their areas' sum
        assert covered == pytest.approx(total, rel=4.0 / size)
    assert (raster.face[raster.valid] >= 0).all() and (raster.face[~raster.valid] == -1).all()


def test_head_caches_its_uv_raster(head: HeadModel) -> None:
    r = head.uv_raster(32)
    assert head.uv_raster(32) is r and head.uv_raster((32, 32)) is r
    assert torch.equal(r.face, uv_rasterize(head.uv_coords, head.uv_faces, 32).face)


def test_position_map_interpolates_vertices(head: HeadModel, raster: UVRaster) -> None:
    pos = position_map(raster, head.v_template, head.faces)
    i, j = torch.nonzero(raster.valid)[::997].T
    f = head.faces[raster.face[i, j]]
    expected = (head.v_template[f] * raster.bary[i, j][..., None]).sum(1)
    torch.testing.assert_close(pos[:, i, j].T, expected)
    assert (pos[:, ~raster.valid] == 0).all()
    batched = position_map(raster, head.v_template[None].repeat(2, 1, 1), head.faces)
    torch.testing.assert_close(batched[1], pos)


def test_expression_map_is_offset_of_expression(head: HeadModel, raster: UVRaster) -> None:
    expr = torch.randn(2, head.n_expr, dtype=torch.float64)
    shape = torch.randn(2, head.n_shape, dtype=torch.float64)
    xe = expression_map(head, raster, expr)
    diff = position_map(raster, head.canonical(shape, expr), head.faces) - position_map(
        raster, head.canonical(shape, torch.zeros_like(expr)), head.faces)
    torch.testing.assert_close(xe, diff)
    assert xe.abs().amax() > 1e-3
    assert expression_map(head, raster, torch.zeros(head.n_expr, dtype=torch.float64)).abs().max() == 0


def test_face_and_hair_masks_are_disjoint_and_cover(head: HeadModel, raster: UVRaster) -> None:
    parts = part_masks(raster, head)
    assert ((parts["face"] * parts["hair"]) == 0).all()
    torch.testing.assert_close(parts["face"] + parts["hair"], raster.valid.double())
    assert parts["hair"].sum() > 0.1 * raster.valid.sum()
    masks = region_masks(raster, head.faces, head.regions, head.num_vertices)
    assert set(masks) >= {"face", "scalp", "neck", "eyes", "mouth"}
    assert ((masks["face"] * masks["scalp"]) == 0).all()


def test_tangent_frames_of_a_linear_map() -> None:
    h = w = 16
    a, b, c = torch.tensor([0.3, 0.1, 0.0]), torch.tensor([-0.1, 0.2, 0.4]), torch.tensor([1.0, 2.0, 3.0])
    u = (torch.arange(w) + 0.5) / w
    v = 1 - (torch.arange(h) + 0.5) / h
    pos = a[:, None, None] * u[None, None, :] + b[:, None, None] * v[None, :, None] + c[:, None, None]
    valid = torch.zeros(h, w, dtype=torch.bool)
    valid[2:14, 3:12] = True
    frames = tangent_frames(pos[None], valid)[0]
    n = torch.linalg.cross(a, b)
    for k, vec in enumerate((a, b, n)):
        want = (vec / vec.norm()).expand(int(valid.sum()), 3)
        torch.testing.assert_close(frames[valid][:, :, k], want, atol=1e-5, rtol=1e-5)
    assert (frames[~valid] == 0).all()


def test_sample_uv_at_points_is_bilinear() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 4, 8, 10, generator=g, dtype=torch.float64)
    i, j = torch.meshgrid(torch.arange(8), torch.arange(10), indexing="ij")
    uv = torch.stack([(j.reshape(-1) + 0.5) / 10, 1 - (i.reshape(-1) + 0.5) / 8], -1).double()
    torch.testing.assert_close(sample_uv(maps, uv).transpose(1, 2), maps.flatten(2).transpose(1, 2), atol=1e-6,
                               rtol=1e-6)
    # a map linear in (u, v) is reproduced exactly between texel centres
    lin = (2 * uv[:, 0] - 3 * uv[:, 1]).reshape(1, 1, 8, 10)
    pts = torch.rand(50, 2, generator=g, dtype=torch.float64) * torch.tensor([0.8, 0.75]) + torch.tensor([0.05, 0.0625])
    torch.testing.assert_close(sample_uv(lin, pts)[0, 0], 2 * pts[:, 0] - 3 * pts[:, 1], atol=1e-6, rtol=1e-6)
