"""Score an avatar on real held-out frames, drive it with another subject's tracking, and write the
demo's tables and figures.

Every score is the project's head-region definition (:mod:`avatar_lightning.metrics.head_region`,
through the module's own ``compute_metrics``): prediction and target composited with the *target's*
mask — here the tracker's mask of the real frame — then PSNR / SSIM / LPIPS (AlexNet) / ID (SFace)
per frame, averaged over frames; t-LPIPS (TecoGAN's tLP) over consecutive held-out frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from avatar_lightning.lit.avatar_common import FewShotAvatar
from avatar_lightning.metrics.head_region import shared_head_metrics
from avatar_lightning.viz import make_grid

SCORES = ("psnr", "ssim", "lpips", "id", "tlpips", "psnr_full")
LABELS = {"psnr": "PSNR ↑ (dB)", "ssim": "SSIM ↑", "lpips": "LPIPS ↓", "id": "ID ↑", "tlpips": "t-LPIPS ↓",
          "psnr_full": "PSNR whole frame"}
DIGITS = {"psnr": 2, "ssim": 3, "lpips": 3, "id": 3, "tlpips": 4, "psnr_full": 2}
#: per-frame inputs of the avatar that come from the driving frame (SynShot's expression map; 3DRealHead's
#: expression offsets and mouth features)
DRIVEN_MAPS = ("uv_expression", "uv_expr_offset", "uv_mouth")


@dataclass
class FrameScores:
    """Per-frame scores of one model on held-out frames, with what it rendered.

    Attributes:
        frames: the N frame numbers.
        scores: ``{score: Tensor [N]}`` (NaN where a frame's mask is empty); ``tlpips`` is ``[N − 1]``,
            one value per consecutive pair.
        renders: Tensor  # [N, 3, H, W] in [0, 1]
        targets: Tensor  # [N, 3, H, W] the real frames (composited on the data's background)
    """

    frames: list[int]
    scores: dict[str, Tensor]
    renders: Tensor
    targets: Tensor

    def summary(self) -> dict[str, dict[str, float]]:
        """``{score: {"mean", "std", "n"}}`` over the frames with a finite score."""
        out = {}
        for key, values in self.scores.items():
            ok = values[torch.isfinite(values)].double()
            if ok.numel():
                out[key] = {"mean": float(ok.mean()), "std": float(ok.std()) if ok.numel() > 1 else 0.0,
                            "n": int(ok.numel())}
        return out


@torch.no_grad()
def score_frames(model: FewShotAvatar, frames: Dataset, batch_size: int = 4) -> FrameScores:
    """Render every held-out frame (its own expression, pose and camera) and score it; t-LPIPS over
    consecutive frames (the frames are a sequence in time order).

    Args:
        model: a fitted (or rebuilt) avatar in eval mode.
        frames: schema samples without a batch dim (V = 1 for a monocular sequence).
        batch_size: frames per render call.

    Raises:
        ValueError: ``frames`` is empty.
    """
    if len(frames) == 0:  # type: ignore[arg-type]
        raise ValueError("score_frames: no held-out frames to score")
    numbers, renders, targets, masks, scores = [], [], [], [], {k: [] for k in SCORES}
    for batch in DataLoader(frames, batch_size=batch_size):
        batch = {k: v.to(model.device) for k, v in batch.items()}
        outputs = model(batch)
        for key, value in model.compute_metrics(batch, outputs).items():
            if key in scores:
                scores[key].append(value.cpu())
        renders.append(outputs.render.rgb.flatten(0, 1).clamp(0, 1).cpu())
        targets.append(batch["image"].flatten(0, 1).cpu())
        masks.append(batch["mask"].flatten(0, 1).cpu())
        numbers += batch["frame"].repeat_interleave(batch["image"].shape[1]).tolist()
    renders, targets = torch.cat(renders), torch.cat(targets)
    scores["tlpips"] = [shared_head_metrics("cpu").temporal_lpips(renders, targets, torch.cat(masks)).cpu()]
    return FrameScores(numbers, {k: torch.cat(v) for k, v in scores.items() if v}, renders, targets)


def driving_samples(inputs: Mapping[str, Tensor], driver_reference: Tensor, frames: Iterable[Mapping[str, Tensor]]
                    ) -> list[dict[str, Tensor]]:
    """The avatar's input sample re-posed by another subject's tracked frames.

    Expression, jaw and eye pose (and the per-frame maps of :data:`DRIVEN_MAPS` the avatar reads:
    SynShot's ``uv_expression``, 3DRealHead's ``uv_expr_offset`` and the driving frame's ``uv_mouth``)
    are the driver's, taken as coefficients of the same head model; the head's rigid motion is the
    driver's *relative* to its reference frame, applied in the head frame:
    ``W'_t = W_avatar · W_ref⁻¹ · W_t`` (INSTA and the tracker keep the head pose in the camera). The
    avatar is seen by its own (first input) camera.

    Args:
        inputs: the avatar's few-shot input batch (B = 1, V views).
        driver_reference: Tensor  # [4, 4] the driver's world-to-camera in its reference frame.
        frames: the driver's samples (no batch dim, V = 1): ``expr``, ``pose``, ``world_to_cam``,
            and the :data:`DRIVEN_MAPS` the avatar reads.

    Returns:
        One B = 1, V = 1 sample per driver frame.
    """
    base = {k: v[:, :1] if k in ("image", "mask", "K", "world_to_cam") else v for k, v in inputs.items()}
    own = inputs["world_to_cam"][0, 0]
    ref_inv = torch.linalg.inv(driver_reference.double())
    out = []
    for f in frames:
        motion = ref_inv @ f["world_to_cam"][0].double()
        sample = {**base, "expr": f["expr"][None].to(own), "pose": f["pose"][None].to(own),
                  "world_to_cam": (own.double() @ motion).to(own)[None, None]}
        for key in DRIVEN_MAPS:
            if key in base:
                sample[key] = f[key][None].to(own)
        out.append(sample)
    return out


def pick(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n)`` (ends included)."""
    if n <= count:
        return list(range(n))
    return torch.linspace(0, n - 1, count).round().long().tolist()


def reenactment_strip(runs: Mapping[str, FrameScores], columns: int = 5) -> Tensor:
    """Rows: the real frames, then each model's renders of them, at ``columns`` spread held-out frames.

    Returns:
        Tensor  # [3, H', W'] grid image
    """
    first = next(iter(runs.values()))
    idx = pick(len(first.frames), columns)
    rows = [first.targets[idx]] + [r.renders[idx] for r in runs.values()]
    return make_grid(torch.cat(rows), ncol=len(idx))


def video_frames(runs: Mapping[str, FrameScores]) -> Iterable[Tensor]:
    """Side-by-side video frames ``[3, H, W·(1 + models)]``: the real frame, then each model's render."""
    first = next(iter(runs.values()))
    for i in range(len(first.frames)):
        yield torch.cat([first.targets[i]] + [r.renders[i] for r in runs.values()], dim=-1)


def _cell(stat: Mapping[str, float] | None, digits: int) -> str:
    if stat is None or not math.isfinite(stat["mean"]):
        return "—"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def scores_table(rows: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown table: one row per model (label -> :meth:`FrameScores.summary`), mean ± std over frames."""
    lines = ["| model | " + " | ".join(LABELS[k] for k in SCORES) + " |", "|---|" + "---|" * len(SCORES)]
    for label, summary in rows.items():
        lines.append(f"| {label} | " + " | ".join(_cell(summary.get(k), DIGITS[k]) for k in SCORES) + " |")
    return "\n".join(lines)


def fits_table(records: Iterable[Mapping]) -> str:
    """Markdown table of the fits: input frames, steps, why each stopped, whether a cap ended it, wall time."""
    lines = ["| fit | input frames | steps (stage 1 / phase 1) | stop | cap hit | wall (s) |",
             "|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['subject']} | {r['input_frames']} | {r['steps']} ({r['stage1_steps']}) | "
                     f"{r['stop_kind']}: {r['stop_reason']} | {'**yes**' if r['capped'] else 'no'} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)
