"""File I/O that never leaves a half-written file behind: write to a temp file, then rename.

Every writer in the project (datasets, caches, checkpoints, exports, videos) goes through
:func:`atomic_path`, so an interrupted run leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temp file keeps ``path``'s suffix (writers such as imageio pick the format from it).
    On any exception the temp file is removed and ``path`` is untouched.

    Args:
        path: final destination. Parent folders are created.
        suffix: suffix of the temp file; defaults to ``path``'s own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_image(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> None:
    """Atomically save an image as PNG (or any format PIL knows from the suffix).

    Args:
        path: destination file.
        image: ``[3|4|1, H, W]`` float tensor in [0, 1], or an ``[H, W, (C)]`` uint8 array.
    """
    if isinstance(image, torch.Tensor):
        arr = image.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
        arr = arr.permute(1, 2, 0).numpy()
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"save_image({path}): numpy images must be uint8, got {arr.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a float tensor ``[C, H, W]`` in [0, 1] (C = 1, 3 or 4).

    Raises:
        FileNotFoundError: naming the file when it is missing.
        ValueError: naming the file when it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            arr = np.asarray(im)
    except Exception as err:  # PIL raises several unrelated types for corrupt files
        raise ValueError(f"cannot decode image {path}: {err}") from err
    if arr.ndim == 2:
        arr = arr[:, :, None]
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    return torch.from_numpy(arr.astype(np.float32) / scale).permute(2, 0, 1).contiguous()


def config_hash(config: Any) -> str:
    """A short, stable hash of a JSON-serialisable config (keys sorted) — keys caches by config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
