"""Which camera is the frontal one: 3DRealHead's conditioning always comes from it (paper §IV-A, §IV-C).

Enrollment takes its identity texture from 1–3 neutral views with the frontal one first, and
driving takes the mouth features from the frontal frame. A view is frontal when the direction from
the head to the camera is close to the direction the face looks at: the head model's +z (FLAME
convention, y up) turned by the tracked global and neck rotations.

Dimension letters: B batch, V views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from avatar_lightning.head.lbs import axis_angle_to_matrix

#: Largest angle (degrees) between the face's front and a camera that still counts as frontal (chosen:
#: the ±35° enrollment side cameras must not pass, a slightly turned head must).
FRONTAL_MAX_DEG = 30.0


def face_directions(pose: Tensor) -> Tensor:
    """Where the face looks, in world space: +z turned by the global then the neck rotation.

    Args:
        pose: Tensor  # [B, 5, 3] axis-angle (global, neck, jaw, eyes).

    Returns:
        Tensor  # [B, 3] unit vectors.
    """
    rot = axis_angle_to_matrix(pose[:, 0]) @ axis_angle_to_matrix(pose[:, 1])  # [B, 3, 3]
    return rot[..., :, 2]


def frontal_angles(world_to_cam: Tensor, pose: Tensor, centre: Tensor) -> Tensor:
    """Angle between each view's camera direction (seen from the head) and the face's front.

    Args:
        world_to_cam: Tensor  # [B, V, 4, 4] OpenCV extrinsics.
        pose: Tensor  # [B, 5, 3] tracked pose.
        centre: Tensor  # [B, 3] world-space head centre.

    Returns:
        Tensor  # [B, V] degrees in [0, 180].
    """
    eye = torch.linalg.inv(world_to_cam.float())[..., :3, 3]  # [B, V, 3]
    to_cam = F.normalize(eye - centre[:, None].float(), dim=-1)
    cos = (to_cam * face_directions(pose.float())[:, None]).sum(-1)
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))


def require_frontal(world_to_cam: Tensor, pose: Tensor, centre: Tensor, view: int | None, where: str,
                    max_deg: float = FRONTAL_MAX_DEG) -> int:
    """The frontal view's index: ``view`` when given (checked), else the most frontal view.

    Args:
        world_to_cam: Tensor  # [B, V, 4, 4]
        pose: Tensor  # [B, 5, 3]
        centre: Tensor  # [B, 3]
        view: the view that must be frontal (enrollment: 0, the first input image), or None.
        where: what the views are, for the message.
        max_deg: the largest angle that counts as frontal.

    Returns:
        The view index (the same for every sample of the batch).

    Raises:
        ValueError: naming ``where`` and the angle, when the view is not frontal in some sample (or no
            view is, with ``view=None``).
    """
    angles = frontal_angles(world_to_cam, pose, centre)  # [B, V]
    index = int(angles.amax(0).argmin()) if view is None else view
    worst = float(angles[:, index].max())
    if worst > max_deg:
        which = f"view {index} is not" if view is not None else "no view is"
        raise ValueError(f"{where}: {which} a frontal camera ({worst:.1f}° from the face's front, "
                         f"> {max_deg}°); 3DRealHead's conditioning comes from the frontal camera (paper §IV-A): "
                         f"put the frontal image first, or drive with a sequence that has a frontal camera")
    return index
