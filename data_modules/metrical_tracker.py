"""metrical-tracker output: ``<actor>/checkpoint/<frame>.frame`` files written by ``torch.save``.

Each checkpoint is a dict (read from metrical-tracker ``tracker.py::save_checkpoint``)::

    flame:  exp [1,100], shape [1,300], tex [1,140], sh [1,9,3], eyes [1,12], jaw [1,6], eyelids [1,2]
    camera: R (6D), t, fl, pp        (PyTorch3D camera being optimised)
    opencv: R [1,3,3], t [1,3], K [1,3,3]   (the same camera as OpenCV world-to-camera + intrinsics)
    img_size [2] = (h, w), frame_id (str), global_step

The tracker's FLAME has no global rotation or translation (the head pose lives in the camera), so
global pose and translation are zero. ``jaw`` and ``eyes`` (left then right) are 6D rotations in
PyTorch3D's convention: the first two *rows* of the rotation matrix (``matrix_to_rotation_6d``),
recovered by Gram-Schmidt (``rotation_6d_to_matrix``). ``eyelids`` drive two extra blendshapes
shipped with the tracker, which FLAME files do not contain; they are returned but not applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from scipy.spatial.transform import Rotation
from torch import Tensor

from data_modules.real_common import FlameParams, require_keys


def rotation_6d_to_matrix(d6: Tensor) -> Tensor:
    """PyTorch3D's 6D -> rotation matrix (Zhou et al. 2019): Gram-Schmidt on two vectors, as *rows*.

    Args:
        d6: Tensor  # [..., 6]

    Returns:
        Tensor  # [..., 3, 3] whose first two rows are the normalised/orthogonalised inputs.
    """
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.linalg.cross(b1, b2)], dim=-2)


def matrix_to_rotation_6d(matrix: Tensor) -> Tensor:
    """Inverse of :func:`rotation_6d_to_matrix` on rotations: the first two rows, flattened.

    Args:
        matrix: Tensor  # [..., 3, 3]

    Returns:
        Tensor  # [..., 6]
    """
    return rearrange(matrix[..., :2, :], "... r c -> ... (r c)")


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """Rotation matrices -> rotation vectors (via scipy's quaternion route, stable near pi).

    Args:
        matrix: Tensor  # [..., 3, 3]

    Returns:
        Tensor  # [..., 3], same dtype
    """
    flat = matrix.detach().cpu().double().reshape(-1, 3, 3).numpy()
    rotvec = Rotation.from_matrix(flat).as_rotvec() if len(flat) else np.zeros((0, 3))
    return torch.from_numpy(rotvec).to(matrix.dtype).reshape(*matrix.shape[:-2], 3)


@dataclass
class TrackerFrame:
    """One metrical-tracker checkpoint, converted.

    Attributes:
        frame_id: the checkpoint's ``frame_id``.
        flame: FLAME parameters (global pose and translation zero).
        K: Tensor  # [3, 3] intrinsics in pixels
        world_to_cam: Tensor  # [4, 4] OpenCV extrinsics
        image_size: (height, width)
        eyelids: Tensor  # [2] the tracker's eyelid blendshape weights (not applied)
    """

    frame_id: str
    flame: FlameParams
    K: Tensor
    world_to_cam: Tensor
    image_size: tuple[int, int]
    eyelids: Tensor


def _array(section: dict, key: str, size: int, path: Path) -> Tensor:
    value = torch.as_tensor(np.asarray(section[key]), dtype=torch.float32).reshape(-1)
    if value.numel() != size and size > 0:
        raise ValueError(f"{path}: {key} must hold {size} values, got {value.numel()}")
    return value


def load_tracker_frame(path: str | Path, n_shape: int, n_expr: int) -> TrackerFrame:
    """Read and convert one ``.frame`` checkpoint.

    Args:
        path: the checkpoint.
        n_shape: identity coefficients kept.
        n_expr: expression coefficients kept.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrical-tracker checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch.load raises several unrelated types for corrupt files
        raise ValueError(f"cannot read metrical-tracker checkpoint {path}: {err}") from err
    require_keys(payload, ("flame", "opencv", "img_size", "frame_id"), f"checkpoint {path}")
    flame, cv = payload["flame"], payload["opencv"]
    require_keys(flame, ("exp", "shape", "eyes", "jaw"), f"checkpoint {path} ['flame']")
    require_keys(cv, ("R", "t", "K"), f"checkpoint {path} ['opencv']")
    exp, shape = _array(flame, "exp", 0, path), _array(flame, "shape", 0, path)
    if exp.numel() < n_expr or shape.numel() < n_shape:
        raise ValueError(f"{path}: has {shape.numel()} shape / {exp.numel()} exp coefficients, "
                         f"the DataModule asks for {n_shape} / {n_expr}")
    jaw = rotation_6d_to_matrix(_array(flame, "jaw", 6, path))
    eyes = rotation_6d_to_matrix(_array(flame, "eyes", 12, path).reshape(2, 6))
    pose = torch.zeros(5, 3)
    pose[2] = matrix_to_axis_angle(jaw)
    pose[3:] = matrix_to_axis_angle(eyes)
    w2c = torch.eye(4)
    w2c[:3, :3] = _array(cv, "R", 9, path).reshape(3, 3)
    w2c[:3, 3] = _array(cv, "t", 3, path)
    eyelids = _array(flame, "eyelids", 2, path) if "eyelids" in flame else torch.zeros(2)
    h, w = (int(v) for v in np.asarray(payload["img_size"]).reshape(-1)[:2])
    return TrackerFrame(frame_id=str(payload["frame_id"]),
                        flame=FlameParams(shape=shape[:n_shape], expr=exp[:n_expr], pose=pose,
                                          translation=torch.zeros(3)),
                        K=_array(cv, "K", 9, path).reshape(3, 3), world_to_cam=w2c, image_size=(h, w),
                        eyelids=eyelids)


def frame_number(name: str) -> int:
    """The integer frame index in a file stem or frame id such as ``"00042"`` or ``"frame_42"``."""
    digits = re.findall(r"\d+", name)
    if not digits:
        raise ValueError(f"no frame number in {name!r}")
    return int(digits[-1])


def index_checkpoints(folder: str | Path) -> dict[int, Path]:
    """Map frame number -> ``.frame`` file in a metrical-tracker ``checkpoint`` folder."""
    folder = Path(folder)
    if folder.is_dir() and (folder / "checkpoint").is_dir():
        folder = folder / "checkpoint"
    if not folder.is_dir():
        raise FileNotFoundError(f"metrical-tracker checkpoint folder not found: {folder}")
    found = {frame_number(p.stem): p for p in sorted(folder.glob("*.frame"))}
    if not found:
        raise FileNotFoundError(f"no *.frame checkpoints in {folder}")
    return found
