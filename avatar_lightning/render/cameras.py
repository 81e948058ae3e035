"""Camera construction: look-at, orbit/turntable paths, intrinsics from a field of view,
and the OpenGL ↔ OpenCV camera-to-world conversion.

Everything returns OpenCV extrinsics (x right, y down, z forward) as ``Cameras`` expects.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_FLIP_YZ = (1.0, -1.0, -1.0, 1.0)


def _as_tensor(x, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x if like is None else x.to(like)
    return torch.as_tensor(x, dtype=torch.float32 if like is None else like.dtype,
                           device=None if like is None else like.device)


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> Tensor:
    """World-to-camera matrices of cameras at ``eye`` looking at ``target`` (OpenCV).

    The camera's image "up" (−y) is as close to ``up`` as the viewing direction allows.

    Args:
        eye: Tensor  # [..., 3] camera centres.
        target: Tensor  # [..., 3] points to look at (broadcastable with ``eye``).
        up: Tensor  # [..., 3] world up direction (not parallel to the viewing direction).

    Returns:
        Tensor  # [..., 4, 4] world_to_cam.
    """
    eye = _as_tensor(eye)
    target, up = _as_tensor(target, eye), _as_tensor(up, eye)
    eye, target, up = torch.broadcast_tensors(eye, target, up)
    fwd = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.cross(fwd, up, dim=-1)
    if bool((right.norm(dim=-1) < 1e-8).any()):
        raise ValueError("look_at: `up` is parallel to the viewing direction for some camera")
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.cross(fwd, right, dim=-1)
    rot = torch.stack([right, down, fwd], dim=-2)  # rows: camera axes in world coordinates
    out = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    out[..., :3, :3] = rot
    out[..., :3, 3] = -(rot @ eye[..., None])[..., 0]
    out[..., 3, 3] = 1
    return out


def orbit_cameras(num: int, radius: float, elevation_deg: float = 0.0, target=(0.0, 0.0, 0.0),
                  up=(0.0, 1.0, 0.0), start_azimuth_deg: float = 0.0, arc_deg: float = 360.0) -> Tensor:
    """A turntable path: ``num`` cameras on a circle around ``target``, all looking at it.

    Azimuth 0 puts the camera on the +z side of ``target`` (in front of a FLAME-style head, which
    faces +z with y up); azimuth grows towards +x. A full 360° arc does not repeat its first view.

    Args:
        num: number of cameras.
        radius: distance from ``target``.
        elevation_deg: angle above the horizontal plane (the plane orthogonal to ``up``).
        target: Tensor  # [3] point looked at.
        up: Tensor  # [3] world up; must be +y-like: the circle lies in the x-z plane rotated by it.
        start_azimuth_deg: azimuth of the first camera.
        arc_deg: total angle covered.

    Returns:
        Tensor  # [num, 4, 4] world_to_cam (OpenCV).
    """
    target = _as_tensor(target)
    up = torch.nn.functional.normalize(_as_tensor(up, target), dim=-1)
    step = arc_deg / num if abs(arc_deg - 360.0) < 1e-9 else arc_deg / max(num - 1, 1)
    az = torch.deg2rad(torch.tensor([start_azimuth_deg + i * step for i in range(num)], dtype=target.dtype))
    el = math.radians(elevation_deg)
    # an orthonormal frame (side, up, front) with front ≈ +z for up = +y
    front = torch.tensor([0.0, 0.0, 1.0], dtype=target.dtype)
    if abs(float(front @ up)) > 0.99:
        front = torch.tensor([1.0, 0.0, 0.0], dtype=target.dtype)
    side = torch.nn.functional.normalize(torch.cross(up, front, dim=-1), dim=-1)
    front = torch.cross(side, up, dim=-1)
    dirs = (math.cos(el) * (torch.cos(az)[:, None] * front + torch.sin(az)[:, None] * side)
            + math.sin(el) * up)
    return look_at(target + radius * dirs, target.expand(num, 3), up.expand(num, 3))


def intrinsics_from_fov(fov, width: int, height: int, axis: str = "x", degrees: bool = True) -> Tensor:
    """Pinhole intrinsics with square pixels and the principal point at the image centre.

    Args:
        fov: Tensor  # [...] full field of view along ``axis``.
        width: image width W.
        height: image height H.
        axis: "x" (horizontal fov) or "y" (vertical fov).
        degrees: ``fov`` is in degrees (else radians).

    Returns:
        Tensor  # [..., 3, 3]
    """
    if axis not in ("x", "y"):
        raise ValueError(f"intrinsics_from_fov: axis must be 'x' or 'y', got {axis!r}")
    fov = _as_tensor(fov)
    fov = torch.deg2rad(fov) if degrees else fov
    focal = 0.5 * (width if axis == "x" else height) / torch.tan(0.5 * fov)
    K = torch.zeros(*fov.shape, 3, 3, dtype=fov.dtype, device=fov.device)
    K[..., 0, 0] = focal
    K[..., 1, 1] = focal
    K[..., 0, 2] = 0.5 * width
    K[..., 1, 2] = 0.5 * height
    K[..., 2, 2] = 1
    return K


def opengl_to_opencv(cam_to_world: Tensor) -> Tensor:
    """Convert camera-to-world matrices from OpenGL (y up, z backward) to OpenCV (y down, z forward).

    Flips the camera's y and z axes (columns 1 and 2). The conversion is its own inverse, so it
    also converts OpenCV to OpenGL. Invert the result (``torch.linalg.inv``) for world_to_cam.

    Args:
        cam_to_world: Tensor  # [..., 4, 4]

    Returns:
        Tensor  # [..., 4, 4]
    """
    flip = torch.tensor(_FLIP_YZ, dtype=cam_to_world.dtype, device=cam_to_world.device)
    return cam_to_world * flip


opencv_to_opengl = opengl_to_opencv
