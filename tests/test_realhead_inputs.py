"""3DRealHead conditioning inputs: feature maps against references, offsets' invariants, the data module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avatar_lightning.batch import REALHEAD_KEYS, validate_batch
from avatar_lightning.head import load_head_model
from avatar_lightning.head.uv import expression_map
from avatar_lightning.realhead.inputs import (
    expr_offset_map,
    feature_extractor,
    grey,
    hog_features,
    pca3,
    region_mask,
    sobel_features,
)


@pytest.fixture(scope="module")
def head():
    return load_head_model("builtin", n_shape=20, n_expr=15)


def test_sobel_matches_explicit_convolution_with_reflect_padding():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 17, 13, dtype=torch.float64)
    out = sobel_features(img)
    g = F.pad(grey(img), (1, 1, 1, 1), mode="reflect")
    kx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64)
    gx, gy = F.conv2d(g, kx[None, None]), F.conv2d(g, kx.T[None, None])
    ref = torch.cat([gx, gy, (gx**2 + gy**2).sqrt()], 1)
    ref = ref / ref.abs().amax(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_sobel_of_a_vertical_edge_is_horizontal_gradient_only():
    img = torch.zeros(1, 3, 16, 16)
    img[..., 8:] = 1.0
    out = sobel_features(img)
    assert out[0, 0].max() == pytest.approx(1.0)  # gx, normalised by its max
    assert out[0, 1].abs().max() < 1e-6  # no vertical gradient
    assert torch.all(out[0, 0, :, :6] == 0) and torch.all(out[0, 0, :, 10:] == 0)  # only at the edge


def test_sobel_of_a_flat_frame_is_zero_not_noise_blown_up_to_full_scale():
    # the old +1e-12 under the root made |g| of a flat frame 1e-6 everywhere, normalised to 1.0
    flat = torch.full((1, 3, 12, 12), 0.5)
    assert sobel_features(flat).abs().max() == 0
    g = torch.Generator().manual_seed(0)
    noise = 0.5 + 1e-4 * torch.rand(1, 3, 12, 12, generator=g)  # far below one 8-bit grey level
    assert sobel_features(noise).abs().max() < 0.1  # (the old code: 1.0)
    step = torch.zeros(1, 3, 12, 12)
    step[..., 6:] = 2.0 / 255  # two grey levels: a real (faint) edge still normalises to full scale
    assert sobel_features(step)[0, 0].max() == pytest.approx(1.0)


def test_pca3_is_deterministic_and_scale_invariant():
    torch.manual_seed(1)
    f = torch.randn(2, 9, 6, 5)
    a, b = pca3(f), pca3(3.0 * f + 2.0)
    assert a.shape == (2, 3, 6, 5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.allclose(a.abs().amax(dim=(-2, -1)), torch.ones(2, 3))


def test_pca3_of_a_single_position_pads_with_zeros():
    out = pca3(torch.randn(2, 36, 1, 1))
    assert out.shape == (2, 3, 1, 1) and torch.isfinite(out).all()


def test_hog_features_shape_and_response_to_texture():
    flat = torch.full((1, 3, 32, 32), 0.5)
    stripes = flat.clone()
    stripes[..., ::4] = 1.0
    assert hog_features(stripes).shape == (1, 3, 32, 32)
    assert torch.isfinite(hog_features(flat)).all()
    with pytest.raises(ValueError, match="smaller than one block"):
        hog_features(torch.rand(1, 3, 8, 8))


def test_feature_extractor_errors_name_the_setting():
    with pytest.raises(ValueError, match="mouth_features must be one of"):
        feature_extractor("sift")
    with pytest.raises(ValueError, match="dino_weights"):
        feature_extractor("dino")


def test_expr_offsets_are_expression_blendshapes_in_cm_without_jaw(head):
    raster = head.uv_raster(32)
    expr = torch.randn(3, 15) * 0.5
    ours = expr_offset_map(head, raster, expr, torch.zeros(3, 3))
    torch.testing.assert_close(ours, 100.0 * expression_map(head, raster, expr), atol=1e-4, rtol=1e-4)
    assert ours[:, :, ~raster.valid].abs().max() == 0
    zero = expr_offset_map(head, raster, torch.zeros(1, 15), torch.zeros(1, 3))
    assert zero.abs().max() < 1e-5


def test_jaw_opening_moves_the_mouth_not_the_forehead(head):
    raster = head.uv_raster(64)
    jaw = torch.tensor([[0.3, 0.0, 0.0]])
    out = expr_offset_map(head, raster, torch.zeros(1, 15), jaw)[0].norm(dim=0)  # [h, w] cm
    mouth = region_mask(head, raster, "mouth")[0] > 0
    from avatar_lightning.head.uv import region_masks

    forehead = region_masks(raster, head.faces, {"f": head.regions["forehead"]}, head.num_vertices)["f"] > 0
    assert out[mouth].max() > 0.5  # the jaw opens by centimetres
    assert out[forehead].max() < 1e-4


def test_mouth_region_lies_inside_the_face_region(head):
    raster = head.uv_raster(64)
    mouth, face = region_mask(head, raster, "mouth"), region_mask(head, raster, "face")
    assert 0 < mouth.sum() < face.sum()
    assert torch.all(face[mouth > 0] == 1)
    with pytest.raises(ValueError, match="mouth_region"):
        region_mask(head, raster, "eyes")


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    from data_modules.realhead import RealHeadSyntheticDataModule

    dm = RealHeadSyntheticDataModule(root=str(tmp_path_factory.mktemp("rh")), identities=3, expressions=3,
                                     image_size=32, cameras=8, views=2, uv_size=32, batch_size=2, texture_size=64)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_datamodule_serves_the_realhead_keys(datamodule):
    batch = next(iter(datamodule.train_dataloader()))
    dims = validate_batch(batch, require_realhead=True)
    assert dims["h"] == 32 and all(k in batch for k in REALHEAD_KEYS)


def test_identity_texture_has_no_mouth_and_mouth_map_only_mouth(datamodule):
    from avatar_lightning.realhead.inputs import region_mask

    head = load_head_model("builtin", n_shape=20, n_expr=15)
    mouth = region_mask(head, head.uv_raster(32), "mouth")[0] > 0
    maps = datamodule.identity_maps(0)
    assert maps["uv_identity_1"][:, mouth].abs().max() == 0
    assert maps["uv_identity_3"][:, ~mouth].abs().sum() > maps["uv_identity_1"][:, ~mouth].abs().sum()
    assert maps["uv_mouth"][:, :, ~mouth].abs().max() == 0
    assert maps["uv_mouth"][1:, :, mouth].abs().sum() > 0
    assert not torch.equal(maps["uv_mouth"][1], maps["uv_mouth"][2])  # differs with the expression


def test_training_mixes_one_and_three_view_identity_textures(datamodule):
    train, val = datamodule.dataset("train"), datamodule.dataset("val")
    maps = datamodule.identity_maps(int(train[0]["identity"]))
    seen = {torch.equal(train[0]["uv_identity"], maps["uv_identity_1"]) for _ in range(20)}
    assert seen == {True, False}
    vmaps = datamodule.identity_maps(int(val[0]["identity"]))
    assert all(torch.equal(val[0]["uv_identity"], vmaps["uv_identity_3"]) for _ in range(5))


def test_datamodule_rejects_bad_settings(tmp_path):
    from data_modules.realhead import RealHeadSyntheticDataModule

    for kwargs, match in (({"mouth_features": "sift"}, "mouth_features"), ({"mouth_region": "eyes"}, "mouth_region"),
                          ({"eval_identity_views": "mixed"}, "eval_identity_views")):
        with pytest.raises(ValueError, match=match):
            RealHeadSyntheticDataModule(root=str(tmp_path), identities=3, **kwargs)
