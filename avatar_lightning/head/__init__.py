"""FLAME-format morphable model, built-in head, UV toolkit, posing Gaussians.

Entry point: :func:`load_head_model` (a FLAME ``generic_model.pkl`` or ``"builtin"``).
"""

from .lbs import axis_angle_to_matrix
from .model import JOINT_NAMES, HeadModel, HeadOutput, load_head_model

__all__ = ["JOINT_NAMES", "HeadModel", "HeadOutput", "axis_angle_to_matrix", "load_head_model"]
