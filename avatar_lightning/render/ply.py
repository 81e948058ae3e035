"""The standard 3DGS PLY (Inria layout) that splat viewers open, and a reader for any valid 3DGS PLY.

Layout (FORMATS.md): binary little-endian float32 vertex properties
``x y z nx ny nz f_dc_0..2 f_rest_0..44 opacity scale_0..2 rot_0..3`` where ``f_rest`` is
channel-major (all R higher-order coefficients, then G, then B), ``opacity`` is a logit,
``scale_*`` are log-scales and ``rot_*`` is the wxyz quaternion. All 45 ``f_rest`` fields are
always written (zero-padded below degree 3): viewers expecting degree 3 reject fewer.

Parsing PLY itself (ASCII and both binary byte orders, any element and property order, comments,
list properties) is left to ``plyfile``, the library the Inria 3DGS code reads and writes with;
this module owns only what makes a PLY a set of Gaussians, and names the file in every error.
"""

from __future__ import annotations

import os

import numpy as np
import plyfile
import torch

from ..io import atomic_path
from .types import Gaussians

SH_REST = 15  # higher-order coefficients per channel at degree 3
PLY_FIELDS = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
              + [f"f_rest_{i}" for i in range(3 * SH_REST)] + ["opacity"]
              + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
REQUIRED_FIELDS = [p for p in PLY_FIELDS if not p.startswith(("f_rest_", "n"))]
REST_COUNTS = (0, 9, 24, 45)  # f_rest fields at SH degree 0, 1, 2, 3
_EPS = 1e-7
_MIN_QUAT_NORM = 1e-12


def _check_writable(path, g: Gaussians) -> None:
    """Refuse values a viewer cannot show: non-finite, scale <= 0, opacity outside [0, 1], zero quaternion."""
    problems = []
    for name in ("means", "quats", "scales", "opacities", "sh"):
        bad = ~torch.isfinite(getattr(g, name))
        if bad.any():
            problems.append(f"{name} holds {int(bad.sum())} non-finite values")
    if (g.scales <= 0).any():
        problems.append(f"{int((g.scales <= 0).any(-1).sum())} Gaussians have a scale <= 0 (log-scale undefined)")
    if ((g.opacities < 0) | (g.opacities > 1)).any():
        problems.append("opacities outside [0, 1] (were logits passed as opacities?)")
    zero = torch.linalg.vector_norm(g.quats, dim=-1) < _MIN_QUAT_NORM
    if zero.any():
        problems.append(f"{int(zero.sum())} Gaussians have a zero quaternion (no rotation defined)")
    if problems:
        raise ValueError(f"save_ply({path}): refusing to write: " + "; ".join(problems))


def save_ply(path: str | os.PathLike, gaussians: Gaussians) -> None:
    """Write an unbatched Gaussian set as a 3DGS PLY, atomically.

    Args:
        path: destination ``.ply``.
        gaussians: fields ``[N, ...]``; SH degree 0..3 (missing coefficients are written as 0,
            opacities are clamped to [1e-7, 1 − 1e-7] before the logit).

    Raises:
        ValueError: batched Gaussians, or values no viewer can show (non-finite values, scales
            <= 0, opacities outside [0, 1], zero quaternions); the message names the file.
    """
    if gaussians.batched:
        raise ValueError(f"save_ply({path}): expected unbatched Gaussians [N, ...], got means "
                         f"{tuple(gaussians.means.shape)}; save one avatar at a time")
    g = gaussians.detach().to("cpu", torch.float64)
    _check_writable(path, g)
    n = g.num_gaussians
    sh = torch.zeros(n, 1 + SH_REST, 3, dtype=torch.float64)
    k = min(g.sh.shape[1], 1 + SH_REST)
    sh[:, :k] = g.sh[:, :k]
    rest = sh[:, 1:].transpose(1, 2).reshape(n, 3 * SH_REST)  # channel-major
    o = g.opacities.clamp(_EPS, 1 - _EPS)
    cols = torch.cat([g.means, torch.zeros(n, 3, dtype=torch.float64), sh[:, 0], rest,
                      torch.log(o / (1 - o))[:, None], torch.log(g.scales), g.quats], dim=1)
    rows = np.empty(n, dtype=[(name, "<f4") for name in PLY_FIELDS])
    for i, name in enumerate(PLY_FIELDS):
        rows[name] = cols[:, i].numpy()
    with atomic_path(path) as tmp:
        plyfile.PlyData([plyfile.PlyElement.describe(rows, "vertex")], byte_order="<").write(str(tmp))


def _read(path) -> plyfile.PlyData:
    """Parse any PLY with plyfile; every parse error names the file and, when truncated, the sizes."""
    try:
        return plyfile.PlyData.read(str(path), mmap=False)
    except plyfile.PlyElementParseError as e:
        if "early end-of-file" in e.message:
            raise ValueError(
                f"load_ply({path}): the file is truncated: its header declares {e.element.count} "
                f"'{e.element.name}' rows but the body ends in row {e.row} "
                f"({os.path.getsize(path)} bytes in all; interrupted download or export?)") from e
        raise ValueError(f"load_ply({path}): damaged body: {e}") from e
    except plyfile.PlyHeaderParseError as e:
        what = "header has no 'end_header'" if "early end-of-file" in e.message else "damaged header"
        raise ValueError(f"load_ply({path}): {what}: {e}") from e


def _vertex_rows(path, ply: plyfile.PlyData) -> tuple[np.ndarray, int]:
    """The ``vertex`` rows, checked to hold every Gaussian field as a float scalar; and the f_rest count."""
    if "vertex" not in ply:
        raise ValueError(f"load_ply({path}): no 'vertex' element (elements: {[e.name for e in ply.elements]})")
    data = ply["vertex"].data
    names = set(data.dtype.names or ())
    if "packed_position" in names:
        raise ValueError(f"load_ply({path}): a compressed (packed_*) splat PLY; decompress it to the "
                         f"Inria layout first")
    missing = [p for p in REQUIRED_FIELDS if p not in names]
    if missing:
        raise ValueError(f"load_ply({path}): missing vertex properties {missing}")
    n_rest = sum(p.startswith("f_rest_") for p in names)
    rest = [f"f_rest_{i}" for i in range(n_rest)]
    if n_rest not in REST_COUNTS or any(p not in names for p in rest):
        raise ValueError(f"load_ply({path}): f_rest fields {sorted(p for p in names if p.startswith('f_rest_'))} "
                         f"are not f_rest_0..f_rest_K-1 with K in {REST_COUNTS} (SH degree 0..3)")
    wrong = {p: str(data.dtype[p]) for p in REQUIRED_FIELDS + rest if data.dtype[p].kind != "f"}
    if wrong:
        raise ValueError(f"load_ply({path}): Gaussian properties must be float or double, got {wrong}")
    return data, n_rest


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (Inria layout).

    Accepted: ASCII or binary (either byte order); properties in any order; other elements
    before or after ``vertex``; extra vertex properties (normals, colours, lists) are ignored.
    The SH degree is inferred from the number of ``f_rest_*`` fields (0, 9, 24 or 45).

    Returns:
        :class:`Gaussians` in float32 with ``sh [N, (degree+1)², 3]``, linear scales, opacities
        in [0, 1] and the quaternions as stored (wxyz).

    Raises:
        ValueError: naming the file and the fault (truncated body, damaged header, missing or
            non-float Gaussian properties, an f_rest count of no SH degree).
    """
    data, n_rest = _vertex_rows(path, _read(path))
    n = len(data)

    def cols(fields: list[str]) -> torch.Tensor:
        out = np.zeros((n, len(fields)), dtype=np.float32)  # np.stack refuses an empty f_rest list
        for i, p in enumerate(fields):
            out[:, i] = data[p]
        return torch.from_numpy(out)

    k_rest = n_rest // 3
    dc = cols([f"f_dc_{i}" for i in range(3)])[:, None]
    rest = cols([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k_rest).transpose(1, 2)
    return Gaussians(means=cols(["x", "y", "z"]), quats=cols([f"rot_{i}" for i in range(4)]),
                     scales=torch.exp(cols([f"scale_{i}" for i in range(3)])),
                     opacities=torch.sigmoid(cols(["opacity"])[:, 0]), sh=torch.cat([dc, rest], dim=1))
