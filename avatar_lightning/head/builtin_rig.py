"""Rig of the built-in head: skinning weights, joint regressor, vertex regions, expressions.

Everything is computed from the template vertices and the topology, so it follows the geometry.
Joints: 0 global (neck base), 1 neck, 2 jaw, 3 left eye (+x), 4 right eye.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from avatar_lightning.head.builtin_mesh import EYE_COLS, EYE_ROWS, Topology, eye_center

EYE_N = EYE_ROWS * EYE_COLS + 2


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _rbf(v: np.ndarray, c, sigma: float) -> np.ndarray:
    return np.exp(-((v - np.asarray(c)) ** 2).sum(-1) / (2 * sigma**2))


def part_indices(topo: Topology) -> dict[str, np.ndarray]:
    """Vertex index ranges of the mesh parts."""
    n_skin = topo.rows * topo.cols + 2
    return {
        "skin": np.arange(n_skin),
        "lip_dups": np.arange(n_skin, topo.cavity_start),
        "cavity": np.arange(topo.cavity_start, topo.eye_start[0]),
        "left_eyeball": np.arange(topo.eye_start[0], topo.eye_start[0] + EYE_N),
        "right_eyeball": np.arange(topo.eye_start[1], topo.eye_start[1] + EYE_N),
    }


def skinning_weights(v: np.ndarray, topo: Topology, q: dict[str, float]) -> np.ndarray:
    """LBS weights ``[V, 5]`` (rows sum to 1)."""
    parts = part_indices(topo)
    w = np.zeros((v.shape[0], 5))
    y, z = v[:, 1], v[:, 2]
    root = _smoothstep((-0.115 - y) / 0.035)
    # jaw: below the line from the jaw hinge to the mouth corners (sagittal plane), sharp at the lips
    hinge, corner = np.array([-0.012, -0.004]), np.array([q["mouth_y"], 0.085])
    d = corner - hinge
    below = (d[0] * (z - hinge[1]) - d[1] * (y - hinge[0])) / np.linalg.norm(d)
    width = 0.002 + 0.012 * _smoothstep((0.085 - z) / 0.07)
    jaw = _smoothstep(0.5 + below / (2 * width)) * _smoothstep((y + 0.125) / 0.03) * _smoothstep((z + 0.005) / 0.02)
    grid_rows = (np.arange(v.shape[0]) - 1) // topo.cols
    grid_cols = (np.arange(v.shape[0]) - 1) % topo.cols
    ca, cb = topo.slit_cols
    skin = np.isin(np.arange(v.shape[0]), parts["skin"][1:-1])
    mouth_cols = skin & (grid_cols >= ca) & (grid_cols <= cb)
    jaw[mouth_cols & (grid_rows <= topo.slit_row)] = 0.0  # upper lip stays with the skull
    jaw[parts["lip_dups"]] = 1.0
    jaw[parts["cavity"]] = _cavity_jaw(topo, len(parts["cavity"]))
    jaw = np.minimum(jaw, 1 - root)
    w[:, 0], w[:, 2] = root, jaw
    w[:, 1] = 1 - root - jaw
    for j, name in ((3, "left_eyeball"), (4, "right_eyeball")):
        w[parts[name]] = 0
        w[parts[name], j] = 1
    return w


def _cavity_jaw(topo: Topology, n: int) -> np.ndarray:
    L = len(topo.cavity_loop)
    n_up = topo.slit_cols[1] - topo.slit_cols[0] + 1
    side = np.where(np.arange(L) < n_up, 0.0, 1.0)
    side[[0, n_up - 1]] = 0.5
    return np.concatenate([np.tile(side, (n - 1) // L), [0.5]])


def joint_regressor(v: np.ndarray, topo: Topology, q: dict[str, float]) -> np.ndarray:
    """``[5, V]``: each joint is the mean of a few symmetric surface vertices (FLAME's regressor is sparse too)."""
    parts = part_indices(topo)
    J = np.zeros((5, v.shape[0]))
    skin = parts["skin"]
    last_row = 1 + (topo.rows - 1) * topo.cols + np.arange(topo.cols)
    J[0, last_row] = 1 / topo.cols
    for j, targets in ((1, [(s * q["neck_r"], -0.06, -0.018) for s in (-1, 1)]),
                       (2, [(s * 0.072, -0.012, 0.004) for s in (-1, 1)])):
        for t in targets:
            near = skin[np.argsort(((v[skin] - np.asarray(t)) ** 2).sum(1))[:3]]
            J[j, near] += 1 / (3 * len(targets))
    J[3, parts["left_eyeball"]] = 1 / EYE_N
    J[4, parts["right_eyeball"]] = 1 / EYE_N
    return J


def vertex_regions(v: np.ndarray, topo: Topology, q: dict[str, float], weights: np.ndarray) -> dict[str, np.ndarray]:
    """FLAME_masks-style regions (vertex indices) plus ``mouth_interior`` and ``lip_outside_ring_*``."""
    parts = part_indices(topo)
    n = v.shape[0]
    x, y, z = v.T
    skin = np.zeros(n, bool)
    skin[np.concatenate([parts["skin"], parts["lip_dups"]])] = True
    phi = np.arctan2(x, z + 0.005)
    hairline = 0.01625 + 0.0625 * np.cos(phi) - 0.01375 * np.cos(2 * phi)
    ear = {s: skin & (s * x > q["cranium_rx"] - 0.004) & (np.abs(y - q["ear_y"]) < q["ear_h"] * 1.15)
           & (np.abs(z + 0.012) < q["ear_h"] * 0.8) for s in (1, -1)}
    ears = ear[1] | ear[-1]
    scalp = skin & (y > hairline) & ~ears
    boundary = np.zeros(n, bool)
    boundary[1 + (topo.rows - 1) * topo.cols:topo.rows * topo.cols + 2] = True
    neck = skin & ~scalp & ~ears & (weights[:, 2] < 0.5) & (y < -0.055)
    face = skin & ~scalp & ~ears & ~neck & ~boundary
    eyes = {s: np.array(eye_center(q, s)) for s in (1, -1)}
    eye_region = {s: face & (np.hypot(x - eyes[s][0], y - eyes[s][1]) < 0.026) & (z > 0.04) for s in (1, -1)}
    lips = skin & (np.abs(x) < q["mouth_w"] * 1.0) & (np.abs(y - q["mouth_y"]) < 0.0095) & (z > 0.075)
    nose_axis = (y < q["eye_y"]) & (y > q["eye_y"] - q["nose_len"] - 0.012)
    nose = face & nose_axis & (np.abs(x) < q["nose_w"] * 1.3) & (z > 0.08)
    idx = lambda m: np.nonzero(m)[0].astype(np.int64)  # noqa: E731
    return {
        "face": idx(face), "neck": idx(neck), "scalp": idx(scalp), "boundary": idx(boundary),
        "left_eyeball": parts["left_eyeball"], "right_eyeball": parts["right_eyeball"],
        "left_ear": idx(ear[1]), "right_ear": idx(ear[-1]), "forehead": idx(face & (y > q["brow_y"] + 0.006)),
        "eye_region": idx(eye_region[1] | eye_region[-1]), "left_eye_region": idx(eye_region[1]),
        "right_eye_region": idx(eye_region[-1]), "nose": idx(nose), "lips": idx(lips),
        "mouth_interior": parts["cavity"],
        **_lip_rings(topo),
    }


def _lip_rings(topo: Topology) -> dict[str, np.ndarray]:
    """15 ordered vertices just above / below the lip line (what teeth are built from)."""
    ca, cb = topo.slit_cols
    cols = np.round(np.linspace(ca, cb, 15)).astype(np.int64)
    row = lambda r: 1 + r * topo.cols + cols  # noqa: E731
    return {"lip_outside_ring_upper": row(topo.slit_row - 1), "lip_outside_ring_lower": row(topo.slit_row + 1)}


def _landmarks(v: np.ndarray, topo: Topology, q: dict[str, float]) -> dict[str, np.ndarray]:
    n_up = topo.slit_cols[1] - topo.slit_cols[0] + 1
    loop = v[topo.cavity_loop]
    mid = (loop[0] + loop[n_up - 1]) / 2
    return {"corner_r": loop[0], "corner_l": loop[n_up - 1], "mouth": mid,
            "upper_lip": mid + [0, 0.004, 0.002], "lower_lip": mid + [0, -0.005, 0.0]}


def expression_basis(v: np.ndarray, topo: Topology, q: dict[str, float]) -> tuple[list[str], np.ndarray]:
    """Hand-built expression blendshapes ``[V, 3, E]``; a coefficient of 1 is a moderate expression."""
    lm = _landmarks(v, topo, q)
    movable = np.ones(v.shape[0])
    parts = part_indices(topo)
    movable[np.concatenate([parts["left_eyeball"], parts["right_eyeball"]])] = 0
    eyes = {s: np.array(eye_center(q, s)) for s in (1, -1)}
    by, bz = q["brow_y"], q["brow_z"]

    def at(c, sigma, dvec):
        return _rbf(v, c, sigma)[:, None] * np.asarray(dvec)[None]

    def corners(dx, dy, dz, sigma=0.013):
        return at(lm["corner_l"], sigma, (dx, dy, dz)) + at(lm["corner_r"], sigma, (-dx, dy, dz))

    def pair(c, sigma, dvec):  # mirrored pair of bumps, c and dvec given for the left side
        c2, d2 = np.array(c) * [-1, 1, 1], np.array(dvec) * [-1, 1, 1]
        return at(c, sigma, dvec) + at(c2, sigma, d2)

    def blink(side):
        c, r = eyes[side], q["eye_r"] + 0.0018
        d = v - c
        dist = np.linalg.norm(d, axis=1, keepdims=True)
        push = np.clip(r - dist, 0, None) * (d[:, 2:3] > -0.004)
        return push * d / np.maximum(dist, 1e-9)

    mouth = lm["mouth"]
    cheek = (0.036, q["mouth_y"] + 0.02, 0.072)
    shapes: dict[str, Callable[[], np.ndarray]] = {
        "smile": lambda: corners(0.004, 0.005, -0.003) + pair(cheek, 0.014, (0.0, 0.0025, 0.001)),
        "frown": lambda: corners(0.0, -0.0045, -0.0005),
        "brow_raise": lambda: pair((0.03, by, bz), 0.018, (0, 0.005, 0)),
        "brow_furrow": lambda: pair((0.016, by - 0.002, bz), 0.011, (-0.003, -0.003, 0.001)),
        "pucker": lambda: _rbf(v, mouth, 0.014)[:, None] * np.stack([-0.3 * (v[:, 0] - mouth[0]),
                                                                     np.zeros(len(v)), np.full(len(v), 0.006)], -1),
        "lip_press": lambda: at(lm["upper_lip"], 0.007, (0, -0.0015, -0.002)) + at(lm["lower_lip"], 0.007,
                                                                                   (0, 0.0015, -0.002)),
        "cheek_puff": lambda: pair((0.045, q["mouth_y"] + 0.005, 0.055), 0.016, (0.006, 0, 0.003)),
        "blink_left": lambda: blink(1),
        "blink_right": lambda: blink(-1),
        "squint": lambda: pair(eyes[1] + [0, -0.011, 0.01], 0.009, (0, 0.0025, 0.0005)),
        "nose_wrinkle": lambda: pair((0.011, q["eye_y"] - 0.02, 0.098), 0.008, (0, 0.002, -0.0007))
        + at(lm["upper_lip"], 0.008, (0, 0.0012, 0)),
        # one-sided pulls: the mouth slides sideways while that corner rises and retracts
        "mouth_left": lambda: at(mouth, 0.016, (0.004, 0, 0)) + at(lm["corner_l"], 0.01, (0.002, 0.004, -0.003)),
        "mouth_right": lambda: at(mouth, 0.016, (-0.004, 0, 0)) + at(lm["corner_r"], 0.01, (-0.002, 0.004, -0.003)),
        "upper_lip_raise": lambda: at(lm["upper_lip"] + [0, 0.003, 0], 0.009, (0, 0.003, 0.001)),
        "lower_lip_depress": lambda: at(lm["lower_lip"] + [0, -0.004, 0], 0.009, (0, -0.003, 0.001)),
        "mouth_stretch": lambda: corners(0.005, -0.001, -0.001),
        # hollow under the cheekbone with the lips drawn in: not the mirror image of cheek_puff
        "cheek_suck": lambda: pair((0.04, q["mouth_y"] + 0.018, 0.062), 0.009, (-0.0035, 0, -0.002))
        + corners(-0.002, 0, 0.001, sigma=0.008),
        "eyes_wide": lambda: pair(eyes[1] + [0, 0.012, 0.006], 0.008, (0, 0.0025, 0.0005)),
    }
    basis = np.stack([fn() * movable[:, None] for fn in shapes.values()], -1)
    return list(shapes), basis


def pose_correctives(v: np.ndarray, topo: Topology, q: dict[str, float], weights: np.ndarray) -> np.ndarray:
    """FLAME-layout pose-corrective basis ``[V, 3, 36]`` (9 entries of R − I per non-root joint).

    Only the jaw has one: opening it (the sin θ entry R[2, 1] of the jaw's rotation about x)
    draws the mouth corners in and lets the cheeks sag, which plain LBS cannot do.
    """
    lm = _landmarks(v, topo, q)
    out = np.zeros((v.shape[0], 3, 36))
    jaw_entry = 9 * 1 + 3 * 2 + 1  # joint 2 is the first block after the neck; entry (row 2, col 1)
    movable = weights[:, 2]  # only where the jaw already acts, so the jaw moves nothing else
    field = np.zeros_like(v)
    for corner, side in ((lm["corner_l"], 1), (lm["corner_r"], -1)):
        field += _rbf(v, corner, 0.012)[:, None] * np.array([-side * 0.012, -0.004, 0.0])
    cheek = np.array([0.045, q["mouth_y"], 0.05])
    for side in (1, -1):
        field += _rbf(v, cheek * [side, 1, 1], 0.018)[:, None] * np.array([0.0, -0.006, 0.0])
    out[:, :, jaw_entry] = field * movable[:, None]
    return out
