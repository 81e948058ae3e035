"""Avatar outputs a user can use: MP4 videos, rendered sequences and ``metrics.json``.

Every file goes through :func:`avatar_lightning.io.atomic_path`: frames are encoded into a temp
file beside the destination and renamed only once the encoder has closed cleanly, so a run that
crashes (or a frame source that raises) leaves either the previous file or none — never half an MP4.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar_lightning.io import atomic_path, write_json


def _to_uint8_hwc(frame: Tensor | np.ndarray) -> np.ndarray:
    """``[3, H, W]`` float tensor in [0, 1] (or ``[H, W, 3]`` uint8 array) -> ``[H, W, 3]`` uint8, even H and W."""
    if isinstance(frame, Tensor):
        if frame.ndim != 3 or frame.shape[0] != 3:
            raise ValueError(f"video frames must be [3, H, W] tensors, got {list(frame.shape)}")
        arr = frame.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    else:
        arr = np.asarray(frame)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"video frames as arrays must be [H, W, 3] uint8, got {arr.shape} {arr.dtype}")
    # yuv420p (what every player decodes) needs even sides: pad by edge replication.
    h, w = arr.shape[:2]
    if h % 2 or w % 2:
        arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return arr


def write_video(path: str | os.PathLike, frames: Iterable[Tensor | np.ndarray] | Tensor, fps: float = 25.0,
                quality: float = 8.0) -> int:
    """Encode frames as an H.264 MP4 (yuv420p), atomically.

    Args:
        path: destination ``.mp4``.
        frames: a ``[T, 3, H, W]`` tensor in [0, 1], or any iterable of ``[3, H, W]`` tensors /
            ``[H, W, 3]`` uint8 arrays (a generator lets frames be rendered while encoding).
        fps: frames per second.
        quality: imageio-ffmpeg quality, 0 (worst) to 10 (best).

    Returns:
        The number of frames written.

    Raises:
        ValueError: when there are no frames, or a frame has the wrong shape/size (the
            destination is then left as it was).
    """
    import imageio.v2 as iio  # imported here: only video export needs ffmpeg

    count, size = 0, None
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = iio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=quality,
                                pixelformat="yuv420p", macro_block_size=1)
        try:
            for frame in frames:
                arr = _to_uint8_hwc(frame)
                if size is None:
                    size = arr.shape
                elif arr.shape != size:
                    raise ValueError(f"write_video({path}): frame {count} is {arr.shape}, earlier frames {size}")
                writer.append_data(arr)
                count += 1
            if count == 0:
                raise ValueError(f"write_video({path}): no frames")
        finally:
            writer.close()
    return count


def read_video(path: str | os.PathLike) -> Tensor:
    """Decode a video into ``[T, 3, H, W]`` float in [0, 1] (for checks and tests).

    Raises:
        FileNotFoundError: naming the file.
    """
    import imageio.v2 as iio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    reader = iio.get_reader(path, format="FFMPEG")
    try:
        frames = [torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1) for f in reader]
    finally:
        reader.close()
    return torch.stack(frames).float() / 255.0


def _check_metrics(obj: Any, where: str) -> Any:
    """Recursively turn tensors / numpy scalars into floats, and refuse NaN/inf (named by key path)."""
    if isinstance(obj, Mapping):
        return {str(k): _check_metrics(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_check_metrics(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Tensor | np.generic):
        obj = obj.item()
    if isinstance(obj, bool | str | int) or obj is None:
        return obj
    if isinstance(obj, Real):
        if not math.isfinite(float(obj)):
            raise ValueError(f"metrics{where} is {obj}; metrics.json must hold finite numbers")
        return float(obj)
    raise TypeError(f"metrics{where} has unsupported type {type(obj).__name__}")


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``metrics.json`` atomically (sorted keys, finite numbers only).

    Args:
        path: destination file.
        metrics: nested mapping of metric name -> number (tensors and numpy scalars are converted).

    Returns:
        The JSON-ready dict that was written.
    """
    clean = _check_metrics(metrics, "")
    write_json(path, clean)
    return clean


def iter_rendered(render_fn: Callable[[int], Tensor], n_frames: int) -> Iterator[Tensor]:
    """Lazily yield ``render_fn(i)`` for i = 0..n_frames-1, each ``[3, H, W]``, without gradients.

    Rendering one frame at a time keeps memory flat for long turntables; pass the generator straight
    to :func:`write_video`.
    """
    for i in range(n_frames):
        with torch.no_grad():
            frame = render_fn(i)
        yield frame.detach().cpu()


def side_by_side(*images: Tensor, pad: int = 2, pad_value: float = 1.0) -> Tensor:
    """Concatenate ``[3, H, W]`` images horizontally with ``pad`` pixels between them -> ``[3, H, W']``."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    h = images[0].shape[-2]
    if any(img.ndim != 3 or img.shape[0] != 3 or img.shape[-2] != h for img in images):
        raise ValueError(f"side_by_side expects [3, H, W] with one H, got {[list(i.shape) for i in images]}")
    gap = images[0].new_full((3, h, pad), pad_value)
    parts: list[Tensor] = []
    for img in images:
        parts += [img, gap]
    return torch.cat(parts[:-1], dim=-1)
