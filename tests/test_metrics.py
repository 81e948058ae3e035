"""Metrics: the PSNR/SSIM collection and CodebookUsage accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from avatar_lightning.metrics import CodebookUsage, image_metrics


def test_image_metrics_psnr_by_hand() -> None:
    metrics = image_metrics("val/")
    target = torch.zeros(1, 3, 16, 16)
    pred = torch.full_like(target, 0.1)
    values = metrics(pred, target)
    assert set(values) == {"val/psnr", "val/ssim"}
    assert values["val/psnr"].item() == pytest.approx(20.0, abs=1e-4)  # 10·log10(1 / 0.01)


def test_codebook_usage_accumulates_over_updates() -> None:
    metric = CodebookUsage(num_codes=8)
    metric.update(torch.tensor([[0, 0], [1, 1]]))
    metric.update(torch.tensor([2, 3, -1]))  # −1 (unquantised) is ignored
    out = metric.compute()
    assert out["usage"].item() == pytest.approx(4 / 8)
    p = torch.tensor([2, 2, 1, 1]) / 6
    assert out["perplexity"].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    metric.reset()
    metric.update(torch.tensor([5]))
    assert metric.compute()["usage"].item() == pytest.approx(1 / 8)


def test_codebook_usage_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="K=4"):
        CodebookUsage(4).update(torch.tensor([4]))
