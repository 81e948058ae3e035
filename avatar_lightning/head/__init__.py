"""FLAME-format morphable model, built-in head, UV toolkit, posing Gaussians.

Entry point: :func:`load_head_model` (a FLAME ``generic_model.pkl`` or ``"builtin"``). UV maps
(``uv``), texture back-projection and the DataModules' ``uv_inputs`` (``texture``), Gaussians
bound to and posed with the head (``gaussians``).
"""

from .gaussians import MeshBinding, point_transforms, pose_gaussians, rotate_sh, surface_points
from .lbs import axis_angle_to_matrix
from .model import JOINT_NAMES, HeadModel, HeadOutput, load_head_model
from .texture import BakedTexture, backproject_texture, uv_inputs
from .uv import (
    UVRaster,
    expression_map,
    interpolate,
    part_masks,
    position_map,
    region_masks,
    sample_uv,
    tangent_frames,
    texel_grid,
    uv_rasterize,
    uv_to_grid,
)

__all__ = [
    "JOINT_NAMES", "BakedTexture", "HeadModel", "HeadOutput", "MeshBinding", "UVRaster", "axis_angle_to_matrix",
    "backproject_texture", "expression_map", "interpolate", "load_head_model", "part_masks", "point_transforms",
    "pose_gaussians", "position_map", "region_masks", "rotate_sh", "sample_uv", "surface_points", "tangent_frames",
    "texel_grid", "uv_inputs", "uv_rasterize", "uv_to_grid",
]
