"""The synthetic capture rig: cameras in front of the subject plus cameras over the upper hemisphere.

SynShot §3.4: "We positioned fourteen cameras in front of the subject and an additional fourteen
cameras sampled from the upper hemisphere, centered on the scene." The rig here is pure geometry
and fixed for a whole dataset (every identity is seen by the same cameras), so it is stored once.

World frame = head-model frame (FLAME): y up, the face looks down +z, x to the subject's left.
Cameras are OpenCV (x right, y down, z forward), intrinsics in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from avatar_lightning.render import intrinsics_from_fov, look_at

#: Paper-scale rig size (SynShot §3.4): 14 frontal + 14 upper-hemisphere cameras.
PAPER_CAMERAS = 28


@dataclass
class Rig:
    """A fixed camera rig aimed at one target point.

    Attributes:
        K: pinhole intrinsics in pixels.  # [C, 3, 3]
        world_to_cam: OpenCV extrinsics.  # [C, 4, 4]
        frontal: True for cameras of the frontal group.  # [C] bool
        width: image width in pixels.
        height: image height in pixels.
        target: the point every camera looks at (head centre).  # [3]
    """

    K: Tensor
    world_to_cam: Tensor
    frontal: Tensor
    width: int
    height: int
    target: Tensor

    @property
    def n(self) -> int:
        """Number of cameras C."""
        return int(self.K.shape[0])

    def centres(self) -> Tensor:
        """Camera centres in world space.  # [C, 3]"""
        rot, trans = self.world_to_cam[:, :3, :3], self.world_to_cam[:, :3, 3]
        return -torch.einsum("cji,cj->ci", rot, trans)

    def to_dict(self) -> dict[str, list]:
        """JSON-serialisable form (stored in the dataset's ``cameras.json``)."""
        return {
            "K": self.K.tolist(), "world_to_cam": self.world_to_cam.tolist(), "frontal": self.frontal.tolist(),
            "width": self.width, "height": self.height, "target": self.target.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Rig:
        """Inverse of :meth:`to_dict`."""
        return cls(K=torch.tensor(d["K"]), world_to_cam=torch.tensor(d["world_to_cam"]),
                   frontal=torch.tensor(d["frontal"], dtype=torch.bool), width=int(d["width"]),
                   height=int(d["height"]), target=torch.tensor(d["target"]))


def _directions(azimuth_deg: Tensor, elevation_deg: Tensor) -> Tensor:
    """Unit vectors from azimuth (0 = +z, the face direction; +90 = +x) and elevation (+ = up)."""
    az, el = torch.deg2rad(azimuth_deg), torch.deg2rad(elevation_deg)
    return torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], dim=-1)


def frontal_angles(n: int, max_yaw: float = 60.0, pitches: tuple[float, float] = (-10.0, 15.0)) -> Tensor:
    """Azimuth/elevation (degrees) of ``n`` frontal cameras: two rows spread over ±``max_yaw``.

    Returns:
        angles.  # [n, 2] (azimuth, elevation)
    """
    rows = [n - n // 2, n // 2] if n >= 4 else [n]
    angles = []
    for row, count in enumerate(rows):
        # Stagger the second row by half a step so the views interleave instead of stacking.
        step = 2 * max_yaw / max(count - 1 + 0.5 * row, 1)
        yaws = [-max_yaw + (i + 0.5 * row) * step for i in range(count)] if count > 1 else [0.0]
        angles += [(yaw, pitches[row] if len(rows) > 1 else 0.0) for yaw in yaws]
    return torch.tensor(angles, dtype=torch.float64)


def upper_hemisphere_angles(n: int, min_elevation: float = 20.0, max_elevation: float = 70.0) -> Tensor:
    """Azimuth/elevation (degrees) of ``n`` cameras on the upper hemisphere (all around the head).

    A golden-angle (Fibonacci) spiral: deterministic, evenly spread, so the rig is reproducible
    without a random seed. Elevation is capped below the pole where an up-vector look-at degenerates.

    Returns:
        angles.  # [n, 2] (azimuth, elevation)
    """
    i = torch.arange(n, dtype=torch.float64)
    lo, hi = math.sin(math.radians(min_elevation)), math.sin(math.radians(max_elevation))
    elevation = torch.rad2deg(torch.asin(lo + (hi - lo) * (i + 0.5) / max(n, 1)))  # equal-area in height
    azimuth = torch.remainder(i * 180.0 * (3.0 - math.sqrt(5.0)) + 180.0, 360.0) - 180.0
    return torch.stack([azimuth, elevation], dim=-1)


def build_rig(n_cameras: int, height: int, width: int, target: Tensor, distance: float = 1.0,
              fov_y_deg: float = 18.0) -> Rig:
    """The synthetic rig: ``ceil(n/2)`` frontal cameras, the rest over the upper hemisphere.

    Args:
        n_cameras: C (28 at paper scale: 14 + 14).
        height: image height H in pixels.
        width: image width W in pixels.
        target: head centre every camera looks at.  # [3]
        distance: camera distance from ``target`` in head-model units (metres for FLAME).
        fov_y_deg: vertical field of view; 18° at 1 m frames a head with hair and its neck (≈32 cm).

    Returns:
        The rig (float32).
    """
    if n_cameras < 1:
        raise ValueError(f"n_cameras must be >= 1, got {n_cameras}")
    n_front = (n_cameras + 1) // 2
    angles = torch.cat([frontal_angles(n_front), upper_hemisphere_angles(n_cameras - n_front)])
    target64 = target.to(torch.float64)
    eye = target64 + distance * _directions(angles[:, 0], angles[:, 1])
    w2c = look_at(eye, target64.expand_as(eye))
    K = intrinsics_from_fov(torch.tensor(fov_y_deg, dtype=torch.float64), width, height, axis="y")
    frontal = torch.arange(n_cameras) < n_front
    return Rig(K=K.expand(n_cameras, 3, 3).float().contiguous(), world_to_cam=w2c.float(), frontal=frontal,
               width=width, height=height, target=target.float())
