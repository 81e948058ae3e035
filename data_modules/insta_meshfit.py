"""Recover INSTA's missing FLAME parameters (shape, jaw, eyes) from its per-frame meshes.

INSTA's ``flame/exp/<id>.txt`` hold expressions only, but ``meshes/<id>.obj`` are the tracker's
posed FLAME vertices (no global pose; the head pose is in the camera). With the same head model
those meshes pin down the rest: the identity by linear least squares on the vertices that jaw and
eyes do not move (refined with a few frames' rotations), then every frame's jaw and eye rotations
(all frames at once) by L-BFGS. The
tracker's eyelid blendshapes are not in a FLAME file, so a small residual stays around the eyes.
The result is cached beside the data (:class:`~data_modules.uv_cache.UVCache`), keyed by the
meshes' and expressions' content and the head model file's, so re-tracked data is fitted anew.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from avatar_lightning.fingerprint import content_key, file_digest, head_model_digest
from data_modules.uv_cache import UVCache


def read_obj_vertices(path: Path) -> Tensor:
    """Vertex positions of an OBJ file (``v x y z`` lines).

    Returns:
        Tensor  # [V, 3]
    """
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    rows = [line.split()[1:4] for line in path.read_text().splitlines() if line.startswith("v ")]
    try:
        return torch.from_numpy(np.asarray(rows, dtype=np.float32).reshape(-1, 3))
    except ValueError as err:
        raise ValueError(f"mesh {path} has malformed vertex lines: {err}") from err


@dataclass
class MeshFit:
    """Fitted parameters and how well they explain the meshes.

    Attributes:
        shape: Tensor  # [S]
        pose: Tensor  # [N, 5, 3] global and neck zero, jaw and eyes fitted
        rmse: root-mean-square vertex error over all frames (metres).
    """

    shape: Tensor
    pose: Tensor
    rmse: float


def rigid_vertices(head, tol: float = 1e-4) -> Tensor:
    """Vertices that jaw and eye rotations do not move (no skinning weight, no pose corrective).

    With global and neck pose zero (the tracker's FLAME), these vertices are the unposed
    template + shape + expression, so the identity is a linear least-squares fit on them.

    Returns:
        BoolTensor  # [V]
    """
    moved = head.lbs_weights[:, 2:].sum(1) > tol  # joints 2.. = jaw, left eye, right eye
    # posedirs rows 9.. multiply the (R - I) entries of joints 2.. (rows 0..8 are the neck's)
    corrective = rearrange(head.posedirs[9:].abs(), "p (v c) -> p v c", c=3).amax((0, 2)) > tol
    return ~(moved | corrective)


def fit_shape(head, meshes: Tensor, expr: Tensor) -> Tensor:
    """Identity coefficients by linear least squares on the :func:`rigid_vertices`.

    Args:
        meshes: Tensor  # [M, V, 3]
        expr: Tensor  # [M, E]

    Returns:
        Tensor  # [S]
    """
    keep = rigid_vertices(head)
    if int(keep.sum()) * 3 < head.n_shape:
        raise ValueError(f"head model {head.source}: too few vertices free of jaw/eye motion to fit its identity")
    residual = (meshes - head.v_template - torch.einsum("vce,me->mvc", head.exprdirs, expr))[:, keep]
    basis = rearrange(head.shapedirs[keep], "k c s -> (k c) s").repeat(meshes.shape[0], 1)  # [M·K·3, S]
    return torch.linalg.lstsq(basis.double(), residual.reshape(-1, 1).double()).solution[:, 0].float()


def _minimise(params: list[Tensor], loss, iters: int) -> None:
    """Run L-BFGS (strong Wolfe line search) on ``loss()`` over ``params`` in place."""
    opt = torch.optim.LBFGS(params, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    opt.step(closure)


def _pose(rot: Tensor) -> Tensor:
    """[N, 3, 3] jaw/eye rotation vectors -> [N, 5, 3] FLAME pose with global and neck zero."""
    return torch.cat([rot.new_zeros(rot.shape[0], 2, 3), rot], 1)


def _error(head, shape: Tensor, expr: Tensor, rot: Tensor, meshes: Tensor) -> Tensor:
    """Sum over frames of the mean squared vertex distance (frames are independent in ``rot``)."""
    verts = head(shape[None].expand(rot.shape[0], -1), expr, _pose(rot)).vertices
    return (verts - meshes).square().sum(-1).mean(1).sum()


def fit_meshes(head, meshes: Tensor, expr: Tensor, shape_frames: int = 16, iters: int = 50) -> MeshFit:
    """Shape, jaw and eye poses that make the head reproduce the meshes.

    Three stages, each cheap: identity by least squares on :func:`rigid_vertices` of a few frames;
    identity and those frames' rotations refined together (all vertices, in case the rigid ones
    constrain the identity poorly); then every frame's rotations with the identity fixed.

    Args:
        head: the head model the meshes were made with (same topology).
        meshes: Tensor  # [N, V, 3]
        expr: Tensor  # [N, E]
        shape_frames: frames (evenly spaced) the identity is fitted on.
        iters: L-BFGS iterations per stage.
    """
    if meshes.shape[1] != head.num_vertices:
        raise ValueError(f"INSTA meshes have {meshes.shape[1]} vertices but head model {head.source} has "
                         f"{head.num_vertices}: pass the FLAME model the data was tracked with")
    n = meshes.shape[0]
    sub = torch.linspace(0, n - 1, min(shape_frames, n)).round().long()
    shape = fit_shape(head, meshes[sub], expr[sub]).requires_grad_(True)
    rot_sub = torch.zeros(len(sub), 3, 3, requires_grad=True)
    _minimise([shape, rot_sub], lambda: _error(head, shape, expr[sub], rot_sub, meshes[sub]), iters)
    shape = shape.detach()
    rot = torch.zeros(n, 3, 3, requires_grad=True)
    _minimise([rot], lambda: _error(head, shape, expr, rot, meshes), iters)
    with torch.no_grad():
        rmse = (_error(head, shape, expr, rot, meshes) / n).sqrt().item()
    return MeshFit(shape, _pose(rot.detach()), rmse)


def cached_mesh_fit(root: Path, head, head_model: str, mesh_paths: list[Path], expr: Tensor) -> MeshFit:
    """:func:`fit_meshes` on an INSTA actor, cached in ``<root>/.uv_cache/<hash>/``; the hash covers
    the settings and the content of the meshes, the expressions and the head model file."""
    config = {"kind": "insta_mesh_fit", "head_model": head_model, "n_shape": head.n_shape, "n_expr": head.n_expr,
              "meshes": [p.name for p in mesh_paths], "head_model_digest": head_model_digest(head_model),
              "sources": content_key([file_digest(p) for p in mesh_paths], expr)}
    cache = UVCache(root, config)

    def compute() -> dict[str, Tensor]:
        meshes = torch.stack([read_obj_vertices(p) for p in mesh_paths])
        result = fit_meshes(head, meshes, expr)
        rank_zero_info(f"INSTA {root}: fitted shape + jaw/eyes to {len(mesh_paths)} meshes, RMSE {result.rmse:.2e} m")
        return {"shape": result.shape, "pose": result.pose, "rmse": torch.tensor(result.rmse)}

    maps = cache.get("flame_fit", compute)
    return MeshFit(maps["shape"], maps["pose"], float(maps["rmse"]))
