"""Content keys for caches: a cached result is named by what it was derived from, not only by settings.

Every cache of derived data (UV inputs, head fits, generated datasets) puts :func:`content_key`
of its sources into its name, so changing a source with the same settings gives a new name and
the result is rebuilt; a stale one is never read.

- Tensors, arrays and JSON-able values are keyed by their exact value.
- Parameter files (FLAME models, meshes) by a sha256 of their bytes (:func:`file_digest`).
- Images by size and modification time (:func:`file_stamp`): hashing every image of a multi-view
  dataset at each start would read the whole dataset; a file rewritten with new content gets a
  new mtime (the rule ``make`` and Python's ``.pyc`` cache follow).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

BUILTIN = "builtin"


def file_stamp(path: str | os.PathLike) -> str:
    """``"<size>:<mtime_ns>"`` of a file, naming it if it is missing."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"source file not found: {path}") from None
    return f"{st.st_size}:{st.st_mtime_ns}"


@functools.lru_cache(maxsize=4096)
def _digest(path: str, stamp: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (memoised per process while its size and mtime stay the same)."""
    return _digest(str(Path(path).resolve()), file_stamp(path))


def head_model_digest(head_model: str | os.PathLike) -> str:
    """Key of a head model argument: ``"builtin"`` (versioned with the code) or the FLAME file's digest."""
    return BUILTIN if str(head_model) == BUILTIN else file_digest(head_model)


def _update(h, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous().numpy()
    if isinstance(value, np.ndarray):
        h.update(f"array{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (list, tuple)):
        h.update(f"seq{len(value)}".encode())
        for item in value:
            _update(h, item)
    else:
        h.update(json.dumps(value, sort_keys=True, default=str).encode())


def content_key(*parts: Any) -> str:
    """A short hash of tensors, arrays, nested lists of them and JSON-able values (None included).

    Returns:
        16 hex digits.
    """
    h = hashlib.sha256()
    for part in parts:
        _update(h, part)
    return h.hexdigest()[:16]
