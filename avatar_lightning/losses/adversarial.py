"""Adversarial terms of 3DRealHead's prior training (paper §IV-B): hinge losses, DiffAugment, logit statistics.

The paper trains "with additional adversarial losses in the later stages" against a StyleGAN-T projected
discriminator (``models/projected_disc.py``). Hinge loss and DiffAugment follow that anchor (StyleGAN-T
``training/loss.py``, ``training/diffaug.py``); DiffAugment is written from its paper (Zhao et al.,
"Differentiable Augmentation for Data-Efficient GAN Training", 2020, §3): colour (brightness, saturation,
contrast), translation (±1/8 of the size, zero fill) and cutout (a zero square of half the size), each with
its own random draw per sample and differentiable in the image.

Logits are any shape ``[B, ...]`` (the projected discriminator gives ``[B, T]``, one per token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

DIFFAUG_POLICIES = ("color", "translation", "cutout")


def d_hinge_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge loss ``mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))`` (StyleGAN-T anchor).

    Args:
        real_logits: ``[B, ...]`` logits of real images.
        fake_logits: ``[B', ...]`` logits of generated images (detached by the caller for the D step).

    Returns:
        Scalar loss; 0 once every real logit ≥ 1 and every fake logit ≤ −1.
    """
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_hinge_loss(fake_logits: Tensor) -> Tensor:
    """Generator hinge loss ``−mean(D(fake))`` (StyleGAN-T anchor; the L_adv of 3DRealHead §IV-B).

    Args:
        fake_logits: ``[B, ...]`` logits of generated images, not detached: the gradient reaches the
            generator through the frozen backbone.

    Returns:
        Scalar loss.
    """
    return -fake_logits.mean()


@dataclass
class LogitStats:
    """How well D separates the batch (REALHEAD.md: log D's sign statistics).

    Attributes:
        real_positive: 0-dim fraction of real logits > 0, in [0, 1].
        fake_negative: 0-dim fraction of fake logits < 0, in [0, 1].
    """

    real_positive: Tensor
    fake_negative: Tensor


def logit_sign_stats(real_logits: Tensor, fake_logits: Tensor) -> LogitStats:
    """Fractions of correctly signed logits, detached (both near 1: D wins; near 0.5: D is confused).

    Args:
        real_logits: ``[B, ...]``.
        fake_logits: ``[B', ...]``.
    """
    return LogitStats(real_positive=(real_logits.detach() > 0).float().mean(),
                      fake_negative=(fake_logits.detach() < 0).float().mean())


def _uniform(batch: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """``[B, 1, 1, 1]`` uniform [0, 1) draws, from ``generator`` on its own device, then moved to ``x``."""
    device = generator.device if generator is not None else x.device
    return torch.rand(batch, 1, 1, 1, generator=generator, device=device).to(x)


def _randint(low: int, high: int, batch: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """``[B]`` integers in ``[low, high)`` from ``generator`` (on its device), moved to ``x.device``."""
    device = generator.device if generator is not None else x.device
    return torch.randint(low, high, (batch,), generator=generator, device=device).to(x.device)


def _color(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Brightness ±0.5, saturation ×[0, 2), contrast ×[0.5, 1.5) (DiffAugment §3, ``rand_*`` ops)."""
    b = x.shape[0]
    x = x + (_uniform(b, x, generator) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(b, x, generator) * 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(b, x, generator) + 0.5) + mean


def _translation(x: Tensor, ratio: float, generator: torch.Generator | None) -> Tensor:
    """Shift each sample by whole pixels in ``[−s, s]``, ``s = round(ratio · size)``, filling with zeros."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty, tx = _randint(-sh, sh + 1, b, x, generator), _randint(-sw, sw + 1, b, x, generator)
    padded = F.pad(x, [sw, sw, sh, sh])
    rows = torch.arange(h, device=x.device)[None] + sh - ty[:, None]  # [B, H] rows of the padded image
    cols = torch.arange(w, device=x.device)[None] + sw - tx[:, None]  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return rearrange(padded[batch, :, rows[:, :, None], cols[:, None, :]], "b h w c -> b c h w")


def _cutout(x: Tensor, ratio: float, generator: torch.Generator | None) -> Tensor:
    """Zero one ``ratio·H × ratio·W`` rectangle per sample, centred anywhere in the image (may be clipped)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = _randint(0, h + (1 - ch % 2), b, x, generator) - ch // 2
    left = _randint(0, w + (1 - cw % 2), b, x, generator) - cw // 2
    ys = torch.arange(h, device=x.device)[None, :, None]  # [1, H, 1]
    xs = torch.arange(w, device=x.device)[None, None, :]  # [1, 1, W]
    inside = ((ys >= top[:, None, None]) & (ys < (top + ch)[:, None, None])
              & (xs >= left[:, None, None]) & (xs < (left + cw)[:, None, None]))  # [B, H, W]
    return x * (~inside)[:, None].to(x)


def diff_augment(x: Tensor, policy: Sequence[str] = ("color", "translation"), generator: torch.Generator | None = None,
                 translation_ratio: float = 0.125, cutout_ratio: float = 0.5) -> Tensor:
    """DiffAugment (Zhao et al. 2020, §3; StyleGAN-T anchor), differentiable in ``x``.

    Applied to real and fake images alike before the discriminator. The random draws depend only on the
    generator state and ``x``'s shape, never its values, so two calls with equally seeded generators apply the
    identical transform to paired inputs. Operations run in the fixed order colour, translation, cutout,
    whatever the order in ``policy``.

    Args:
        x: ``[B, C, H, W]`` images in [-1, 1] (the range the colour magnitudes were designed for).
        policy: subset of :data:`DIFFAUG_POLICIES`; empty returns ``x``.
        generator: source of randomness (its own device; draws are moved to ``x.device``); None uses the
            global generator of ``x.device``.
        translation_ratio: largest shift as a fraction of the size (1/8).
        cutout_ratio: cutout side as a fraction of the size (1/2).

    Returns:
        ``[B, C, H, W]`` augmented images (colour may leave [-1, 1], as in the original).

    Raises:
        ValueError: unknown policy name, or ``x`` not 4-D.
    """
    unknown = set(policy) - set(DIFFAUG_POLICIES)
    if unknown or x.ndim != 4:
        raise ValueError(f"diff_augment: policy must be a subset of {DIFFAUG_POLICIES} (got {list(policy)}) "
                         f"and x [B, C, H, W] (got {list(x.shape)})")
    if "color" in policy:
        x = _color(x, generator)
    if "translation" in policy:
        x = _translation(x, translation_ratio, generator)
    if "cutout" in policy:
        x = _cutout(x, cutout_ratio, generator)
    return x
