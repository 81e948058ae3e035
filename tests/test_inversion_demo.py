"""The demo's table, figures and camera choice (the fits themselves are covered by test_inversion/test_baseline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar_lightning.demo import (
    Fit,
    loss_curves,
    markdown_table,
    most_frontal_view,
    parse_noise,
    side_by_side,
    summarize,
    winner,
)
from avatar_lightning.render import look_at

SPLIT_OFFSETS = {"novel_view_near": 0.0, "novel_view_side": -2.0, "novel_view_far": -4.0, "novel_expression": -1.0}


def fits() -> list[Fit]:
    out = []
    for identity, (inv, base) in enumerate([(25.0, 20.0), (27.0, 21.0)]):
        for method, psnr in (("inversion", inv), ("baseline", base)):
            metrics = {s: {"psnr": psnr + off, "ssim": 0.9, "lpips": 0.1 + 0.01 * identity, "id": 0.5,
                           "psnr_full": psnr + 10} for s, off in SPLIT_OFFSETS.items()}
            metrics["novel_view"] = metrics["novel_view_near"]
            losses = [(0, 1, 0.5 + identity), (1, 1, 0.4), (2, 2, 0.3 + identity), (3, 2, 0.2)]
            f = Fit(method, identity, metrics, 1.0, steps=100 + identity, stop_kind="plateau", stop_reason="EMA",
                    losses=losses)
            for split in ("novel_view", "novel_expression"):
                f.renders[split] = torch.full((3, 8, 8), 0.2)
                f.targets[split] = torch.full((3, 8, 8), 0.8)
            out.append(f)
    return out


def test_summary_is_mean_and_std_over_identities_with_a_paired_delta() -> None:
    summary = summarize(fits())
    far = summary["inversion"]["novel_view_far/psnr"]
    assert far["mean"] == pytest.approx(22.0) and far["std"] == pytest.approx(np.std([21, 23], ddof=1))
    assert summary["baseline"]["novel_expression/psnr"]["mean"] == pytest.approx(19.5)
    delta = summary["delta"]["novel_view_near/psnr"]  # per identity: 5 and 6
    assert delta["mean"] == pytest.approx(5.5) and delta["std"] == pytest.approx(np.std([5, 6], ddof=1))
    assert summary["delta"]["novel_view_near/lpips"]["mean"] == pytest.approx(0.0)


def test_table_rows_winners_and_cap_flags() -> None:
    table = markdown_table(fits(), [0, 1])
    assert "| novel_view_far | SynShot inversion (prior) | 22.00 ± 1.41 | 0.900 ± 0.000 | 0.105 ± 0.007 |" in table
    assert "5.50 ± 0.71 (inversion)" in table  # PSNR Δ beyond its spread
    assert "0.000 ± 0.000 (tie)" in table
    assert "No fit reached its cap" in table and "[0, 1]" in table
    capped = fits()
    capped[1].stop_kind, capped[1].steps = "budget", 900
    assert "**Stopped by a cap, not converged: baseline/0 (budget, 900 steps).**" in markdown_table(capped, [0, 1])
    assert winner({"mean": -0.2, "std": 0.1}, "lpips") == "inversion"  # lower LPIPS is better
    assert winner({"mean": -0.2, "std": 0.1}, "psnr") == "baseline"


def test_fit_record_has_the_issue_format() -> None:
    rec = fits()[0].record()
    assert set(rec) >= {"method", "identity", "steps", "stop_reason", "seconds", "metrics"}
    assert set(rec["metrics"]) >= set(SPLIT_OFFSETS) and set(rec["metrics"]["novel_view_far"]) == {
        "psnr", "ssim", "lpips", "id"}
    assert rec["stop_reason"].startswith("plateau") and rec["capped"] is False


def test_parse_noise() -> None:
    assert parse_noise("shape=0.3,pose=0.02") == {"shape": 0.3, "pose": 0.02}
    assert parse_noise(None) is None
    with pytest.raises(ValueError, match="key=value"):
        parse_noise("shape")


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


def test_combine_seeds_reads_each_runs_summary(tmp_path) -> None:
    import json

    from avatar_lightning.demo import combine_seeds

    dirs = []
    for seed, shift in ((0, 0.0), (1, 2.0)):
        f = fits()
        for fit in f:
            if fit.method == "inversion":
                for split in SPLIT_OFFSETS:
                    fit.metrics[split]["psnr"] += shift
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"summary": summarize(f)}))
        dirs.append(d)
    table = combine_seeds(dirs)
    # near PSNR of the inversion: 26 in run 0, 28 in run 1 -> 27 ± 1.41; Δ 5.5 and 7.5
    assert "| novel_view_near | psnr | 27.00 ± 1.41 | 20.50 ± 0.00 | +5.50, +7.50 |" in table
