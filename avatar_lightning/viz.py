"""Image grids, error maps and line charts for logging and reports (no torchvision or matplotlib)."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from PIL import Image, ImageDraw
from torch import Tensor


def make_grid(images: Tensor, ncol: int | None = None, pad: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile images into one grid image.

    Args:
        images: ``[N, C, H, W]`` (C = 1 or 3; 1 is repeated to 3) in [0, 1].
        ncol: images per row; defaults to ``ceil(sqrt(N))``.
        pad: pixels between tiles.
        pad_value: colour of the padding.

    Returns:
        ``[3, rows * (H + pad) + pad, ncol * (W + pad) + pad]``.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"make_grid expects [N, 1|3, H, W], got {list(images.shape)}")
    images = images.detach().float().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, _, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    padded = images.new_full((nrow * ncol, 3, h + pad, w + pad), pad_value)
    padded[:n, :, pad:, pad:] = images
    grid = rearrange(padded, "(r c) ch h w -> ch (r h) (c w)", r=nrow, c=ncol)
    return torch.nn.functional.pad(grid, (0, pad, 0, pad), value=pad_value)


def enlarge(images: Tensor, scale: int) -> Tensor:
    """Nearest-neighbour up-sampling of ``[N, C, H, W]`` by an integer ``scale`` (small renders made readable)."""
    return torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest") if scale > 1 else images


def error_map(pred: Tensor, target: Tensor, vmax: float = 0.25) -> Tensor:
    """Per-pixel L1 error as a heat map (black → red → yellow), ``[..., 3, H, W]`` in [0, 1].

    Args:
        pred: ``[..., 3, H, W]``.
        target: same shape as ``pred``.
        vmax: mean absolute error shown at full intensity.
    """
    e = ((pred - target).abs().mean(dim=-3, keepdim=True) / vmax).clamp(0, 1)
    return torch.cat([(2 * e).clamp(max=1), (2 * e - 1).clamp(min=0), torch.zeros_like(e)], dim=-3)


#: Line colours of :func:`line_plot` (matplotlib's tab10 order).
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def line_plot(series: dict[str, list[tuple[float, float]]], title: str = "", size: tuple[int, int] = (320, 240),
              x_label: str = "step") -> Image.Image:
    """A plain line chart (no matplotlib dependency): one line per named series, with a legend.

    Args:
        series: name → [(x, y), ...] points, drawn in x order; non-finite points (a diverged loss,
            an infinite PSNR) are dropped and empty series skipped.
        title: text above the axes.
        size: (width, height) in pixels.
        x_label: text under the x axis.

    Returns:
        An RGB ``PIL.Image``; the axis ends are labelled with the data range.
    """
    w, h = size
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    x0, x1, y0, y1 = 48, w - 10, 20, h - 30
    series = {k: [(a, b) for a, b in v if math.isfinite(a) and math.isfinite(b)] for k, v in series.items()}
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text((x0, 4), title, fill="black")
    points = [p for s in series.values() for p in s]
    if not points:
        return img
    xmin, xmax = min(p[0] for p in points), max(p[0] for p in points)
    ymin, ymax = min(p[1] for p in points), max(p[1] for p in points)
    draw.text((2, y0), f"{ymax:.4g}", fill="black")
    draw.text((2, y1 - 10), f"{ymin:.4g}", fill="black")
    draw.text((x0, y1 + 4), f"{x_label} {xmin:g}", fill="black")
    draw.text((x1 - 60, y1 + 4), f"{xmax:g}", fill="black")
    legend_y = y0 + 4
    for i, (name, pts) in enumerate(series.items()):
        if not pts:
            continue
        colour = COLOURS[i % len(COLOURS)]
        xy = [(x0 + (x1 - x0) * (a - xmin) / max(xmax - xmin, 1e-12),
               y1 - (y1 - y0) * (b - ymin) / max(ymax - ymin, 1e-12)) for a, b in sorted(pts)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        else:
            draw.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=colour)
        if len(series) > 1:
            draw.line([(x1 - 90, legend_y + 5), (x1 - 76, legend_y + 5)], fill=colour, width=2)
            draw.text((x1 - 72, legend_y), name[:12], fill="black")
            legend_y += 12
    return img


def hstack_images(images: list[Image.Image]) -> Image.Image:
    """Images side by side (top-aligned, white background)."""
    out = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for image in images:
        out.paste(image, (x, 0))
        x += image.width
    return out
