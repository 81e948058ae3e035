"""3DRealHead's training augmentations (paper §IV-B): a colour jitter shared by the identity texture
and the target's foreground, and a Gaussian blur of the input texture.

The jitter makes the prior follow the identity texture's colours rather than memorise them: the
same random brightness / contrast / saturation / hue change is applied to the texture the network
reads and to the head in the images it must reproduce (the background is left alone, so it stays
the known colour the renders are composited on). The blur keeps it from depending on
high-frequency detail that 1–3 casual photos do not have. Ranges: hue 0.1, the other three 0.3
(paper); the application probabilities and the blur's sigma range are chosen.

Built on kornia's ``enhance`` / ``filters`` (differentiable, device-agnostic) rather than hand copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from kornia.enhance import adjust_brightness, adjust_contrast_with_mean_subtraction, adjust_hue, adjust_saturation
from kornia.filters import gaussian_blur2d
from torch import Tensor


@dataclass
class JitterParams:
    """One colour change per sample: Tensors ``[B]``; ``apply`` is False where the sample is not jittered.

    Attributes:
        brightness: additive brightness shift.
        contrast: contrast factor (1 = unchanged).
        saturation: saturation factor (1 = unchanged).
        hue: hue rotation in radians.
        apply: BoolTensor ``[B]``.
    """

    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    apply: Tensor

    def repeat(self, times: int) -> JitterParams:
        """Each sample's parameters repeated ``times`` (for its V views): ``[B] -> [B * times]``."""
        return JitterParams(*(t.repeat_interleave(times) for t in
                              (self.brightness, self.contrast, self.saturation, self.hue, self.apply)))


def sample_jitter(batch: int, brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3,
                  hue: float = 0.1, p: float = 0.5, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> JitterParams:
    """Draw per-sample jitter parameters (torchvision ``ColorJitter`` ranges).

    Args:
        batch: B.
        brightness, contrast, saturation: factors drawn from ``[1 − x, 1 + x]`` (brightness as an
            additive shift in ``[−x, x]``).
        hue: fraction of a turn drawn from ``[−hue, hue]`` (0.1 = ±36°).
        p: probability that a sample is jittered at all.
        device: where the parameters live.
        generator: for reproducible draws.
    """
    def draw(lo: float, hi: float) -> Tensor:
        return torch.rand(batch, generator=generator).mul(hi - lo).add(lo).to(device)

    return JitterParams(brightness=draw(-brightness, brightness), contrast=draw(1 - contrast, 1 + contrast),
                        saturation=draw(1 - saturation, 1 + saturation), hue=draw(-hue, hue) * 2 * torch.pi,
                        apply=(torch.rand(batch, generator=generator) < p).to(device))


def apply_jitter(images: Tensor, params: JitterParams) -> Tensor:
    """Apply per-sample jitter: brightness, contrast, saturation, hue, in that order, clamped to [0, 1].

    Args:
        images: Tensor  # [B, 3, H, W] RGB in [0, 1].
        params: :class:`JitterParams` with B entries.

    Returns:
        Tensor  # [B, 3, H, W]; samples with ``apply`` False are returned unchanged.
    """
    x = adjust_brightness(images, params.brightness, clip_output=True)
    x = adjust_contrast_with_mean_subtraction(x, params.contrast).clamp(0, 1)
    x = adjust_saturation(x, params.saturation).clamp(0, 1)
    x = adjust_hue(x, params.hue).clamp(0, 1)
    keep = params.apply.view(-1, 1, 1, 1)
    return torch.where(keep, x, images)


def jitter_texture_and_target(uv_identity: Tensor, image: Tensor, mask: Tensor, params: JitterParams
                              ) -> tuple[Tensor, Tensor]:
    """The same colour change on the identity texture and on every view's foreground.

    Args:
        uv_identity: Tensor  # [B, 3, h, w]; unseen texels (all channels 0) stay 0.
        image: Tensor  # [B, V, 3, H, W] composited on the background.
        mask: Tensor  # [B, V, 1, H, W] foreground in [0, 1].
        params: :class:`JitterParams` with B entries.

    Returns:
        ``(uv_identity, image)`` jittered, same shapes.
    """
    B, V = image.shape[:2]
    seen = (uv_identity.abs().sum(1, keepdim=True) > 0).to(uv_identity.dtype)
    tex = apply_jitter(uv_identity, params) * seen
    jittered = apply_jitter(image.flatten(0, 1), params.repeat(V)).view_as(image)
    return tex, jittered * mask + image * (1 - mask)


def random_blur(x: Tensor, p: float = 0.5, kernel: int = 5, sigma: tuple[float, float] = (0.1, 1.5),
                generator: torch.Generator | None = None) -> Tensor:
    """Gaussian blur (kernel 5 — paper; sigma per sample from ``sigma`` — chosen) with probability ``p``.

    ``x: [B, C, H, W] -> [B, C, H, W]``.
    """
    B = x.shape[0]
    s = torch.rand(B, generator=generator).mul(sigma[1] - sigma[0]).add(sigma[0]).to(x)
    blurred = gaussian_blur2d(x, (kernel, kernel), torch.stack([s, s], -1), border_type="reflect")
    keep = (torch.rand(B, generator=generator) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(keep, blurred, x)
