"""Gaussians, cameras and the one differentiable rasteriser every part of the project renders with.

Dimension letters used in shapes throughout the project (``means: Tensor  # [N, 3]``):

====  ==================================================================
B     batch (avatars / samples)
V     views per sample (dataset side); also (avatar, camera) pairs inside the rasteriser
C     cameras per render call
N     Gaussians
F     mesh faces
S, E  3DMM shape and expression dimensions
K     SH coefficients per colour channel, (degree + 1)²
H, W  image height and width (pixels)
h, w  UV / latent map height and width
====  ==================================================================

Conventions (DESIGN.md, "Contracts"): OpenCV cameras (x right, y down, z forward), ``K`` in pixels
with a principal point, wxyz quaternions (normalised inside), linear scales, opacities in [0, 1],
pixel centres at (j + 0.5, i + 0.5).

Usage::

    g = Gaussians(means=means, quats=quats, scales=scales, opacities=opacities, sh=sh)  # [N, ...]
    cams = Cameras(K=K, world_to_cam=w2c, width=W, height=H)                             # [C, ...]
    out = rasterize(g, cams, background=torch.ones(3))    # out.rgb [C, 3, H, W], alpha/depth [C, 1, H, W]

    # a batch of avatars, each with its own cameras: every field gains a leading B
    out = rasterize(g_b, Cameras(K=K_b, world_to_cam=w2c_b, width=W, height=H), background=bg_b)
    # g_b.means [B, N, 3], K_b [B, C, 3, 3], bg_b [B, 3] -> out.rgb [B, C, 3, H, W]

The torch backend is differentiable w.r.t. every Gaussian field, the background and the cameras
(``K``, ``world_to_cam``); see :func:`rasterize` for the backends.
"""

from .cameras import intrinsics_from_fov, look_at, opengl_to_opencv, orbit_cameras
from .ply import load_ply, save_ply
from .rasterize import BACKENDS, rasterize, resolve_backend
from .rotations import (
    normalize_quat,
    quat_multiply,
    quat_to_rotmat,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_wxyz,
    rotmat_to_quat,
)
from .sh import eval_sh, num_sh_bases, rgb_to_sh, sh_to_rgb
from .types import Cameras, Gaussians, RenderOutput

__all__ = [
    "BACKENDS", "Cameras", "Gaussians", "RenderOutput", "eval_sh", "intrinsics_from_fov", "load_ply",
    "look_at", "normalize_quat", "num_sh_bases", "opengl_to_opencv", "orbit_cameras", "quat_multiply",
    "quat_to_rotmat", "quat_wxyz_to_xyzw", "quat_xyzw_to_wxyz", "rasterize", "resolve_backend", "rgb_to_sh",
    "rotmat_to_quat",
    "save_ply", "sh_to_rgb",
]
