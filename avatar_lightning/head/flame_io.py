"""Reading FLAME-format files without chumpy: ``generic_model.pkl``, the UV ``.obj``, ``FLAME_masks.pkl``.

FLAME pickles (FORMATS.md) are latin1 pickles whose arrays may be **chumpy** objects and whose
``J_regressor`` is a **scipy sparse** matrix. chumpy is unmaintained and not installed here, so the
unpickler maps every ``chumpy.*`` class to :class:`ChumpyStub`, which keeps the pickled state; the
array lives in the state's ``x`` field.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: key -> expected number of axes (shapes are cross-checked in :func:`validate_flame_dict`).
FLAME_KEYS: dict[str, int] = {
    "v_template": 2,
    "shapedirs": 3,
    "posedirs": 3,
    "J_regressor": 2,
    "weights": 2,
    "kintree_table": 2,
    "f": 2,
}


class ChumpyStub:
    """Stand-in for any chumpy class found in a pickle; keeps whatever state was pickled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __getstate__(self) -> Any:  # re-pickling keeps chumpy's layout
        return getattr(self, "state", None)

    def to_numpy(self) -> np.ndarray:
        state = getattr(self, "state", None)
        if isinstance(state, dict) and "x" in state:
            return np.asarray(state["x"])
        raise ValueError("chumpy object without an 'x' array in its pickled state")


class _FlameUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return ChumpyStub
        if module.startswith("numpy.core"):  # pickles written by numpy 1.x
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def to_numpy(value: Any, key: str, path: str | os.PathLike) -> np.ndarray:
    """Turn a chumpy stub, scipy sparse matrix or array-like into a dense numpy array."""
    if isinstance(value, ChumpyStub):
        try:
            return value.to_numpy()
        except ValueError as err:
            raise ValueError(f"{path}: key {key!r}: {err}") from err
    if hasattr(value, "toarray"):  # scipy.sparse, without importing scipy
        return np.asarray(value.toarray())
    return np.asarray(value)


def read_pickle(path: str | os.PathLike) -> Any:
    """Load a (possibly Python-2, chumpy-holding) pickle with latin1 decoding."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FLAME-format file not found: {path}")
    with path.open("rb") as f:
        return _FlameUnpickler(f, encoding="latin1").load()


def validate_flame_dict(data: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Check the keys and mutually consistent shapes of a densified FLAME dict.

    Raises:
        KeyError / ValueError: naming the file, the key and the expected shape.
    """
    missing = [k for k in FLAME_KEYS if k not in data]
    if missing:
        raise KeyError(f"{path}: FLAME model is missing key(s) {missing}; expected {sorted(FLAME_KEYS)}")
    for key, ndim in FLAME_KEYS.items():
        if data[key].ndim != ndim:
            raise ValueError(f"{path}: key {key!r} must have {ndim} axes, got shape {data[key].shape}")
    V = data["v_template"].shape[0]
    J = data["kintree_table"].shape[1]
    expected = {
        "v_template": (V, 3),
        "shapedirs": (V, 3, data["shapedirs"].shape[2]),
        "posedirs": (V, 3, 9 * (J - 1)),
        "J_regressor": (J, V),
        "weights": (V, J),
        "kintree_table": (2, J),
        "f": (data["f"].shape[0], 3),
    }
    for key, shape in expected.items():
        if tuple(data[key].shape) != shape:
            raise ValueError(f"{path}: key {key!r} must have shape {shape} (V={V}, J={J}), got {data[key].shape}")
    if data["f"].max() >= V or data["f"].min() < 0:
        raise ValueError(f"{path}: key 'f' indexes vertices outside [0, {V})")


def read_flame_model(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and densify a FLAME model pickle (``generic_model.pkl`` / ``flame2023.pkl``).

    Returns:
        dict with float64 ``v_template [V,3]``, ``shapedirs [V,3,K]``, ``posedirs [V,3,P]``,
        ``J_regressor [J,V]``, ``weights [V,J]``, int64 ``kintree_table [2,J]``, ``f [F,3]``.
    """
    raw = read_pickle(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a pickled dict (FLAME format), got {type(raw).__name__}")
    data = {k: to_numpy(raw[k], k, path) for k in FLAME_KEYS if k in raw}
    validate_flame_dict(data, path)
    out = {k: v.astype(np.float64) for k, v in data.items() if k not in ("kintree_table", "f")}
    out["kintree_table"] = data["kintree_table"].astype(np.int64)
    out["f"] = data["f"].astype(np.int64)
    return out


@dataclass
class ObjUV:
    """UV layout read from an ``.obj`` written as ``f v/vt``.

    Attributes:
        vertices: np.ndarray  # [V, 3]
        uv_coords: np.ndarray  # [Vt, 2] in [0, 1], OBJ convention (v up)
        faces: np.ndarray  # [F, 3] vertex indices
        uv_faces: np.ndarray  # [F, 3] indices into ``uv_coords``
    """

    vertices: np.ndarray
    uv_coords: np.ndarray
    faces: np.ndarray
    uv_faces: np.ndarray


def read_obj_uv(path: str | os.PathLike) -> ObjUV:
    """Parse the vertices, UVs and triangles of a FLAME-style template ``.obj``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"UV template mesh not found: {path}")
    verts, uvs, faces, uv_faces = [], [], [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts[0] == "vt":
            uvs.append([float(x) for x in parts[1:3]])
        elif parts[0] == "f":
            if len(parts) != 4 or any("/" not in p for p in parts[1:]):
                raise ValueError(f"{path}:{lineno}: expected a triangle written 'f v/vt v/vt v/vt', got {line!r}")
            idx = [p.split("/") for p in parts[1:]]
            faces.append([int(i[0]) - 1 for i in idx])
            uv_faces.append([int(i[1]) - 1 for i in idx])
    if not uvs or not faces:
        raise ValueError(f"{path}: no 'vt' or no 'f' lines; a UV template needs both")
    return ObjUV(np.asarray(verts, np.float64).reshape(-1, 3), np.asarray(uvs, np.float64),
                 np.asarray(faces, np.int64), np.asarray(uv_faces, np.int64))


def read_masks(path: str | os.PathLike, num_vertices: int) -> dict[str, np.ndarray]:
    """Read ``FLAME_masks.pkl``: region name -> vertex indices (int64), checked against ``num_vertices``."""
    raw = read_pickle(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a pickled dict of vertex-index arrays, got {type(raw).__name__}")
    masks = {}
    for name, value in raw.items():
        idx = to_numpy(value, name, path).astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= num_vertices):
            raise ValueError(f"{path}: region {name!r} indexes vertices outside [0, {num_vertices})")
        masks[str(name)] = idx
    return masks
