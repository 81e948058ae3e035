"""The standard 3DGS PLY (Inria layout) that splat viewers open, and a reader that round-trips it.

Layout (FORMATS.md): binary little-endian float32 vertex properties
``x y z nx ny nz f_dc_0..2 f_rest_0..44 opacity scale_0..2 rot_0..3`` where ``f_rest`` is
channel-major (all R higher-order coefficients, then G, then B), ``opacity`` is a logit,
``scale_*`` are log-scales and ``rot_*`` is the wxyz quaternion. All 45 ``f_rest`` fields are
always written (zero-padded below degree 3): viewers expecting degree 3 reject fewer.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..io import atomic_path
from .types import Gaussians

SH_REST = 15  # higher-order coefficients per channel at degree 3
PLY_FIELDS = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
              + [f"f_rest_{i}" for i in range(3 * SH_REST)] + ["opacity"]
              + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
_PLY_TYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "uint8": "u1",
              "char": "i1", "int8": "i1", "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
              "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4"}
_EPS = 1e-7


def save_ply(path: str | os.PathLike, gaussians: Gaussians) -> None:
    """Write an unbatched Gaussian set as a 3DGS PLY, atomically.

    Args:
        path: destination ``.ply``.
        gaussians: fields ``[N, ...]``; SH degree 0..3 (missing coefficients are written as 0,
            opacities are clamped to [1e-7, 1 − 1e-7] before the logit).
    """
    if gaussians.batched:
        raise ValueError(f"save_ply({path}): expected unbatched Gaussians [N, ...], got means "
                         f"{tuple(gaussians.means.shape)}; save one avatar at a time")
    g = gaussians.detach().to("cpu", torch.float64)
    n = g.num_gaussians
    sh = torch.zeros(n, 1 + SH_REST, 3, dtype=torch.float64)
    k = min(g.sh.shape[1], 1 + SH_REST)
    sh[:, :k] = g.sh[:, :k]
    rest = sh[:, 1:].transpose(1, 2).reshape(n, 3 * SH_REST)  # channel-major
    o = g.opacities.clamp(_EPS, 1 - _EPS)
    cols = torch.cat([g.means, torch.zeros(n, 3, dtype=torch.float64), sh[:, 0], rest,
                      torch.log(o / (1 - o))[:, None], torch.log(g.scales), g.quats], dim=1)
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
                       + [f"property float {name}" for name in PLY_FIELDS] + ["end_header"]) + "\n"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(cols.numpy().astype("<f4").tobytes())


def _read_header(f, path) -> tuple[int, list[tuple[str, str]]]:
    if f.readline().strip() != b"ply":
        raise ValueError(f"load_ply({path}): not a PLY file (missing 'ply' magic)")
    count, props, in_vertex = None, [], False
    while True:
        line = f.readline()
        if not line:
            raise ValueError(f"load_ply({path}): header has no 'end_header'")
        words = line.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format" and words[1] != "binary_little_endian":
            raise ValueError(f"load_ply({path}): only binary_little_endian is supported, got '{words[1]}'")
        if words[0] == "element":
            in_vertex = words[1] == "vertex"
            count = int(words[2]) if in_vertex else count
        elif words[0] == "property" and in_vertex:
            if words[1] == "list" or words[1] not in _PLY_TYPES:
                raise ValueError(f"load_ply({path}): unsupported vertex property '{' '.join(words[1:])}'")
            props.append((words[2], "<" + _PLY_TYPES[words[1]]))
    if count is None:
        raise ValueError(f"load_ply({path}): no 'element vertex' in header")
    return count, props


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (Inria layout; extra vertex properties are ignored).

    The SH degree is inferred from the number of ``f_rest_*`` fields (0, 9, 24 or 45).

    Returns:
        :class:`Gaussians` in float32 with ``sh [N, (degree+1)², 3]``, linear scales, opacities
        in [0, 1] and the quaternions as stored (wxyz).
    """
    with open(path, "rb") as f:
        n, props = _read_header(f, path)
        data = np.frombuffer(f.read(), dtype=np.dtype(props), count=n)
    names = {p for p, _ in props}
    required = [p for p in PLY_FIELDS if not p.startswith(("f_rest", "n"))]
    missing = [p for p in required if p not in names]
    if missing:
        raise ValueError(f"load_ply({path}): missing vertex properties {missing}")
    n_rest = sum(p.startswith("f_rest_") for p in names)
    if n_rest not in (0, 9, 24, 45):
        raise ValueError(f"load_ply({path}): {n_rest} f_rest fields; expected 0, 9, 24 or 45")

    def cols(fields: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([data[p].astype(np.float32) for p in fields], axis=1))

    k_rest = n_rest // 3
    dc = cols([f"f_dc_{i}" for i in range(3)])[:, None]
    rest = cols([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k_rest).transpose(1, 2)
    return Gaussians(means=cols(["x", "y", "z"]), quats=cols([f"rot_{i}" for i in range(4)]),
                     scales=torch.exp(cols([f"scale_{i}" for i in range(3)])),
                     opacities=torch.sigmoid(cols(["opacity"])[:, 0]), sh=torch.cat([dc, rest], dim=1))
