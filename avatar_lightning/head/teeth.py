"""Teeth as GaussianAvatars / VHAP add them: 120 vertices (15 lip-ring columns × 8 rows).

Built from two ordered rings of 15 vertices just outside the upper and lower lips: upper teeth
hang from the neck joint, lower teeth from the jaw; identity blendshapes follow the lips,
expressions and pose correctives do not move them (as in VHAP). Vertex order of the appended
block: upper root, lower root, upper edge, lower edge, upper root (back), upper edge (back),
lower root (back), lower edge (back) — so per-vertex data tracked with teeth (VHAP's
``static_offset`` of 5143 rows) lines up.
"""

from __future__ import annotations

import os

import numpy as np

#: FLAME 2020/2023 topology: lip-ring vertices used by GaussianAvatars/VHAP (right → left).
FLAME_LIP_RING_UPPER = (1713, 1715, 1716, 1735, 1696, 1694, 1657, 3543, 2774, 2811, 2813, 2850, 2833, 2832, 2830)
FLAME_LIP_RING_LOWER = (1576, 1577, 1773, 1774, 1795, 1802, 1865, 3503, 2948, 2905, 2898, 2881, 2880, 2713, 2712)
N_RING = 15
#: UV band of the teeth: free space at the top of FLAME's layout / a free corner of the built-in one.
FLAME_TEETH_UV = ((0.38, 0.62), (0.9575, 0.9917))
BUILTIN_TEETH_UV = ((0.84, 0.995), (0.005, 0.155))


def lip_rings(masks: dict[str, np.ndarray], num_vertices: int, source: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """The ordered upper/lower lip rings: from the masks file if it has them, else FLAME's indices."""
    if "lip_outside_ring_upper" in masks and "lip_outside_ring_lower" in masks:
        return masks["lip_outside_ring_upper"], masks["lip_outside_ring_lower"]
    if num_vertices == 5023:
        return np.array(FLAME_LIP_RING_UPPER), np.array(FLAME_LIP_RING_LOWER)
    raise ValueError(f"{source}: teeth=True needs the lip rings: a 5023-vertex FLAME topology or masks "
                     f"'lip_outside_ring_upper'/'lip_outside_ring_lower' (15 ordered vertices each)")


def teeth_vertices(v: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """The 120 teeth vertices ``[8*15, 3]`` from the template and the two lip rings."""
    vu, vl = v[upper], v[lower]
    gap = np.linalg.norm(vu - vl, axis=1).mean()
    mid = (vu + vl) / 2
    mid[:, 1] = mid[:, 1].mean()
    mid[:, 2] -= 1.5 * gap  # behind the lips
    up, back = np.array([0, gap, 0]), np.array([0, 0, gap])
    upper_edge = mid + 0.1 * up
    upper_root = upper_edge + 2 * up
    lower_edge = mid - 0.1 * up - 0.4 * back  # lower incisors sit a little behind the upper ones
    lower_root = lower_edge - 2 * up
    groups = [upper_root, lower_root, upper_edge, lower_edge, upper_root - back, upper_edge - back,
              lower_root - back, lower_edge - back]
    return np.concatenate(groups)


#: (row a, row b, outward direction) of the 8 strips: front, back, biting edge and root of each jaw.
_STRIPS = ((0, 2, (0, 0, 1)), (4, 5, (0, 0, -1)), (2, 5, (0, -1, 0)), (0, 4, (0, 1, 0)),
           (1, 3, (0, 0, 1)), (6, 7, (0, 0, -1)), (3, 7, (0, 1, 0)), (1, 6, (0, -1, 0)))


def teeth_faces(v_teeth: np.ndarray, start: int) -> np.ndarray:
    """Triangles of the 8 strips, each wound so its normal points along the strip's direction."""
    out = []
    for a, b, direction in _STRIPS:
        ia, ib = start + a * N_RING + np.arange(N_RING), start + b * N_RING + np.arange(N_RING)
        tris = np.concatenate([np.stack([ia[:-1], ib[:-1], ia[1:]], -1), np.stack([ia[1:], ib[:-1], ib[1:]], -1)])
        p = v_teeth[tris - start]
        n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        flip = n @ np.asarray(direction, float) < 0
        tris[flip] = tris[flip][:, ::-1]
        out.append(tris)
    return np.concatenate(out)


def teeth_uv(faces: np.ndarray, start: int, uv_start: int, band: tuple[tuple[float, float], ...]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Each strip gets its own rectangle in ``band`` (no overlaps). Returns ``uv [8*2*15, 2]`` and uv faces."""
    (u0, u1), (v0, v1) = band
    rows = np.linspace(v0, v1, 2 * len(_STRIPS))
    uv, uv_faces = [], []
    for s, (a, _b, _) in enumerate(_STRIPS):
        u = np.linspace(u0, u1, N_RING)
        uv.append(np.concatenate([np.stack([u, np.full(N_RING, rows[2 * s])], -1),
                                  np.stack([u, np.full(N_RING, rows[2 * s + 1])], -1)]))
        f = faces[s * 2 * (N_RING - 1):(s + 1) * 2 * (N_RING - 1)] - start
        local = np.where(f // N_RING == a, f % N_RING, N_RING + f % N_RING)  # row a → 0..14, row b → 15..29
        uv_faces.append(uv_start + 2 * N_RING * s + local)
    uv_arr, uvf = np.concatenate(uv), np.concatenate(uv_faces)
    # mirror strips whose winding came out clockwise in UV so every UV triangle winds the same way
    t = uv_arr[uvf - uv_start]
    area = (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 1, 1] - t[:, 0, 1]) * (t[:, 2, 0] - t[:, 0, 0])
    uvf[area < 0] = uvf[area < 0][:, ::-1]
    return uv_arr, uvf


def add_teeth(data: dict[str, np.ndarray], uv_coords: np.ndarray | None, uv_faces: np.ndarray | None,
              masks: dict[str, np.ndarray], source: str | os.PathLike):
    """Append the teeth to a densified FLAME dict, its UV layout and its masks.

    Returns:
        (data, uv_coords, uv_faces, masks) with V + 120 vertices (UVs stay ``None`` if given ``None``).
    """
    v = data["v_template"]
    V = v.shape[0]
    upper, lower = lip_rings(masks, V, source)
    if len(upper) != N_RING or len(lower) != N_RING:
        raise ValueError(f"{source}: lip rings must have {N_RING} vertices each, got {len(upper)}/{len(lower)}")
    vt = teeth_vertices(v, upper, lower)
    n = vt.shape[0]
    faces = teeth_faces(vt, V)
    if uv_coords is not None:
        band = FLAME_TEETH_UV if V == 5023 else BUILTIN_TEETH_UV
        uv_t, uvf_t = teeth_uv(faces, V, uv_coords.shape[0], band)
        uv_coords, uv_faces = np.concatenate([uv_coords, uv_t]), np.concatenate([uv_faces, uvf_t])
    shapedirs = np.zeros((n, 3, data["shapedirs"].shape[2]))
    shapedirs[:, :, :300] = np.tile((data["shapedirs"][upper, :, :300] + data["shapedirs"][lower, :, :300]) / 2,
                                    (8, 1, 1))
    weights = np.zeros((n, data["weights"].shape[1]))
    weights[np.r_[0:15, 30:45, 60:90], 1] = 1  # upper teeth: neck (the skull)
    weights[np.r_[15:30, 45:60, 90:120], 2] = 1  # lower teeth: jaw
    out = dict(data)
    out.update(v_template=np.concatenate([v, vt]), shapedirs=np.concatenate([data["shapedirs"], shapedirs]),
               posedirs=np.concatenate([data["posedirs"], np.zeros((n, 3, data["posedirs"].shape[2]))]),
               J_regressor=np.concatenate([data["J_regressor"], np.zeros((data["J_regressor"].shape[0], n))], 1),
               weights=np.concatenate([data["weights"], weights]), f=np.concatenate([data["f"], faces]))
    masks = dict(masks)
    masks["teeth_upper"] = V + np.r_[0:15, 30:45, 60:90]
    masks["teeth_lower"] = V + np.r_[15:30, 45:60, 90:120]
    masks["teeth"] = V + np.arange(n)
    return out, uv_coords, uv_faces, masks
