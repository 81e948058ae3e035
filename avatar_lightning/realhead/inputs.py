"""3DRealHead's UV-space inputs (paper §IV-A; design: ``shared/REALHEAD.md`` "Data the prior needs").

Three maps condition the Style U-Net, all ``[3, h, w]`` on the head model's UV layout:

- ``uv_identity`` — the neutral frame's RGB back-projected from 1 (frontal) or 3 (frontal and two
  side) views, unseen texels 0, the mouth region zeroed (paper §IV-A: the mouth comes from the
  driving signal, never from the identity).
- ``uv_expr_offset`` — canonical expression offsets: vertices(shape 0, expression, jaw) minus
  vertices(shape 0, neutral), every other pose zero, rasterised into UV, in **centimetres**.
- ``uv_mouth`` — the driving signal: features of the **frontal** driving frame (Sobel gx, gy, |g|
  by default; RGB, HOG or DINO for the paper's Table III) back-projected through the tracked mesh
  and multiplied by the UV mask of the mouth (lips + mouth interior) or, for Table II's "Full"
  ablation, of the whole face.

Dimension letters: V views, H W image, h w UV map, S/E shape/expression dims.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import filter2d, get_spatial_gradient_kernel2d
from torch import Tensor

from avatar_lightning.head.texture import backproject_texture
from avatar_lightning.head.uv import UVRaster, interpolate, region_masks

#: ``uv_mouth`` feature kinds: the paper's Sobel gradients and Table III's alternatives.
MOUTH_FEATURES = ("sobel", "rgb", "hog", "dino")
#: Regions the driving features are kept on: the mouth (paper default) or the face (Table II "Full").
MOUTH_REGIONS = ("mouth", "face")
#: Head-model regions that make up each of :data:`MOUTH_REGIONS`.
REGION_PARTS = {"mouth": ("lips", "mouth_interior"), "face": ("face", "lips", "mouth_interior", "nose",
                                                              "eye_region", "forehead")}
#: ITU-R BT.601 luma weights (RGB -> grey), as OpenCV's ``cvtColor(RGB2GRAY)``.
LUMA = (0.299, 0.587, 0.114)


def grey(image: Tensor) -> Tensor:
    """RGB -> luma. ``image: [B, 3, H, W] -> [B, 1, H, W]``."""
    w = image.new_tensor(LUMA).view(1, 3, 1, 1)
    return (image * w).sum(1, keepdim=True)


#: Smallest gradient that normalises to full scale: one 8-bit grey level (a Sobel response of a
#: step of 1/255). A frame whose largest gradient is below it (flat, or only rounding noise) keeps
#: its tiny values instead of having them blown up to ±1.
MIN_GRADIENT = 1.0 / 255.0


def _max_normalise(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Divide each (sample, channel) by its max |value| over the frame, at least ``eps``: ``[B, C, H, W]``."""
    return x / x.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(eps)


def sobel_features(image: Tensor) -> Tensor:
    """Sobel gx, gy and |g| of the grey frame, each normalised by its max over the frame (paper §IV-A).

    3×3 Sobel kernels (kornia), reflect padding.

    Args:
        image: Tensor  # [B, 3, H, W] RGB in [0, 1].

    Returns:
        Tensor  # [B, 3, H, W] (gx, gy in [-1, 1], |g| in [0, 1]); a channel whose largest response is
        below :data:`MIN_GRADIENT` is divided by that instead (a flat frame gives zeros).
    """
    kernel = get_spatial_gradient_kernel2d("sobel", 1, device=image.device, dtype=image.dtype)  # [2, 3, 3]
    g = grey(image)
    gx = filter2d(g, kernel[0:1], border_type="reflect")
    gy = filter2d(g, kernel[1:2], border_type="reflect")
    mag = torch.hypot(gx, gy)  # exact 0 on a flat frame (no +eps under the root to blow up)
    return _max_normalise(torch.cat([gx, gy, mag], 1), eps=MIN_GRADIENT)


def pca3(features: Tensor) -> Tensor:
    """Per-sample PCA of feature vectors to 3 channels, signs fixed, each channel max-normalised.

    The sign of each component is chosen so that its largest-magnitude loading is positive, which
    makes the projection deterministic for a given frame (SVD signs are arbitrary).

    Args:
        features: Tensor  # [B, C, h, w] with C >= 3.

    Returns:
        Tensor  # [B, 3, h, w]; channels beyond the rank of the centred features are 0.
    """
    b, c, h, w = features.shape
    x = features.reshape(b, c, h * w).transpose(1, 2).double()  # [B, hw, C]
    x = x - x.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh [B, C, C]
    comps = vh[:, :3]  # [B, k, C], k = min(3, hw, C): fewer when the map has fewer than 3 positions
    idx = comps.abs().argmax(-1, keepdim=True)
    comps = comps * torch.sign(torch.gather(comps, -1, idx))
    out = (x @ comps.transpose(1, 2)).transpose(1, 2)
    out = F.pad(out, (0, 0, 0, 3 - out.shape[1])).reshape(b, 3, h, w)  # missing components are 0
    return _max_normalise(out).to(features.dtype)


def hog_features(image: Tensor, orientations: int = 9, cell: int = 8, block: int = 2) -> Tensor:
    """HOG (scikit-image; 9 bins, 8×8 cells, 2×2 blocks, L2-Hys) of the grey frame, PCA to 3 channels
    and upsampled to the frame (paper Table III's HOG mouth features).

    Args:
        image: Tensor  # [B, 3, H, W] RGB in [0, 1]; H, W >= ``cell * block``.

    Returns:
        Tensor  # [B, 3, H, W], not differentiable (a conditioning input).

    Raises:
        ValueError: when the frame is smaller than one HOG block.
    """
    from skimage.feature import hog

    H, W = image.shape[-2:]
    if min(H, W) < cell * block:
        raise ValueError(f"hog_features: frame {H}x{W} is smaller than one block ({cell * block} px)")
    out = []
    for g in grey(image).detach().cpu().double().numpy()[:, 0]:
        f = hog(g, orientations=orientations, pixels_per_cell=(cell, cell), cells_per_block=(block, block),
                block_norm="L2-Hys", feature_vector=False)  # [rows, cols, block, block, bins]
        out.append(torch.from_numpy(np.ascontiguousarray(f.reshape(*f.shape[:2], -1))).permute(2, 0, 1))
    feats = pca3(torch.stack(out)).to(image)
    return F.interpolate(feats, size=(H, W), mode="bilinear", align_corners=False)


def dino_features(image: Tensor, vit: torch.nn.Module) -> Tensor:
    """DINO ViT patch tokens of the last block, PCA to 3 channels, upsampled (paper Table III).

    Args:
        image: Tensor  # [B, 3, H, W] RGB in [0, 1].
        vit: a :class:`~avatar_lightning.models.vit.ViT` (e.g. from ``load_dino_vit``).

    Returns:
        Tensor  # [B, 3, H, W]
    """
    from avatar_lightning.models.projected_disc import imagenet_normalise

    H, W = image.shape[-2:]
    x = F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False)
    with torch.no_grad():
        tokens = vit.forward_features(imagenet_normalise(x), taps=(11,))[-1]  # [B, 1 + n, C]
    n = tokens.shape[1] - 1
    side = int(round(n**0.5))
    patches = tokens[:, -side * side:].transpose(1, 2).reshape(image.shape[0], -1, side, side)
    return F.interpolate(pca3(patches), size=(H, W), mode="bilinear", align_corners=False)


def feature_extractor(kind: str, vit: torch.nn.Module | None = None) -> Callable[[Tensor], Tensor]:
    """The ``[B, 3, H, W] -> [B, 3, H, W]`` driving-feature function named by ``kind``.

    Raises:
        ValueError: an unknown kind, or ``"dino"`` without a ViT.
    """
    if kind == "sobel":
        return sobel_features
    if kind == "rgb":
        return lambda x: x
    if kind == "hog":
        return hog_features
    if kind == "dino":
        if vit is None:
            raise ValueError("mouth_features='dino' needs DINO ViT-S/16 weights: set the data's mouth_dino_weights "
                             "to a dino_deitsmall16_pretrain.pth (none can be downloaded here)")
        return lambda x: dino_features(x, vit)
    raise ValueError(f"mouth_features must be one of {MOUTH_FEATURES}, got {kind!r}")


def region_mask(head, raster: UVRaster, region: str = "mouth") -> Tensor:
    """UV mask of a driving region: ``mouth`` (lips + mouth interior) or ``face``.

    Returns:
        Tensor  # [1, h, w] in {0, 1}

    Raises:
        ValueError: an unknown region.
    """
    if region not in REGION_PARTS:
        raise ValueError(f"mouth_region must be one of {MOUTH_REGIONS}, got {region!r}")
    idx = torch.cat([torch.as_tensor(np.asarray(head.regions[p])).long() for p in REGION_PARTS[region]]).unique()
    mask = region_masks(raster, head.faces, {"r": idx}, head.num_vertices)["r"]
    return (mask * raster.valid)[None]


def canonical_pose(jaw: Tensor) -> Tensor:
    """Pose with only the jaw set (global, neck and eyes zero): ``[..., 3] -> [..., 5, 3]``."""
    pose = jaw.new_zeros(*jaw.shape[:-1], 5, 3)
    pose[..., 2, :] = jaw
    return pose


def expr_offset_map(head, raster: UVRaster, expr: Tensor, jaw: Tensor) -> Tensor:
    """Canonical expression offsets in UV, in cm (paper §IV-A).

    vertices(shape 0, ``expr``, jaw pose) − vertices(shape 0, neutral), with global/neck/eye pose and
    translation zero, so the map carries the expression and the jaw opening but never the head's
    identity or its rigid motion.

    Args:
        head: :class:`~avatar_lightning.head.HeadModel`.
        raster: its UV raster.
        expr: Tensor  # [B, E]
        jaw: Tensor  # [B, 3] axis-angle.

    Returns:
        Tensor  # [B, 3, h, w] in centimetres, 0 off the layout.
    """
    shape = expr.new_zeros(expr.shape[0], head.n_shape)
    zeros3 = expr.new_zeros(expr.shape[0], 3)
    posed = head(shape, expr, canonical_pose(jaw), zeros3).vertices
    rest = head(shape, torch.zeros_like(expr), canonical_pose(zeros3), zeros3).vertices
    return 100.0 * interpolate(raster, posed - rest, head.faces)


def backproject_features(head, raster: UVRaster, features: Tensor, masks: Tensor | None, K: Tensor,
                         world_to_cam: Tensor, shape: Tensor, expr: Tensor, pose: Tensor,
                         translation: Tensor) -> Tensor:
    """Back-project per-pixel 3-channel features of V views of one frame onto UV through its tracked mesh.

    Args:
        head: :class:`~avatar_lightning.head.HeadModel`.
        raster: its UV raster.
        features: Tensor  # [V, 3, H, W] (RGB, Sobel, ... per pixel).
        masks: Tensor  # [V, 1, H, W] foreground, or None.
        K: Tensor  # [V, 3, 3]
        world_to_cam: Tensor  # [V, 4, 4] OpenCV.
        shape: Tensor  # [S]
        expr: Tensor  # [E]
        pose: Tensor  # [5, 3]
        translation: Tensor  # [3]

    Returns:
        Tensor  # [3, h, w], 0 on texels no view sees.
    """
    dt = head.v_template
    out = head(shape[None].to(dt), expr[None].to(dt), pose[None].to(dt), translation[None].to(dt))
    baked = backproject_texture(raster, out.vertices[0], head.faces, features.to(dt), K.to(dt),
                                world_to_cam.to(dt), None if masks is None else masks.to(dt))
    return baked.texture * (baked.weight > 0)
