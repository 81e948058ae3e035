"""Pictures of a fit for a person to check, and the mesh-based foreground mask.

The overlay draws the fitted mesh as a wireframe (front-facing triangles only), the detected
landmarks (green) and the fitted ones (red) over the photo, with the frame's name and error.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from scipy.spatial import ConvexHull
from torch import Tensor

from avatar_lightning.track.fit import project


def draw_overlay(image: np.ndarray, cam_vertices: Tensor, faces: Tensor, K: Tensor, detected: np.ndarray,
                 fitted: np.ndarray, caption: str = "") -> np.ndarray:
    """The photo with the mesh wireframe (back faces culled) and both landmark sets drawn over it,
    like metrical-tracker's and DECA's visualisations.

    Args:
        image: np.ndarray  # [H, W, 3] uint8
        cam_vertices: Tensor  # [V, 3] fitted mesh in OpenCV camera space
        faces: LongTensor  # [F, 3]
        K: Tensor  # [3, 3] intrinsics, pixels
        detected: np.ndarray  # [L, 2] detected landmarks, pixels (green)
        fitted: np.ndarray  # [L, 2] projected fitted landmarks, pixels (red)
        caption: text written in the top-left corner.

    Returns:
        np.ndarray  # [H, W, 3] uint8
    """
    base = Image.fromarray(image).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    tri = cam_vertices[faces]  # [F, 3, 3]
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    front = ((normal * tri.mean(1)).sum(-1) < 0) & (tri[..., 2] > 1e-3).all(-1)
    pix = project(tri[front], K).numpy()
    for corners in pix:
        draw.polygon([tuple(p) for p in corners], outline=(255, 255, 255, 60))
    r = max(1.0, image.shape[0] / 256)
    for pts, colour in ((detected, (40, 255, 40, 255)), (fitted, (255, 40, 40, 255))):
        for x, y in pts:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    if caption:
        draw.text((4, 4), caption, fill=(255, 255, 0, 255))
    return np.asarray(Image.alpha_composite(base, layer).convert("RGB"))


def hull_mask(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Filled convex hull of 2D points (scipy's Qhull; PIL fills it).

    Args:
        points: np.ndarray  # [N, 2] pixels
        size: (H, W)

    Returns:
        np.ndarray  # [H, W] float32 in {0, 1}
    """
    hull = points[ConvexHull(points).vertices] - 0.5  # PIL fills in pixel-index coordinates
    image = Image.new("L", (size[1], size[0]), 0)
    ImageDraw.Draw(image).polygon([tuple(p) for p in hull], fill=255)
    return np.asarray(image, dtype=np.float32) / 255


def mesh_mask(covered: Tensor, points: np.ndarray, dilate: int = 2) -> np.ndarray:
    """Foreground from geometry alone: the fitted head's silhouette joined with the landmarks' hull.

    Args:
        covered: Tensor  # [H, W] bool, pixels the fitted mesh covers (``mesh_depth(...).face >= 0``)
        points: np.ndarray  # [N, 2] detected landmarks, pixels
        dilate: grow the mask by this many pixels.

    Returns:
        np.ndarray  # [H, W] float32 in {0, 1}
    """
    mask = np.maximum(covered.numpy().astype(np.float32), hull_mask(points, tuple(covered.shape)))
    if dilate:
        grown = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(2 * dilate + 1))
        mask = np.asarray(grown, dtype=np.float32) / 255
    return mask
