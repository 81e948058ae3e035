"""SynShotNet at tiny sizes: shapes through every stage, sampling, regressors, ablation switches."""

from __future__ import annotations

import pytest
import torch

from avatar_lightning.head.uv import sample_uv, texel_grid
from avatar_lightning.models import LatentTransformer, SynShotNet, VectorQuantizer
from avatar_lightning.models.quantizer import PassThroughQuantizer

TINY = {
    "map_resolution": 16, "latent_resolution": 4, "feature_channels": 8, "id_code_dim": 4, "expr_code_dim": 4,
    "id_codebook_size": 16, "expr_codebook_size": 16, "channels": 8, "max_channels": 16,
    "transformer_width": 16, "transformer_heads": 2, "transformer_depth": 1, "regressor_hidden": 8,
}


def _maps(b: int = 2, r: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.rand(b, 3, r, r), torch.randn(b, 3, r, r), 0.1 * torch.randn(b, 3, r, r)


def test_shapes_through_every_stage() -> None:
    net = SynShotNet(**TINY)
    out = net(*_maps())
    assert out.identity.z.shape == (2, 4, 4, 4) and out.expression.code.shape == (2, 4, 4, 4)
    assert out.identity.vq.indices.shape == (2, 4, 4)
    maps = out.maps
    assert maps.feat.shape == (2, 8, 16, 16)
    for m in (maps.tex, maps.verts, maps.expr, maps.position):
        assert m.shape == (2, 3, 16, 16)
    torch.testing.assert_close(maps.position, maps.verts + maps.expr)
    s = sample_uv(maps.feat, torch.rand(5, 7, 2))
    pred = net.regress("hair", s)
    assert pred.sh.shape == (2, 16, 3, 5, 7)
    off = pred.offsets
    assert [t.shape[1] for t in (off.position, off.rotation, off.scale, off.opacity)] == [3, 4, 3, 1]
    # zero-initialised R_gauss: the initial Gaussians render unchanged at step 0
    assert all(t.abs().max() == 0 for t in (off.position, off.rotation, off.scale, off.opacity))


def test_wrong_input_shape_is_named() -> None:
    net = SynShotNet(**TINY)
    x, v, e = _maps(r=8)
    with pytest.raises(ValueError, match="x_tex must be"):
        net(x, v, e)


def test_gradients_reach_every_component() -> None:
    net = SynShotNet(**TINY, vq_update="loss")
    out = net(*_maps())
    s = sample_uv(out.maps.feat, texel_grid(16))
    pred = net.regress("face", s)
    loss = out.maps.tex.square().mean() + out.maps.position.square().mean() + pred.sh.square().mean()
    loss = loss + pred.offsets.position.square().mean() + out.identity.vq.loss + out.expression.vq.loss
    loss.backward()
    for name, module in net.paper_modules().items():
        if name.endswith("/hair"):
            continue
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None for g in grads), name
    assert all(p.grad is None for p in net.regressors["hair"].parameters())


def test_paper_modules_are_disjoint_and_cover_every_parameter() -> None:
    net = SynShotNet(**TINY)
    seen: set[int] = set()
    for module in net.paper_modules().values():
        ids = {id(p) for p in module.parameters()}
        assert not ids & seen
        seen |= ids
    assert seen == {id(p) for p in net.parameters()}


def test_texel_grid_sampling_returns_the_map() -> None:
    maps = torch.randn(2, 5, 8, 8)
    torch.testing.assert_close(sample_uv(maps, texel_grid(8)), maps)


def test_sample_uv_is_bilinear_between_texel_centres() -> None:
    maps = torch.arange(16.0).view(1, 1, 4, 4)
    # u halfway between columns 1 and 2, v at row 0's centre (v points up: row 0 is the top, v ≈ 1)
    uv = torch.tensor([[[2.0 / 4, 1 - 0.5 / 4]]])
    assert sample_uv(maps, uv).item() == pytest.approx(1.5)
    uv = torch.tensor([[[0.5 / 4, 1 - 3.0 / 4]]])  # column 0, halfway between rows 2 and 3
    assert sample_uv(maps, uv).item() == pytest.approx(10.0)


def test_sample_uv_gradcheck() -> None:
    maps = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    uv = torch.rand(3, 2, 2, dtype=torch.float64) * 0.8 + 0.1
    assert torch.autograd.gradcheck(lambda m: sample_uv(m, uv), (maps,))


def test_transformer_starts_as_identity_and_mixes_globally() -> None:
    t = LatentTransformer(4, 3, width=8, heads=2, depth=1)
    q = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(t(q), q)
    torch.nn.init.normal_(t.out.weight)
    q2 = q.clone()
    q2[:, :, 0, 0] += 1.0  # change one corner token
    delta = (t(q2) - t(q)).abs()
    assert delta[:, :, 2, 2].sum() > 0  # the opposite corner sees it: attention is global


def test_causal_transformer_does_not_look_ahead() -> None:
    t = LatentTransformer(4, 3, width=8, heads=2, depth=1, causal=True)
    torch.nn.init.normal_(t.out.weight)
    q = torch.randn(1, 4, 3, 3)
    q2 = q.clone()
    q2[:, :, 2, 2] += 1.0  # the last token in raster order
    torch.testing.assert_close(t(q2)[:, :, :2], t(q)[:, :, :2])


def test_transformer_gradcheck() -> None:
    t = LatentTransformer(2, 2, width=4, heads=1, depth=1).double()
    torch.nn.init.normal_(t.out.weight)
    q = torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(t, (q,))


@pytest.mark.parametrize("f", [32, 64])
def test_ablation_feature_channels(f: int) -> None:
    net = SynShotNet(**{**TINY, "feature_channels": f})
    assert net(*_maps()).maps.feat.shape[1] == f
    assert net.regressors["face"].color.conv_in.in_channels == f


def test_ablation_single_layer_and_no_sampling_use_one_part() -> None:
    """One joint part: one pair of regressors, exactly the two-part network less one part's."""
    def count(net: SynShotNet) -> int:
        return sum(p.numel() for p in net.parameters())

    two = SynShotNet(**TINY)
    assert two.parts == ("face", "hair")
    per_part = sum(p.numel() for p in two.regressors["hair"].parameters())
    for flag in ("single_layer", "no_sampling"):
        net = SynShotNet(**TINY, **{flag: True})
        assert net.parts == ("all",) and list(net.regressors) == ["all"], flag
        assert count(net) == count(two) - per_part, flag
    assert SynShotNet(**TINY, no_sampling=True).no_sampling and not SynShotNet(**TINY, single_layer=True).no_sampling


def test_ablation_tex_upsampling_halves_the_feature_map() -> None:
    """x̂_feat at H/2, and sampling it on an H² texel grid is its bilinear up-sampling (Table 1)."""
    net = SynShotNet(**TINY, tex_upsampling=True)
    out = net(*_maps())
    assert out.maps.feat.shape[-2:] == (8, 8) and out.maps.tex.shape[-2:] == (16, 16)
    upsampled = torch.nn.functional.interpolate(out.maps.feat, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(sample_uv(out.maps.feat, texel_grid(16)), upsampled)


def test_ablation_without_vq() -> None:
    net = SynShotNet(**TINY, use_vq=False)
    assert isinstance(net.quant_id, PassThroughQuantizer) and isinstance(net.quant_expr, PassThroughQuantizer)
    assert isinstance(SynShotNet(**TINY).quant_id, VectorQuantizer)
    out = net(*_maps())
    torch.testing.assert_close(out.identity.vq.quantized, out.identity.z)


def test_transformer_depth_zero_disables_it() -> None:
    net = SynShotNet(**{**TINY, "transformer_depth": 0})
    assert isinstance(net.transformer_id, torch.nn.Identity)


def test_bad_resolution_ratio_is_named() -> None:
    with pytest.raises(ValueError, match="power of two"):
        SynShotNet(**{**TINY, "latent_resolution": 3})


@pytest.mark.slow
def test_paper_scale_forward() -> None:
    net = SynShotNet()  # 512² maps, F = 128
    with torch.no_grad():
        out = net(*_maps(b=1, r=512))
    assert out.maps.feat.shape == (1, 128, 512, 512)
