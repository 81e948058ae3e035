"""Topology and UV layout of the built-in head: a ray-cast skin grid, a lip slit opening onto a
mouth cavity, and two eyeballs.

Vertex order: skin grid (top pole, R rows × C columns, bottom pole), lower-lip duplicates of the
slit row, mouth-cavity rings and its back vertex, left eyeball, right eyeball. The skin's UV is
one disc (Lambert-like azimuthal map centred on the crown, face at the bottom, no seam: the
azimuth wraps round the disc); cavity and eyeballs get small discs in three corners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from avatar_lightning.head.builtin_sdf import cast_rays

RAY_ORIGIN = (0.0, 0.0, -0.005)
CAVITY_DEPTH = (0.005, 0.013, 0.022, 0.031)
CAVITY_WIDTH = (0.95, 0.88, 0.75, 0.5)
CAVITY_HEIGHT = (0.004, 0.011, 0.015, 0.011)
EYE_ROWS, EYE_COLS = 12, 18


@dataclass
class Topology:
    """Everything about the built-in mesh that does not depend on the shape parameters."""

    rows: int
    cols: int
    ray_dirs: Tensor  # [R*C + 2, 3]
    slit_row: int
    slit_cols: tuple[int, int]
    lip_dups: np.ndarray  # [n] grid indices duplicated for the lower lip
    cavity_loop: np.ndarray  # [L] vertex indices round the lip opening (upper then lower)
    cavity_start: int
    eye_start: tuple[int, int]  # first vertex of the left / right eyeball
    num_vertices: int
    faces: np.ndarray  # [F, 3]
    uv_coords: np.ndarray  # [Vt, 2]
    uv_faces: np.ndarray  # [F, 3]


def grid_index(rows: int, cols: int, i: int | np.ndarray, c: int | np.ndarray) -> np.ndarray:
    return 1 + np.asarray(i) * cols + np.mod(c, cols)


def _grid_angles(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row polar angles (denser over the face band) and column azimuths (denser at the front)."""
    t = np.pi * np.arange(1, rows + 1) / (rows + 1)
    theta = t + 0.3 * np.sin(2 * t) / 2
    s = 2 * np.pi * (np.arange(cols) - cols // 2) / cols
    phi = s - 0.45 * np.sin(s)
    return t, theta, np.stack([s, phi])


def _quads(idx: np.ndarray) -> np.ndarray:
    """Two outward triangles per cell of an index grid [rows, cols] (rows go down, cols go +x)."""
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    return np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])


def build_topology(rows: int = 56, cols: int = 88, slit_theta: float = 2.05, mouth_half_angle: float = 0.27
                   ) -> Topology:
    """Build faces, UVs and ray directions of the built-in head.

    Args:
        rows, cols: skin grid size.
        slit_theta: polar angle (from +y) of the lip line seen from :data:`RAY_ORIGIN`.
        mouth_half_angle: half the azimuth the lip slit spans.
    """
    t, theta, (s, phi) = _grid_angles(rows, cols)
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    dirs = np.stack([np.sin(th) * np.sin(ph), np.cos(th), np.sin(th) * np.cos(ph)], -1).reshape(-1, 3)
    dirs = np.concatenate([[[0, 1, 0]], dirs, [[0, -1, 0]]])
    n_grid = rows * cols + 2
    slit_row = int(np.argmin(np.abs(theta - slit_theta)))
    inside = np.nonzero(np.abs(phi) < mouth_half_angle)[0]
    ca, cb = int(inside.min()) - 1, int(inside.max()) + 1
    lip_cols = np.arange(ca + 1, cb)
    lip_dups = grid_index(rows, cols, slit_row, lip_cols)
    dup_of = {int(g): n_grid + k for k, g in enumerate(lip_dups)}

    # skin faces: a wrap-around grid; the row under the slit uses the duplicates
    ring = np.concatenate([np.arange(cols), [0]])
    idx = grid_index(rows, cols, np.arange(rows)[:, None], ring[None, :])
    grid = _quads(idx)
    below = (np.isin(grid, lip_dups)) & _row_of(grid, cols, slit_row + 1).any(1, keepdims=True)
    grid = np.where(below, np.vectorize(lambda v: dup_of.get(int(v), int(v)))(grid), grid)
    top = np.stack([np.zeros(cols, int), idx[0, :-1], idx[0, 1:]], -1)
    bottom_pole = n_grid - 1
    bottom = np.stack([idx[-1, :-1], np.full(cols, bottom_pole), idx[-1, 1:]], -1)
    skin = np.concatenate([top, grid, bottom])

    upper = grid_index(rows, cols, slit_row, np.arange(ca, cb + 1))
    loop = np.concatenate([upper, [dup_of[int(g)] for g in lip_dups[::-1]]])
    cav_start = n_grid + len(lip_dups)
    L, K = len(loop), len(CAVITY_DEPTH)
    rings = np.concatenate([loop[None], cav_start + np.arange(K * L).reshape(K, L)])
    back = cav_start + K * L
    cav = _quads(np.concatenate([rings, rings[:, :1]], 1))
    cav = np.concatenate([cav, np.stack([rings[-1], np.full(L, back), np.roll(rings[-1], -1)], -1)])
    eye_l = back + 1
    eye_n = EYE_ROWS * EYE_COLS + 2
    eyes = [_sphere_faces(eye_l), _sphere_faces(eye_l + eye_n)]
    faces = np.concatenate([skin, cav, *eyes])
    uv, uv_faces = _uv_layout(rows, cols, t, s, skin, dup_of, cav, rings, back, eyes, n_grid)
    return Topology(rows, cols, torch.as_tensor(dirs), slit_row, (ca, cb), lip_dups, loop, cav_start,
                    (eye_l, eye_l + eye_n), eye_l + 2 * eye_n, faces.astype(np.int64), uv, uv_faces)


def _row_of(faces: np.ndarray, cols: int, row: int) -> np.ndarray:
    return (faces - 1) // cols == row


def _sphere_faces(start: int) -> np.ndarray:
    ring = np.concatenate([np.arange(EYE_COLS), [0]])
    idx = start + 1 + np.arange(EYE_ROWS)[:, None] * EYE_COLS + ring[None]
    front = np.stack([np.full(EYE_COLS, start), idx[0, :-1], idx[0, 1:]], -1)
    back = np.stack([idx[-1, :-1], np.full(EYE_COLS, start + EYE_ROWS * EYE_COLS + 1), idx[-1, 1:]], -1)
    return np.concatenate([front, _quads(idx), back])


def sphere_points(center: Tensor, radius: float) -> Tensor:
    """Vertices of an eyeball: front pole (+z), rows, back pole. ``center [3] -> [EYE_ROWS*EYE_COLS+2, 3]``."""
    th = torch.pi * torch.arange(1, EYE_ROWS + 1, dtype=center.dtype) / (EYE_ROWS + 1)
    ph = 2 * torch.pi * torch.arange(EYE_COLS, dtype=center.dtype) / EYE_COLS
    th, ph = torch.meshgrid(th, ph, indexing="ij")
    # azimuth runs clockwise seen from the front so that rows×cols cells face outwards
    d = torch.stack([-th.sin() * ph.sin(), th.sin() * ph.cos(), th.cos()], -1).reshape(-1, 3)
    d = torch.cat([d.new_tensor([[0, 0, 1]]), d, d.new_tensor([[0, 0, -1]])])
    return center + radius * d


def _disc(n: int, radius: np.ndarray, angle: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    return np.stack([center[0] + radius * np.sin(angle), center[1] - radius * np.cos(angle)], -1).reshape(n, 2)


def _uv_layout(rows, cols, t, s, skin, dup_of, cav, rings, back, eyes, n_grid):
    """UV coordinates and UV faces; every part lies in its own non-overlapping disc."""
    r_main, corner = 0.49, 0.083
    rr = r_main * 0.96 * np.sin(t / 2) / np.sin(t[-1] / 2)
    R, S = np.meshgrid(rr, s, indexing="ij")
    uv = [np.array([[0.5, 0.5]]), _disc(rows * cols, R, S, (0.5, 0.5))]
    bottom_uv_start = 1 + rows * cols
    mid = s + np.pi / cols
    uv.append(_disc(cols, np.full(cols, r_main), mid, (0.5, 0.5)))
    # skin faces: grid vertices keep their own uv index; duplicates map back; bottom pole per column
    inv = {v: k for k, v in dup_of.items()}
    uv_skin = np.vectorize(lambda v: inv.get(int(v), int(v)))(skin)
    pole = uv_skin == n_grid - 1
    uv_skin[pole] = bottom_uv_start + np.nonzero(pole)[0] - (len(skin) - cols)
    n_uv = bottom_uv_start + cols
    # cavity island, bottom-left corner
    K1, L = rings.shape
    rad = corner * (1 - np.arange(K1) / K1)
    ang = 2 * np.pi * np.arange(L) / L
    uv.append(_disc(K1 * L, *np.meshgrid(rad, ang, indexing="ij"), (corner + 0.002, corner + 0.002)))
    uv.append(np.array([[corner + 0.002, corner + 0.002]]))
    remap = {int(v): n_uv + k for k, v in enumerate(rings.reshape(-1))}
    remap[int(back)] = n_uv + K1 * L
    uv_cav = np.vectorize(remap.__getitem__)(cav)
    n_uv += K1 * L + 1
    uv_eyes = []
    for eye, cx in zip(eyes, (corner + 0.002, 1 - corner - 0.002), strict=True):
        start = int(eye.min())
        th = np.pi * np.arange(1, EYE_ROWS + 1) / (EYE_ROWS + 1)
        ph = 2 * np.pi * np.arange(EYE_COLS) / EYE_COLS
        r = corner * 0.9 * np.sin(th / 2) / np.sin(th[-1] / 2)
        uv.extend([np.array([[cx, 1 - corner - 0.002]]),
                   _disc(EYE_ROWS * EYE_COLS, *np.meshgrid(r, -ph, indexing="ij"), (cx, 1 - corner - 0.002)),
                   _disc(EYE_COLS, np.full(EYE_COLS, corner), -(ph + np.pi / EYE_COLS), (cx, 1 - corner - 0.002))])
        f = eye - start + n_uv
        back_pole = f == n_uv + EYE_ROWS * EYE_COLS + 1
        f[back_pole] = n_uv + EYE_ROWS * EYE_COLS + 1 + np.arange(EYE_COLS)
        uv_eyes.append(f)
        n_uv += 1 + EYE_ROWS * EYE_COLS + EYE_COLS
    uv_coords = np.concatenate(uv)
    uv_faces = np.concatenate([uv_skin, uv_cav, *uv_eyes]).astype(np.int64)
    return _orient_islands(uv_coords, uv_faces, [uv_cav, *uv_eyes]), uv_faces


def _orient_islands(uv: np.ndarray, uv_faces: np.ndarray, islands: list[np.ndarray]) -> np.ndarray:
    """Mirror any island whose triangles wind clockwise so that every UV triangle winds CCW."""
    uv = uv.copy()
    for f in islands:
        a, b, c = uv[f[:, 0]], uv[f[:, 1]], uv[f[:, 2]]
        area = ((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]).sum()
        if area < 0:
            ids = np.unique(f)
            cx = uv[ids, 0].mean()
            uv[ids, 0] = 2 * cx - uv[ids, 0]
    return uv


def cast_skin(topo: Topology, q: dict[str, float]) -> Tensor:
    """Skin grid vertices for parameters ``q``: ``-> [R*C + 2, 3]`` (float64)."""
    dirs = topo.ray_dirs.double()
    origin = dirs.new_tensor(RAY_ORIGIN).expand_as(dirs)
    return origin + cast_rays(origin, dirs, q)[:, None] * dirs


def mouth_cavity(topo: Topology, loop: Tensor) -> Tensor:
    """Cavity ring vertices from the lip-opening loop: ``[L, 3] -> [K*L + 1, 3]``."""
    n_up = topo.slit_cols[1] - topo.slit_cols[0] + 1
    left, right = loop[0], loop[n_up - 1]
    center = (left + right) / 2
    half = (right[0] - left[0]) / 2
    L = loop.shape[0]
    j = torch.arange(L, dtype=loop.dtype)
    # loop parameter: upper lip left→right, then lower lip right→left
    u = torch.where(j < n_up, -1 + 2 * j / (n_up - 1), 1 - 2 * (j - n_up + 1) / (n_up - 1))
    side = torch.where(j < n_up, 1.0, -1.0).to(loop.dtype)
    side = torch.where((j == 0) | (j == n_up - 1), 0.0, side)
    out = []
    for depth, width, height in zip(CAVITY_DEPTH, CAVITY_WIDTH, CAVITY_HEIGHT, strict=True):
        x = center[0] + u * half * width
        y = center[1] + side * height * (1 - u * u).clamp_min(0).sqrt()
        z = loop[:, 2] - depth - 0.01 * u * u
        out.append(torch.stack([x, y, z], -1))
    back = center + center.new_tensor([0, 0, -CAVITY_DEPTH[-1] - 0.012])
    return torch.cat([*out, back[None]])


def assemble_vertices(topo: Topology, q: dict[str, float], skin: Tensor | None = None) -> Tensor:
    """All vertices of the built-in head for parameters ``q``: ``-> [V, 3]`` (float64).

    ``skin`` (the ray-cast grid, ``[R*C + 2, 3]``) is cast from ``q`` when not given.
    """
    skin = cast_skin(topo, q) if skin is None else skin
    dups = skin[torch.as_tensor(topo.lip_dups)]
    loop_src = torch.cat([skin, dups])[torch.as_tensor(topo.cavity_loop)]
    cavity = mouth_cavity(topo, loop_src)
    eyes = [sphere_points(skin.new_tensor(eye_center(q, side)), q["eye_r"]) for side in (1, -1)]
    verts = torch.cat([skin, dups, cavity, *eyes])
    assert verts.shape[0] == topo.num_vertices
    return verts


def eye_center(q: dict[str, float], side: int) -> tuple[float, float, float]:
    """Eyeball centre; side +1 = subject's left (+x)."""
    return (side * q["eye_x"], q["eye_y"], 0.0695 - q["eye_depth"])


def slit_theta_for(mouth_y: float, z: float = 0.093) -> float:
    """Polar angle from :data:`RAY_ORIGIN` of the lip line at height ``mouth_y``."""
    return math.atan2(z - RAY_ORIGIN[2], mouth_y - RAY_ORIGIN[1])
