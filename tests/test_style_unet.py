"""Style U-Net (3DRealHead §IV-A): modulated conv against a per-sample reference, shapes, paths, activations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from torch.func import functional_call

from avatar_lightning.models.style_unet import (
    MAP_CHANNELS,
    ModulatedConv2d,
    StyleUNet,
    activate_gaussian_maps,
    upsample2x,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"c_base": 256, "c_max": 16, "style_dim": 8}


def _reference_modconv(conv: ModulatedConv2d, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Slow, obvious StyleGAN2 modulated conv: one sample at a time, scale, demodulate, F.conv2d."""
    out = []
    for b in range(x.shape[0]):
        s = style[b] @ conv.affine.weight.T + conv.affine.bias  # [C_in]
        w = conv.weight / math.sqrt(conv.weight[0].numel()) * s[None, :, None, None]
        if conv.demodulate:
            w = w / torch.sqrt((w**2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        out.append(F.conv2d(x[b : b + 1], w, padding=conv.weight.shape[-1] // 2))
    return torch.cat(out)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_modulated_conv_matches_per_sample_reference(batch: int, demodulate: bool, kernel_size: int) -> None:
    torch.manual_seed(batch)
    conv = ModulatedConv2d(4, 5, style_dim=6, kernel_size=kernel_size, demodulate=demodulate).double()
    x, style = torch.randn(batch, 4, 7, 6, dtype=torch.float64), torch.randn(batch, 6, dtype=torch.float64)
    torch.testing.assert_close(conv(x, style), _reference_modconv(conv, x, style), rtol=1e-12, atol=1e-12)


def test_modulated_conv_gradcheck() -> None:
    torch.manual_seed(0)
    conv = ModulatedConv2d(2, 3, style_dim=3).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    style = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    weight = conv.weight.detach().clone().requires_grad_(True)

    def fn(x: torch.Tensor, style: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return functional_call(conv, {"weight": weight}, (x, style), strict=False)

    assert gradcheck(fn, (x, style, weight), eps=1e-6, atol=1e-6)


def test_modulated_conv_rejects_batch_mismatch() -> None:
    conv = ModulatedConv2d(2, 3, style_dim=3)
    with pytest.raises(ValueError, match="batch"):
        conv(torch.randn(2, 2, 4, 4), torch.randn(3, 3))


def test_upsample_keeps_constant_maps_and_doubles_size() -> None:
    x = torch.full((1, 2, 5, 4), 0.7, dtype=torch.float64)
    y = upsample2x(x)
    assert y.shape == (1, 2, 10, 8)
    torch.testing.assert_close(y, torch.full_like(y, 0.7))


@pytest.mark.parametrize(("resolution", "levels", "kwargs"),
                         [(64, 4, {}), (256, 6, {"c_base": 1024, "c_max": 16, "style_dim": 16})])
def test_output_and_skip_shapes(resolution: int, levels: int, kwargs: dict) -> None:
    torch.manual_seed(0)
    net = StyleUNet(resolution=resolution, levels=levels, **kwargs)
    uv_id, uv_expr = torch.rand(1, 3, resolution, resolution), torch.randn(1, 6, resolution, resolution)
    skips = net.encode_identity(uv_id)
    assert [tuple(s.shape) for s in skips] == [(1, *shape) for shape in net.skip_shapes()]
    assert [s.shape[-1] for s in skips] == [resolution >> lvl for lvl in range(1, levels + 1)]
    out = net(uv_id, uv_expr)
    assert out.shape == (1, MAP_CHANNELS, resolution, resolution) and torch.isfinite(out).all()
    assert isinstance(net.to_maps, torch.nn.Conv2d) and net.to_maps.kernel_size == (1, 1)
    assert net.to_maps.out_channels == MAP_CHANNELS


def test_width_schedule_narrows_at_fine_levels() -> None:
    net = StyleUNet(resolution=64, levels=4, c_base=1024, c_max=128)
    assert net.channels == [16, 32, 64, 128, 128]  # min(c_max, c_base / r) at r = 64, 32, 16, 8, 4


def test_identity_and_expression_paths_both_change_the_output() -> None:
    torch.manual_seed(0)
    net = StyleUNet(resolution=32, levels=3, **TINY)
    uv_id, uv_expr = torch.rand(2, 3, 32, 32), torch.randn(2, 6, 32, 32)
    base = net(uv_id, uv_expr)
    assert (net(uv_id + 0.5 * torch.rand_like(uv_id), uv_expr) - base).abs().max() > 1e-4
    assert (net(uv_id, uv_expr + 0.5 * torch.randn_like(uv_expr)) - base).abs().max() > 1e-4
    # the mouth channels (last 3 of E_expr's input) alone reach the output too
    mouth = uv_expr.clone()
    mouth[:, 3:] += 0.5
    assert (net(uv_id, mouth) - base).abs().max() > 1e-4


def test_identity_skip_maps_are_optimisable_and_broadcast() -> None:
    torch.manual_seed(0)
    net = StyleUNet(resolution=32, levels=3, **TINY)
    uv_id, uv_expr = torch.rand(1, 3, 32, 32), torch.randn(3, 6, 32, 32)
    id_skips = [s.detach().requires_grad_(True) for s in net.encode_identity(uv_id)]
    expr_skips = net.encode_expression(uv_expr)
    out = net.decode(id_skips, expr_skips)  # one identity, three driving frames
    assert out.shape == (3, MAP_CHANNELS, 32, 32)
    torch.testing.assert_close(out, net.decode([s.expand(3, -1, -1, -1) for s in id_skips], expr_skips))
    out.square().mean().backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in id_skips)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="multiple of 2\\*\\*levels"):
        StyleUNet(resolution=48, levels=5)
    net = StyleUNet(resolution=32, levels=3, **TINY)
    with pytest.raises(ValueError, match="uv_expr"):
        net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="uv_identity"):
        net(torch.rand(1, 3, 16, 16), torch.rand(1, 6, 32, 32))
    skips = net.encode_identity(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="expected 3 skip maps"):
        net.decode(skips[:2], skips)
    with pytest.raises(ValueError, match="level 1"):
        net.decode([skips[0][:, :1]] + skips[1:], skips)


def test_activation_split_is_bounded_and_named() -> None:
    torch.manual_seed(0)
    raw = 5.0 * torch.randn(2, MAP_CHANNELS, 8, 8)
    base = 0.001 + 0.002 * torch.rand(1, 1, 8, 8)
    g = activate_gaussian_maps(raw, base, scale_cap=10.0)
    assert g.offset.shape == (2, 3, 8, 8) and g.opacity.shape == (2, 1, 8, 8) and g.quat.shape == (2, 4, 8, 8)
    assert g.scale.shape == (2, 3, 8, 8) and g.sh.shape == (2, 16, 3, 8, 8)
    torch.testing.assert_close(g.quat.norm(dim=1), torch.ones(2, 8, 8))
    assert ((g.opacity > 0) & (g.opacity < 1)).all()
    torch.testing.assert_close(g.offset, 0.01 * raw[:, 0:3])  # 1 raw unit = 1 cm
    assert (g.offset.abs() <= 0.01 * raw[:, 0:3].abs().amax() + 1e-9).all()
    assert (g.scale >= base / 10 * (1 - 1e-5)).all() and (g.scale <= base * 10 * (1 + 1e-5)).all()
    assert (raw[:, 8:11].exp() > 10).any()  # the cap was exercised: plain base·exp(raw) would exceed it
    # SH are coefficient-major: channel 11 + 3k + c is coefficient k of colour c
    torch.testing.assert_close(g.sh[:, 2, 1], raw[:, 11 + 3 * 2 + 1])


def test_activation_of_zero_raw_is_the_template() -> None:
    g = activate_gaussian_maps(torch.zeros(1, MAP_CHANNELS, 4, 4), 0.003)
    torch.testing.assert_close(g.offset, torch.zeros(1, 3, 4, 4))
    torch.testing.assert_close(g.opacity, torch.full((1, 1, 4, 4), 0.7))
    torch.testing.assert_close(g.quat, torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1).expand(1, 4, 4, 4))
    torch.testing.assert_close(g.scale, torch.full((1, 3, 4, 4), 0.003))


def test_activation_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="59"):
        activate_gaussian_maps(torch.zeros(1, 58, 4, 4), 0.001)
    with pytest.raises(ValueError, match="scale_cap"):
        activate_gaussian_maps(torch.zeros(1, 59, 4, 4), 0.001, scale_cap=1.0)
