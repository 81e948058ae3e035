"""metrical-tracker conventions: 6D rotations (PyTorch3D rows) and the axis-angle conversion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from avatar_lightning.head.lbs import axis_angle_to_matrix
from avatar_lightning.io import torch_save
from data_modules.metrical_tracker import (
    frame_number,
    load_tracker_frame,
    matrix_to_axis_angle,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)


def test_6d_is_the_first_two_rows():
    """PyTorch3D: matrix_to_rotation_6d(R) = R[:2, :]; metrical-tracker's identity 6D is [1,0,0, 0,1,0]."""
    theta = 0.3
    rx = torch.tensor([[1.0, 0, 0], [0, math.cos(theta), -math.sin(theta)], [0, math.sin(theta), math.cos(theta)]])
    d6 = torch.tensor([1.0, 0, 0, 0, math.cos(theta), -math.sin(theta)])
    torch.testing.assert_close(rotation_6d_to_matrix(d6), rx)
    torch.testing.assert_close(matrix_to_axis_angle(rotation_6d_to_matrix(d6)), torch.tensor([theta, 0, 0]))
    torch.testing.assert_close(matrix_to_rotation_6d(torch.eye(3)), torch.tensor([1.0, 0, 0, 0, 1, 0]))
    # read as columns, the same numbers would be the inverse rotation
    assert not torch.allclose(rotation_6d_to_matrix(d6), rx.T)


def test_6d_round_trip_and_gram_schmidt():
    R = torch.from_numpy(Rotation.random(64, random_state=0).as_matrix())
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(R)), R)
    noisy = matrix_to_rotation_6d(R) * 2.5 + 0.01 * torch.randn(64, 6, dtype=torch.float64)
    out = rotation_6d_to_matrix(noisy)
    torch.testing.assert_close(out @ out.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3))
    torch.testing.assert_close(torch.linalg.det(out), torch.ones(64, dtype=torch.float64))


@pytest.mark.parametrize("angle", [1e-7, 0.5, 3.0, math.pi - 1e-6])
def test_axis_angle_inverts_rodrigues(angle):
    axis = torch.tensor([0.3, -0.5, 0.81], dtype=torch.float64)
    rotvec = axis / axis.norm() * angle
    back = matrix_to_axis_angle(axis_angle_to_matrix(rotvec))
    torch.testing.assert_close(axis_angle_to_matrix(back), axis_angle_to_matrix(rotvec))
    torch.testing.assert_close(back.norm(), torch.tensor(angle, dtype=torch.float64), atol=1e-6, rtol=0)


def test_load_frame_converts_pose_and_camera(tmp_path):
    jaw, eyes = np.array([0.2, 0.01, -0.02]), np.array([[0.1, -0.05, 0.0], [-0.1, 0.02, 0.03]])
    to6d = lambda v: Rotation.from_rotvec(v).as_matrix()[..., :2, :].reshape(-1)  # noqa: E731
    R = Rotation.from_rotvec([0.1, 0.2, -0.3]).as_matrix()
    frame = {"flame": {"exp": np.ones((1, 100)), "shape": np.full((1, 300), 0.5), "eyes": np.concatenate(
        [to6d(eyes[0]), to6d(eyes[1])])[None], "jaw": to6d(jaw)[None], "eyelids": np.zeros((1, 2))},
        "opencv": {"R": R[None], "t": np.array([[0.0, 0.1, 1.0]]), "K": np.eye(3)[None] * 500},
        "img_size": np.array([512, 512]), "frame_id": "00007", "global_step": 3}
    torch_save(tmp_path / "00007.frame", frame)
    out = load_tracker_frame(tmp_path / "00007.frame", n_shape=20, n_expr=10)
    expected = torch.zeros(5, 3)
    expected[2], expected[3:] = torch.tensor(jaw), torch.tensor(eyes)
    torch.testing.assert_close(out.flame.pose, expected)
    assert out.flame.shape.shape == (20,) and out.flame.expr.shape == (10,) and not out.flame.translation.any()
    torch.testing.assert_close(out.world_to_cam[:3, :3], torch.tensor(R, dtype=torch.float32))
    torch.testing.assert_close(out.world_to_cam[:3, 3], torch.tensor([0.0, 0.1, 1.0]))
    assert out.image_size == (512, 512) and out.frame_id == "00007"
    with pytest.raises(ValueError, match="asks for 20 / 200"):
        load_tracker_frame(tmp_path / "00007.frame", n_shape=20, n_expr=200)
    del frame["flame"]["jaw"]
    torch_save(tmp_path / "bad.frame", frame)
    with pytest.raises(KeyError, match=r"bad.frame \['flame'\] lacks field\(s\) \['jaw'\]"):
        load_tracker_frame(tmp_path / "bad.frame", 20, 10)


def test_frame_number():
    assert frame_number("00042") == 42 and frame_number("frame_7") == 7
    with pytest.raises(ValueError, match="no frame number"):
        frame_number("abc")
