"""Head-region metrics: hand-computed values, an independent SSIM, invariants, view buckets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

from avatar_lightning.lit.avatar_common import split_masks, view_angles
from avatar_lightning.metrics.head_region import (
    HeadRegionMetrics,
    MeanScores,
    SequenceTLPIPS,
    masked_psnr,
    masked_ssim,
    whole_frame_psnr,
)
from avatar_lightning.render import look_at


@pytest.fixture(scope="module")
def metrics() -> HeadRegionMetrics:
    return HeadRegionMetrics(identity=False, crop_size=64)


def _images(seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 3, size, size, generator=g)
    pred = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    mask = torch.zeros(2, 1, size, size)
    mask[:, :, 6:26, 8:24] = 1
    return pred, target, mask


def test_masked_psnr_by_hand() -> None:
    pred = torch.zeros(1, 3, 2, 2)
    target = torch.zeros(1, 3, 2, 2)
    target[0, :, 0, 0] = 0.5   # inside the mask: squared error 0.25 on 3 channels
    target[0, :, 1, 1] = 1.0   # outside: must not count
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # MSE over the 2 masked pixels × 3 channels: (3·0.25) / 6 = 0.125 -> 10·log10(8) dB
    assert float(masked_psnr(pred, target, mask)) == pytest.approx(10 * math.log10(8), abs=1e-5)
    full = 10 * math.log10(1 / ((3 * 0.25 + 3 * 1.0) / 12))
    assert float(whole_frame_psnr(pred, target)) == pytest.approx(full, abs=1e-5)


def test_full_mask_matches_whole_frame_and_torchmetrics_ssim() -> None:
    pred, target, _ = _images()
    ones = torch.ones(2, 1, 32, 32)
    torch.testing.assert_close(masked_psnr(pred, target, ones), whole_frame_psnr(pred, target))
    # torchmetrics' SSIM is an independent implementation of the same definition; it reflect-pads by
    # 5 px and keeps that border in its mean, so compare with the mean of its map's interior.
    _, full = tm_ssim(pred, target, data_range=1.0, return_full_image=True, reduction="none")
    ref = full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3))
    torch.testing.assert_close(masked_ssim(pred, target, ones), ref, atol=1e-5, rtol=0)


def test_outside_the_mask_does_not_count(metrics: HeadRegionMetrics) -> None:
    pred, target, mask = _images()
    base = metrics(pred, target, mask)
    g = torch.Generator().manual_seed(5)
    noise_p, noise_t = torch.rand(pred.shape, generator=g), torch.rand(pred.shape, generator=g)
    outside = 1 - mask
    scrambled = metrics(pred * mask + noise_p * outside, target * mask + noise_t * outside, mask)
    for key in ("psnr", "ssim", "lpips"):
        torch.testing.assert_close(scrambled[key], base[key], atol=1e-5, rtol=1e-5)
    assert (scrambled["psnr_full"] < base["psnr_full"] - 1).all()  # the labelled extra does see it


def test_scores_order_and_identity(metrics: HeadRegionMetrics) -> None:
    pred, target, mask = _images()
    same = metrics(target, target, mask)
    assert torch.isinf(same["psnr"]).logical_not().all() and (same["psnr"] >= 99.9).all()
    torch.testing.assert_close(same["ssim"], torch.ones(2))
    torch.testing.assert_close(same["lpips"], torch.zeros(2))
    worse = metrics((target + 0.8 * (torch.rand_like(target) - 0.5)).clamp(0, 1), target, mask)
    mild = metrics(pred, target, mask)
    assert (worse["psnr"] < mild["psnr"]).all() and (worse["ssim"] < mild["ssim"]).all()
    assert (worse["lpips"] > mild["lpips"]).all()


def test_empty_mask_is_skipped_by_the_mean(metrics: HeadRegionMetrics) -> None:
    pred, target, mask = _images()
    mask[1] = 0
    scores = metrics(pred, target, mask)
    assert torch.isnan(scores["psnr"][1]) and torch.isnan(scores["lpips"][1]) and torch.isfinite(scores["psnr"][0])
    mean = MeanScores()
    mean.update(scores)
    mean.update({k: v[:1] for k, v in scores.items()})
    out = mean.compute()
    assert float(out["psnr"]) == pytest.approx(float(scores["psnr"][0]), rel=1e-6)  # the mean of two equal values
    assert int(mean.counts[0]) == 2


def test_mean_scores_is_per_image_mean() -> None:
    mean = MeanScores(keys=("psnr",))
    mean.update({"psnr": torch.tensor([10.0, 20.0])})
    mean.update({"psnr": torch.tensor([40.0])})
    assert float(mean.compute()["psnr"]) == pytest.approx(np.mean([10, 20, 40]))


def test_temporal_lpips(metrics: HeadRegionMetrics) -> None:
    g = torch.Generator().manual_seed(1)
    seq = torch.rand(4, 3, 32, 32, generator=g)
    mask = torch.ones(4, 1, 32, 32)
    assert metrics.temporal_lpips(seq, seq, mask).abs().max() < 1e-6  # same motion as the target
    still = seq[:1].expand(4, -1, -1, -1)  # a prediction that does not move at all
    crops = [metrics.head_crops(seq[t:t + 1], seq[t:t + 1], mask[t:t + 1])[1] for t in range(4)]
    expected = torch.cat([metrics.lpips(crops[t], crops[t - 1]) for t in range(1, 4)])
    torch.testing.assert_close(metrics.temporal_lpips(still, seq, mask), expected, atol=1e-5, rtol=1e-4)
    assert metrics.temporal_lpips(seq[:1], seq[:1], mask[:1]).numel() == 0


def test_sequence_tlpips_streams_batches_as_one_sequence(metrics: HeadRegionMetrics) -> None:
    g = torch.Generator().manual_seed(2)
    target, pred = torch.rand(5, 3, 32, 32, generator=g), torch.rand(5, 3, 32, 32, generator=g)
    mask = torch.ones(5, 1, 32, 32)
    whole = metrics.temporal_lpips(pred, target, mask)
    stream = SequenceTLPIPS(metrics)
    for part in (slice(0, 2), slice(2, 3), slice(3, 5)):  # batches of 2, 1, 2 frames: pairs span batches
        n = part.stop - part.start
        stream.update(pred[part, None], target[part, None], mask[part, None], torch.arange(5)[part] + 10,
                      torch.zeros(n, dtype=torch.long))
    out = stream.compute()
    assert out["pairs"] == 4 and out["tlpips"] == pytest.approx(float(whole.double().mean()), abs=1e-6)


@pytest.mark.parametrize("case", ["views", "order", "identity", "single"])
def test_sequence_tlpips_refuses_what_is_not_a_sequence(metrics: HeadRegionMetrics, case: str) -> None:
    img, mask = torch.rand(3, 2, 3, 16, 16), torch.ones(3, 2, 1, 16, 16)
    frames, ids = torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.long)
    stream = SequenceTLPIPS(metrics)
    if case == "views":  # several cameras per sample: independent images, no time axis
        stream.update(img, img, mask, frames, ids)
    elif case == "order":
        stream.update(img[:, :1], img[:, :1], mask[:, :1], torch.tensor([0, 2, 1]), ids)
    elif case == "identity":
        stream.update(img[:, :1], img[:, :1], mask[:, :1], frames, torch.tensor([0, 0, 1]))
    else:
        stream.update(img[:1, :1], img[:1, :1], mask[:1, :1], frames[:1], ids[:1])
    assert stream.compute() is None


def test_shapes_are_checked(metrics: HeadRegionMetrics) -> None:
    pred, target, mask = _images()
    with pytest.raises(ValueError, match="mask"):
        metrics(pred, target, mask[:, :, :16])
    with pytest.raises(ValueError, match="must be equal"):
        metrics(pred[:, :2], target[:, :2], mask)


def test_view_angles_and_buckets() -> None:
    centre = torch.zeros(3)

    def cam(azimuth_deg: float, elevation_deg: float = 0.0) -> torch.Tensor:
        a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
        eye = torch.tensor([math.sin(a) * math.cos(e), math.sin(e), math.cos(a) * math.cos(e)]) * 2
        return look_at(eye[None], centre[None])[0]

    inputs = torch.stack([cam(-20), cam(20)])
    evals = torch.stack([cam(0), cam(60), cam(120), cam(180), cam(0, 89)])
    angles = view_angles(evals, inputs, centre)
    torch.testing.assert_close(angles, torch.tensor([20.0, 40.0, 100.0, 160.0, 89.0 - 0.0]), atol=0.6, rtol=0)
    splits = split_masks(torch.tensor([0, 0, 0, 0, 1]), angles)
    assert splits["novel_view_near"].tolist() == [True, False, False, False, False]
    assert splits["novel_view_side"].tolist() == [False, True, False, False, False]
    assert splits["novel_view_far"].tolist() == [False, False, True, True, False]
    assert splits["novel_expression"].tolist() == [False, False, False, False, True]
    assert split_masks(torch.tensor([0, 1])).keys() == {"novel_view", "novel_expression"}
