"""Write a small FLAME model in the TRUE file format, for tests of every FLAME consumer.

The geometry is the built-in head at a coarse resolution (a few hundred vertices); the file is
what ``generic_model.pkl`` really is: a latin1-compatible protocol-2 pickle whose ``shapedirs``
and ``posedirs`` are **chumpy** objects (pickled as ``chumpy.ch.Ch`` without chumpy installed)
and whose ``J_regressor`` is a **scipy.sparse** ``csc_matrix``; plus optionally the UV template
``head_template_mesh.obj`` (``f v/vt``) and ``FLAME_masks.pkl``.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse


@dataclass
class FlameFixturePaths:
    """Where :func:`write_flame_fixture` wrote its files (``None`` when not written)."""

    model: Path
    uv_template: Path | None
    masks: Path | None


@contextlib.contextmanager
def _fake_chumpy() -> Iterator[type]:
    """A class that pickles as ``chumpy.ch.Ch`` (pickle checks the class is importable by name)."""
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    pkg, mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:  # state layout of chumpy: the value lives in 'x'
        def __init__(self, x: np.ndarray) -> None:
            self.x = x
            self._dirty_vars = set()

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    mod.Ch, pkg.ch = Ch, mod
    sys.modules.update({"chumpy": pkg, "chumpy.ch": mod})
    try:
        yield Ch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write_flame_fixture(directory: str | Path, rows: int = 16, cols: int = 24, uv_template: bool = True,
                        masks: bool = True, drop_keys: Iterable[str] = (), seed: int = 0) -> FlameFixturePaths:
    """Write ``generic_model.pkl`` (+ ``head_template_mesh.obj``, ``FLAME_masks.pkl``) into ``directory``.

    Args:
        directory: output folder (created).
        rows, cols: resolution of the built-in head the geometry comes from.
        uv_template: also write the UV template ``.obj``.
        masks: also write ``FLAME_masks.pkl`` (vertex-index arrays, FLAME's key names).
        drop_keys: model keys to leave out (to test error messages).
        seed: built-in head seed.

    Returns:
        :class:`FlameFixturePaths`.
    """
    from avatar_lightning.head.builtin import generate_builtin_head, write_obj

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model, uv, uv_faces, regions = generate_builtin_head(seed=seed, rows=rows, cols=cols)
    with _fake_chumpy() as Ch:
        data = {
            "v_template": model["v_template"],
            "shapedirs": Ch(model["shapedirs"]),
            "posedirs": Ch(model["posedirs"]),
            "J_regressor": scipy.sparse.csc_matrix(model["J_regressor"]),
            "weights": model["weights"],
            "kintree_table": model["kintree_table"],
            "f": model["f"],
            "J": np.asarray(model["J_regressor"] @ model["v_template"]),
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }
        for key in drop_keys:
            data.pop(key)
        paths = FlameFixturePaths(directory / "generic_model.pkl", None, None)
        paths.model.write_bytes(pickle.dumps(data, protocol=2))
    if uv_template:
        paths.uv_template = directory / "head_template_mesh.obj"
        write_obj(paths.uv_template, model["v_template"], uv, model["f"], uv_faces)
    if masks:
        paths.masks = directory / "FLAME_masks.pkl"
        paths.masks.write_bytes(pickle.dumps(regions, protocol=2))
    return paths
