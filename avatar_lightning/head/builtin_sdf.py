"""The built-in head's shape as a signed distance field of smoothly blended primitives.

The surface of the mesh is found by casting one fixed ray per grid vertex into this field, so a
change of any parameter below moves every vertex along its own ray: identity blendshapes are
finite differences of the field (see ``builtin.py``). Units are metres; FLAME axes: x to the
subject's left, y up, z forward (the face looks along +z).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Base proportions of the built-in head (an adult of average build).
BASE_PARAMS: dict[str, float] = {
    "cranium_rx": 0.074, "cranium_ry": 0.090, "cranium_rz": 0.097, "cranium_y": 0.028, "cranium_z": -0.012,
    "occiput": 0.014,
    "face_rx": 0.061, "face_ry": 0.066, "face_rz": 0.060, "face_y": -0.030, "face_z": 0.030,
    "chin_z": 0.078, "chin_y": -0.088, "chin_r": 0.019,
    "jaw_w": 0.050, "jaw_y": -0.062,
    "cheek_x": 0.044, "cheek_r": 0.024, "cheek_y": -0.004,
    "nose_len": 0.037, "nose_tip_z": 0.118, "nose_w": 0.016, "nose_bridge": 0.010,
    "brow_y": 0.040, "brow_z": 0.079, "brow_r": 0.013,
    "forehead_z": 0.060,
    "eye_x": 0.032, "eye_y": 0.016, "eye_depth": 0.0, "eye_r": 0.0120,
    "mouth_y": -0.050, "mouth_w": 0.026, "lip_t": 0.0085,
    "ear_y": 0.004, "ear_h": 0.031, "ear_out": 0.012,
    "neck_r": 0.050, "temple": 0.0,
}


def _ellipsoid(p: Tensor, c: tuple[float, float, float], r: tuple[float, float, float]) -> Tensor:
    """Approximate signed distance to an axis-aligned ellipsoid (exact on the surface)."""
    q = (p - p.new_tensor(c)) / p.new_tensor(r)
    k0 = q.norm(dim=-1)
    k1 = (q / p.new_tensor(r)).norm(dim=-1).clamp_min(1e-9)
    return k0 * (k0 - 1) / k1


def _capsule(p: Tensor, a: tuple[float, float, float], b: tuple[float, float, float], ra: float, rb: float) -> Tensor:
    """Signed distance to a cone-capsule from ``a`` (radius ra) to ``b`` (radius rb), approximate."""
    a_, b_ = p.new_tensor(a), p.new_tensor(b)
    ab = b_ - a_
    h = ((p - a_) @ ab / (ab @ ab)).clamp(0, 1)
    return (p - a_ - h[..., None] * ab).norm(dim=-1) - (ra + (rb - ra) * h)


def _smin(a: Tensor, b: Tensor, k: float) -> Tensor:
    """Polynomial smooth minimum (smooth union of two fields with blend radius k)."""
    h = (k - (a - b).abs()).clamp_min(0) / k
    return torch.minimum(a, b) - h * h * k / 4


def _smax(a: Tensor, b: Tensor, k: float) -> Tensor:
    return -_smin(-a, -b, k)


def head_sdf(p: Tensor, q: dict[str, float]) -> Tensor:
    """Signed distance (negative inside) of the skin of the head, eyes excluded.

    Args:
        p: Tensor  # [..., 3] points.
        q: parameters (keys of :data:`BASE_PARAMS`).

    Returns:
        Tensor  # [...]
    """
    d = _ellipsoid(p, (0, q["cranium_y"], q["cranium_z"]), (q["cranium_rx"], q["cranium_ry"], q["cranium_rz"]))
    d = _smin(d, _ellipsoid(p, (0, q["cranium_y"] - 0.01, q["cranium_z"] - 0.045),
                            (q["cranium_rx"] * 0.85, q["cranium_ry"] * 0.7, 0.06 + q["occiput"])), 0.02)
    d = _smin(d, _ellipsoid(p, (0, q["cranium_y"] + 0.01, q["forehead_z"] - 0.035),
                            (q["cranium_rx"] * 0.82 + q["temple"], 0.06, 0.045)), 0.02)
    d = _smin(d, _ellipsoid(p, (0, q["face_y"], q["face_z"]), (q["face_rx"], q["face_ry"], q["face_rz"])), 0.03)
    for s in (-1, 1):  # jaw angles, cheekbones
        jaw_end = (s * 0.022, q["chin_y"] + 0.004, q["chin_z"] - 0.025)
        d = _smin(d, _capsule(p, (s * q["jaw_w"], q["jaw_y"] + 0.035, -0.005), jaw_end, 0.014, 0.016), 0.02)
        d = _smin(d, _ellipsoid(p, (s * q["cheek_x"], q["cheek_y"], 0.052),
                                (q["cheek_r"], q["cheek_r"] * 0.8, q["cheek_r"] * 0.9)), 0.02)
    d = _smin(d, _ellipsoid(p, (0, q["chin_y"], q["chin_z"] - q["chin_r"]),
                            (q["chin_r"] * 1.2, q["chin_r"], q["chin_r"])), 0.015)
    d = _smin(d, _ellipsoid(p, (0, q["brow_y"], q["brow_z"] - q["brow_r"]),
                            (0.052, q["brow_r"], q["brow_r"] * 1.3)), 0.015)
    d = _smin(d, _neck(p, q), 0.025)
    d = _smin(d, _nose(p, q), 0.01)
    d = _smin(d, _lips(p, q), 0.006)
    for s in (-1, 1):
        d = _smin(d, _ear(p, q, s), 0.006)
        socket = _ellipsoid(p, (s * q["eye_x"], q["eye_y"], 0.078 - q["eye_depth"]), (0.016, 0.0085, 0.012))
        d = _smax(d, -socket, 0.006)
    return d


def _neck(p: Tensor, q: dict[str, float]) -> Tensor:
    r = ((p[..., 0] / 1.05) ** 2 + (p[..., 2] + 0.018) ** 2).sqrt() - q["neck_r"]
    # a flat cut at the bottom keeps the neck a closed solid
    return _smax(_smax(r, p[..., 1] - (-0.02), 0.01), -0.175 - p[..., 1], 0.005)


def _nose(p: Tensor, q: dict[str, float]) -> Tensor:
    top = (0, q["eye_y"] - 0.002, 0.080 + q["nose_bridge"] * 0.3)
    tip = (0, q["eye_y"] - q["nose_len"], q["nose_tip_z"] - 0.008)
    d = _capsule(p, top, tip, 0.006 + q["nose_bridge"] * 0.2, 0.009)
    for s in (-1, 1):
        d = _smin(d, _ellipsoid(p, (s * q["nose_w"] * 0.6, tip[1] - 0.001, tip[2] - 0.011),
                                (q["nose_w"] * 0.45, 0.007, 0.009)), 0.006)
    return d


def _lips(p: Tensor, q: dict[str, float]) -> Tensor:
    w, t, y = q["mouth_w"], q["lip_t"], q["mouth_y"]
    upper = _ellipsoid(p, (0, y + t * 0.55, 0.084), (w, t * 0.65, 0.0085))
    lower = _ellipsoid(p, (0, y - t * 0.65, 0.081), (w * 0.85, t * 0.75, 0.0095))
    return _smin(upper, lower, 0.003)


def _ear(p: Tensor, q: dict[str, float], s: int) -> Tensor:
    c = (s * (q["cranium_rx"] + 0.004), q["ear_y"], -0.012)
    shell = _ellipsoid(p, c, (q["ear_out"], q["ear_h"], q["ear_h"] * 0.6))
    bowl = _ellipsoid(p, (c[0] + s * q["ear_out"] * 0.9, c[1] - 0.003, c[2] + 0.002),
                      (q["ear_out"] * 0.6, q["ear_h"] * 0.65, q["ear_h"] * 0.38))
    return _smax(shell, -bowl, 0.003)


def cast_rays(origins: Tensor, dirs: Tensor, q: dict[str, float], t_max: float = 0.26,
              steps: int = 80, refine: int = 22) -> Tensor:
    """Distance along each ray to the OUTERMOST crossing of the surface (march inwards from t_max).

    Taking the outermost crossing makes the surface star-shaped from each ray's origin: cavities
    a ray cannot see from outside (behind the ears) are bridged, never produce folds.

    Args:
        origins: Tensor  # [R, 3]
        dirs: Tensor  # [R, 3] unit directions.
        q: field parameters.

    Returns:
        Tensor  # [R] hit distances.
    """
    ts = torch.linspace(t_max, 0.0, steps, dtype=origins.dtype)
    # the coarse march only brackets the crossing, float32 is enough there
    pts = origins[:, None].float() + ts[None, :, None].float() * dirs[:, None].float()
    inside = head_sdf(pts, q) < 0  # [R, steps]
    first = inside.float().argmax(dim=1)
    if not bool(inside.any(dim=1).all()):
        raise RuntimeError("built-in head: a ray misses the head surface; parameters out of range")
    hi = ts[(first - 1).clamp_min(0)]  # outside
    lo = ts[first]  # inside
    for _ in range(refine):
        mid = (hi + lo) / 2
        out = head_sdf(origins + mid[:, None] * dirs, q) > 0
        hi = torch.where(out, mid, hi)
        lo = torch.where(out, lo, mid)
    return (hi + lo) / 2
