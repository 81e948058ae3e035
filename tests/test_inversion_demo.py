"""The demo's table, figures and camera choice (the fits themselves are covered by test_inversion/test_baseline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar_lightning.demo import Fit, loss_curves, markdown_table, most_frontal_view, side_by_side, summarize
from avatar_lightning.render import look_at


def fits() -> list[Fit]:
    out = []
    for identity, (inv, base) in enumerate([(25.0, 20.0), (27.0, 21.0)]):
        for method, psnr in (("inversion", inv), ("baseline", base)):
            metrics = {"novel_view": {"psnr": psnr, "ssim": 0.9}, "novel_expression": {"psnr": psnr - 1, "ssim": 0.8}}
            losses = [(0, 1, 0.5 + identity), (1, 1, 0.4), (2, 2, 0.3 + identity), (3, 2, 0.2)]
            f = Fit(method, identity, metrics, 1.0, losses=losses)
            for split in ("novel_view", "novel_expression"):
                f.renders[split] = torch.full((3, 8, 8), 0.2)
                f.targets[split] = torch.full((3, 8, 8), 0.8)
            out.append(f)
    return out


def test_summary_and_table() -> None:
    summary = summarize(fits())
    assert summary["inversion"]["novel_view/psnr"] == pytest.approx(26.0)
    assert summary["baseline"]["novel_expression/psnr"] == pytest.approx(19.5)
    table = markdown_table(fits(), [0, 1])
    assert "| SynShot inversion (prior) | 26.00 | 0.9000 | 25.00 | 0.8000 |" in table
    assert "+5.50 dB" in table and "[0, 1]" in table


def test_figures() -> None:
    grid = side_by_side(fits(), [0, 1])
    assert grid.shape[0] == 3 and grid.shape[-1] > grid.shape[-2]  # 6 tiles per row, 2 rows
    img = np.asarray(loss_curves(fits()))
    blue = (img[..., 0] == 31) & (img[..., 1] == 119) & (img[..., 2] == 180)
    assert blue[:, : img.shape[1] // 2].any() and blue[:, img.shape[1] // 2:].any()  # a curve in both panels


def test_most_frontal_view() -> None:
    eyes = torch.tensor([[0.6, 0.0, 0.1], [0.0, 0.2, 0.6], [-0.5, 0.0, -0.3]])
    w2c = look_at(eyes, torch.zeros(3, 3))
    assert most_frontal_view(w2c) == 1
