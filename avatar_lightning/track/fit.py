"""Fit the head model to 2D landmarks: shared shape and focal length, per-frame everything else.

The objective is the one of DECA / EMOCA / metrical-tracker landmark fitting (a sparse-landmark
MAP estimate), minimised over all frames at once with L-BFGS:

- **data**: robust (Huber) reprojection error of every embedded landmark, in units of ``sigma`` ×
  the frame's face size, weighted by the embedding's per-landmark confidence;
- **priors**: ``‖β‖²`` (identity) and ``‖ψ‖²`` (expression), both in FLAME's standard-deviation
  units; jaw, neck and eye rotations pulled to rest (jaw also kept from rotating sideways);
  log focal length pulled to its initial value (a single view hardly constrains it);
- **temporal** (video only): squared acceleration of the 3D landmarks in the camera frame (in
  ``smooth_mm``), which damps per-frame jitter of pose, translation, jaw and expression together
  without dragging steady motion, plus a little first-order smoothing of the expression.

As in metrical-tracker the head has no global rotation or translation: the rigid head pose is the
camera's ``world_to_cam = [R | t]`` (OpenCV), so FLAME's global pose and translation are zero and the
world frame is the head's. Neck rotation is nearly indistinguishable from that rigid pose for face
landmarks (it differs only by the pivot, which the translation absorbs) and the INSTA format cannot
hold it, so it stays at rest unless ``fit_neck`` is set (then its prior applies). Principal point:
the image centre. Stage 1 fits the rigid pose alone, stage 2 everything; for a video, stage 3 adds
the temporal terms, starting from stage 2's per-frame fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from avatar_lightning.head.lbs import axis_angle_to_matrix
from avatar_lightning.track.embedding import LandmarkEmbedding
from avatar_lightning.track.landmark_head import LandmarkHead

#: OpenCV camera looking at a FLAME head that faces it upright: 180° about x (y up -> down, z -> -z).
FACING_CAMERA = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


@dataclass
class FitConfig:
    """Weights and schedule of :func:`fit_landmarks` (each prior is per frame, relative to the data term).

    Attributes:
        sigma: landmark noise as a share of the face size (bounding-box diagonal); the data term is
            O(1) per landmark at this error.
        huber: residuals beyond ``huber`` sigmas count linearly (outlier landmarks).
        shape: weight of ``‖β‖²``.
        expr: weight of ``‖ψ‖²``.
        jaw: weight of ``‖jaw‖²`` (radians); sideways and twisting jaw rotations cost 10x more.
        neck: weight of ``‖neck‖²`` (radians).
        eyes: weight of ``‖eye rotations‖²`` (radians).
        focal: weight of ``(log f − log f₀)²``.
        smooth_mm: video: acceleration of the camera-space 3D landmarks that costs as much as one
            sigma of reprojection error (millimetres per frame²).
        smooth_expr: video: weight of ``‖ψ_t − ψ_{t−1}‖²``.
        rigid_steps: L-BFGS iterations of the rigid stage.
        steps: L-BFGS iterations of the full stage (and again of the temporal stage of a video).
        fit_focal: optimise the shared focal length (else keep the initial one).
        fit_neck: optimise the neck rotation (with the ``neck`` prior). Off by default: face landmarks
            hardly tell it from the rigid pose, and INSTA / metrical-tracker files cannot hold it
            (INSTADataModule reads it as zero), so a fitted neck would not be what the loader poses.
    """

    sigma: float = 0.01
    huber: float = 3.0
    shape: float = 0.05
    expr: float = 0.05
    jaw: float = 1.0
    neck: float = 100.0
    eyes: float = 1.0
    focal: float = 10.0
    smooth_mm: float = 1.0
    smooth_expr: float = 0.1
    rigid_steps: int = 40
    steps: int = 120
    fit_focal: bool = True
    fit_neck: bool = False


@dataclass
class LandmarkFit:
    """What :func:`fit_landmarks` found (T frames, L landmarks).

    Attributes:
        shape: Tensor  # [S] shared identity.
        expr: Tensor  # [T, E]
        pose: Tensor  # [T, 5, 3] axis-angle; global rotation is zero (it is in ``world_to_cam``).
        world_to_cam: Tensor  # [T, 4, 4] OpenCV extrinsics (the rigid head pose).
        K: Tensor  # [3, 3] shared intrinsics, pixels.
        projected: Tensor  # [T, L, 2] fitted landmark positions, pixels.
        error_px: Tensor  # [T] mean reprojection error per frame, pixels.
    """

    shape: Tensor
    expr: Tensor
    pose: Tensor
    world_to_cam: Tensor
    K: Tensor
    projected: Tensor
    error_px: Tensor


def focal_from_fov(fov_deg: float, width: float) -> float:
    """Focal length (pixels) of a pinhole camera with horizontal field of view ``fov_deg`` (degrees)
    over ``width`` pixels: ``f = width / (2 tan(fov / 2))`` (as INSTA's ``camera_angle_x``)."""
    return width / (2 * math.tan(math.radians(fov_deg) / 2))


def project(points: Tensor, K: Tensor) -> Tensor:
    """OpenCV pinhole projection ``u = K X / Z`` of camera-space points (metres), ``[..., 3] -> [..., 2]``
    pixels; ``K`` is ``[3, 3]``. Depths are clamped at 1e-6 (points behind the camera do not raise)."""
    uvw = points @ K.T
    return uvw[..., :2] / uvw[..., 2:].clamp_min(1e-6)


def _initial_pose(template_lmk: Tensor, points: Tensor, focal: float, centre: Tensor) -> Tensor:
    """Translation [T, 3] that puts the rest head, facing the camera, over each frame's landmarks
    at the depth where its size matches (similar triangles)."""
    model = template_lmk @ FACING_CAMERA.T  # [L, 3]
    size_model = (model[:, :2].amax(0) - model[:, :2].amin(0)).norm()
    size_image = (points.amax(1) - points.amin(1)).norm(dim=-1)  # [T]
    z = focal * size_model / size_image
    xy = (points.mean(1) - centre) * z[:, None] / focal - model[:, :2].mean(0)
    return torch.cat([xy, z[:, None] - model[:, 2].mean()], -1)


class _Problem:
    """Parameters and objective of one fit (kept together so both stages share them)."""

    def __init__(self, lh: LandmarkHead, emb: LandmarkEmbedding, points: Tensor, size: tuple[int, int],
                 focal: float, cfg: FitConfig) -> None:
        T = points.shape[0]
        self.lh, self.points, self.cfg, self.temporal = lh, points, cfg, False
        self.weights = emb.weights / emb.weights.mean()
        self.scale = cfg.sigma * (points.amax(1) - points.amin(1)).norm(dim=-1)  # [T] pixels per sigma
        self.centre = torch.tensor([size[1] / 2, size[0] / 2])
        self.log_f0 = math.log(focal)
        with torch.no_grad():
            rest = lh(torch.zeros(1, lh.n_shape), torch.zeros(1, lh.n_expr), torch.zeros(1, len(lh.parents), 3))[0]
        z = lambda *s: torch.zeros(*s, requires_grad=True)  # noqa: E731
        self.shape, self.expr, self.pose = z(lh.n_shape), z(T, lh.n_expr), z(T, len(lh.parents), 3)
        self.rot = z(T, 3)  # rotation of the head in the camera, on top of FACING_CAMERA
        self.trans = _initial_pose(rest, points, focal, self.centre).requires_grad_(True)
        self.log_f = torch.tensor(self.log_f0, requires_grad=True)

    def K(self) -> Tensor:
        f = self.log_f.exp()
        zero, one = torch.zeros(()), torch.ones(())
        return torch.stack([torch.stack([f, zero, self.centre[0]]), torch.stack([zero, f, self.centre[1]]),
                            torch.stack([zero, zero, one])])

    def rotations(self) -> Tensor:
        return axis_angle_to_matrix(self.rot) @ FACING_CAMERA  # [T, 3, 3]

    def joint_pose(self) -> Tensor:
        """Pose [T, 5, 3] the head is posed with: global zero (the rigid pose is the camera's), neck
        zero unless fitted."""
        keep = torch.ones(len(self.lh.parents), 1)
        keep[0] = 0
        keep[1] = float(self.cfg.fit_neck)
        return self.pose * keep

    def camera_points(self) -> Tensor:
        """Landmarks in camera space [T, L, 3]."""
        lmk = self.lh(self.shape.expand(len(self.expr), -1), self.expr, self.joint_pose())
        return lmk @ self.rotations().transpose(1, 2) + self.trans[:, None]

    def loss(self) -> Tensor:
        cfg = self.cfg
        cam = self.camera_points()
        r = (project(cam, self.K()) - self.points).norm(dim=-1) / self.scale[:, None]  # [T, L] sigmas
        data = (self.weights * F.huber_loss(r, torch.zeros_like(r), delta=cfg.huber, reduction="none")).mean()
        jaw = self.pose[:, 2] * torch.tensor([1.0, 10.0, 10.0]) ** 0.5
        prior = (cfg.shape * self.shape.square().sum() + cfg.expr * self.expr.square().sum(-1).mean()
                 + cfg.jaw * jaw.square().sum(-1).mean() + cfg.neck * self.pose[:, 1].square().sum(-1).mean()
                 + cfg.eyes * self.pose[:, 3:].square().sum((-1, -2)).mean()
                 + cfg.focal * (self.log_f - self.log_f0).square())
        if self.temporal and len(cam) > 2:
            accel = (cam[2:] - 2 * cam[1:-1] + cam[:-2]).norm(dim=-1) / (cfg.smooth_mm * 1e-3)
            prior = prior + accel.square().mean() + cfg.smooth_expr * (self.expr[1:] - self.expr[:-1]).square().sum(
                -1).mean()
        return data + prior

    def run(self, params: list[Tensor], steps: int) -> None:
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure() -> Tensor:
            opt.zero_grad()
            value = self.loss()
            value.backward()
            return value

        opt.step(closure)


def fit_landmarks(head, emb: LandmarkEmbedding, points: Tensor, size: tuple[int, int], focal: float,
                  video: bool = False, config: FitConfig | None = None) -> LandmarkFit:
    """Fit shape (shared), expression, jaw/neck/eye pose, rigid head pose and focal length (shared)
    to landmarks of T frames of one person (module docstring: objective and conventions).

    Args:
        head: the :class:`~avatar_lightning.head.HeadModel` (built-in or a FLAME file).
        emb: its landmark embedding (L rows).
        points: Tensor  # [T, L, 2] detected landmarks in pixels, rows in the order of ``emb``.
        size: (H, W) of the frames (the principal point is the centre).
        focal: initial focal length, pixels.
        video: the frames are a sequence (adds the temporal terms).
        config: weights and schedule (default :class:`FitConfig`).

    Returns:
        :class:`LandmarkFit` on the CPU.

    Raises:
        ValueError: ``points`` is not ``[T, len(emb), 2]``.
    """
    cfg = config or FitConfig()
    if points.ndim != 3 or points.shape[1:] != (len(emb), 2):
        raise ValueError(f"points must have shape [T, {len(emb)}, 2] (one row per embedded landmark), "
                         f"got {list(points.shape)}")
    points = points.detach().float().cpu()
    prob = _Problem(LandmarkHead(head.cpu(), emb), emb, points, size, focal, cfg)
    prob.run([prob.rot, prob.trans], cfg.rigid_steps)
    free = [prob.rot, prob.trans, prob.shape, prob.expr, prob.pose] + ([prob.log_f] if cfg.fit_focal else [])
    prob.run(free, cfg.steps)
    if video:  # frames coupled in time converge slowly from scratch: start from the per-frame fit
        prob.temporal = True
        prob.run(free, cfg.steps)
    with torch.no_grad():
        K = prob.K()
        projected = project(prob.camera_points(), K)
        w2c = torch.eye(4).repeat(len(points), 1, 1)
        w2c[:, :3, :3], w2c[:, :3, 3] = prob.rotations(), prob.trans
        pose = prob.joint_pose()
        return LandmarkFit(shape=prob.shape.detach().clone(), expr=prob.expr.detach().clone(), pose=pose,
                           world_to_cam=w2c, K=K, projected=projected,
                           error_px=(projected - points).norm(dim=-1).mean(-1))
