"""Photos or a video in, an INSTA-layout actor folder out: read, detect, crop, fit, write.

``python -m avatar_lightning.track`` is a thin command line over :func:`track`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar_lightning.head.raster import mesh_depth
from avatar_lightning.io import write_json
from avatar_lightning.track.detect import FaceLandmarks, FaceMeshDetector, NoFaceError, PersonSegmenter
from avatar_lightning.track.embedding import LandmarkEmbedding, default_embedding
from avatar_lightning.track.export import OutputFrame, write_insta
from avatar_lightning.track.fit import FitConfig, LandmarkFit, fit_landmarks, focal_from_fov
from avatar_lightning.track.inputs import Crop, Frame, face_crop, read_inputs
from avatar_lightning.track.overlay import draw_overlay, mesh_mask

log = logging.getLogger(__name__)


@dataclass
class TrackOptions:
    """How :func:`track` runs.

    Attributes:
        head_model: ``"builtin"`` or a FLAME ``generic_model.pkl``.
        embedding: the head's ``mediapipe_landmark_embedding.npz``; None: the shipped one (built-in only).
        n_shape: identity coefficients fitted (use the count the avatar model will read).
        n_expr: expression coefficients fitted.
        size: side of the square output images (INSTA: 512).
        margin: crop side / landmark box side.
        sequence: fit as a sequence (one crop, temporal terms); None: True for a video, False for photos.
        max_frames: read at most this many frames; None: all.
        stride: keep every ``stride``-th frame / photo.
        fov_deg: prior horizontal field of view of the source camera over its longer image side.
        mask: ``"segment"`` (MediaPipe person matte: hair and shoulders too) or ``"mesh"`` (fitted
            head silhouette joined with the landmarks' convex hull).
        overlays: write ``overlays/`` pictures.
        fit: the fit's weights and schedule.
    """

    head_model: str = "builtin"
    embedding: str | None = None
    n_shape: int = 20
    n_expr: int = 15
    size: int = 512
    margin: float = 2.0
    sequence: bool | None = None
    max_frames: int | None = None
    stride: int = 1
    fov_deg: float = 50.0
    mask: str = "segment"
    overlays: bool = True
    fit: FitConfig = field(default_factory=FitConfig)


@dataclass
class TrackResult:
    """What :func:`track` did.

    Attributes:
        out: the actor folder written.
        names: the T frames kept, named as in messages.
        fit: the :class:`~avatar_lightning.track.fit.LandmarkFit` (pixels of the output images).
        detected: Tensor  # [T, L, 2] detected landmarks in output pixels, rows of the embedding.
        error_px: mean reprojection error over all frames and landmarks, output pixels.
        error_rel: the same as a share of the mean face size (landmark box diagonal).
        jitter_px: RMS frame-to-frame acceleration of the fitted landmarks (sequences; else 0).
        jitter_detected_px: the same for the detected landmarks.
        seconds: wall time per stage (read, detect, fit, write).
    """

    out: Path
    names: list[str]
    fit: LandmarkFit
    detected: Tensor
    error_px: float
    error_rel: float
    jitter_px: float
    jitter_detected_px: float
    seconds: dict[str, float]


def jitter_px(points: Tensor) -> float:
    """Jitter of landmark tracks: RMS second temporal difference (acceleration), ``[T, L, 2]`` pixels
    -> pixels / frame² (0 if T < 3). True motion counts too, so it bounds the noise from above."""
    if points.shape[0] < 3:
        return 0.0
    return float((points[2:] - 2 * points[1:-1] + points[:-2]).norm(dim=-1).square().mean().sqrt())


def detect_frames(frames: list[Frame], sequence: bool) -> tuple[list[Frame], list[FaceLandmarks]]:
    """MediaPipe landmarks of every frame (tracking mode for a sequence). A photo without a face is
    an error; a video frame without one is dropped (said in the log), unless no frame has one.

    Returns:
        (frames kept, their :class:`~avatar_lightning.track.detect.FaceLandmarks`)

    Raises:
        NoFaceError: naming the file (and frame).
    """
    kept, marks, missing = [], [], []
    with FaceMeshDetector(video=sequence) as det:
        for fr in frames:
            try:
                marks.append(det.detect(fr.image, fr.name))
                kept.append(fr)
            except NoFaceError:
                if not sequence:
                    raise
                missing.append(fr.index)
    if not kept:
        raise NoFaceError(f"no face found in any frame of {frames[0].source}")
    if missing:
        log.warning("%s: no face in %d of %d frames (%s); they are left out", frames[0].source, len(missing),
                    len(frames), ", ".join(map(str, missing[:10])) + ("..." if len(missing) > 10 else ""))
    return kept, marks


def crops_for(marks: list[FaceLandmarks], size: int, margin: float, sequence: bool) -> list[Crop]:
    """One crop for the whole sequence (a still camera, as INSTA's videos), else one per photo
    (then the shared K is an approximation: each crop is its own camera)."""
    if sequence:
        crop = face_crop(np.stack([m.points for m in marks]), size, margin)
        return [crop] * len(marks)
    return [face_crop(m.points, size, margin) for m in marks]


def make_masks(kind: str, images: list[np.ndarray], covered: Tensor, points: list[np.ndarray]) -> list[np.ndarray]:
    """Foreground mattes ``[S, S]`` float32 in [0, 1] of the S x S output images (see
    :attr:`TrackOptions.mask`); ``covered`` is ``[T, S, S]`` bool, ``points`` T arrays ``[478, 2]``.

    Raises:
        ValueError: ``kind`` is neither ``"segment"`` nor ``"mesh"``.
    """
    if kind == "mesh":
        return [mesh_mask(c, p) for c, p in zip(covered, points, strict=True)]
    if kind != "segment":
        raise ValueError(f"mask must be 'segment' or 'mesh', got {kind!r}")
    with PersonSegmenter() as seg:
        return [seg.matte(im) for im in images]


def _posed(head, fit: LandmarkFit) -> tuple[Tensor, Tensor]:
    """Posed vertices in the head frame [T, V, 3] and in each camera [T, V, 3]."""
    with torch.no_grad():
        verts = head(fit.shape.expand(len(fit.expr), -1), fit.expr, fit.pose).vertices
    R, t = fit.world_to_cam[:, :3, :3], fit.world_to_cam[:, :3, 3]
    return verts, verts @ R.transpose(1, 2) + t[:, None]


def track(inputs: list[str | Path], out: str | Path, options: TrackOptions | None = None) -> TrackResult:
    """Track a person in photos or a video and write an INSTA actor folder (``export`` module docstring).

    Args:
        inputs: photos, folders of photos, or one video (one person throughout).
        out: the folder to write (created).
        options: :class:`TrackOptions`.

    Returns:
        :class:`TrackResult`.

    Raises:
        FileNotFoundError / ValueError: an input is missing or unreadable (named).
        NoFaceError: no face in a photo (named) or in any frame of a video.
        ImportError: MediaPipe is missing (with the install command).
    """
    from avatar_lightning.head import load_head_model

    opt, out, clock = options or TrackOptions(), Path(out), {"start": time.perf_counter()}
    head = load_head_model(opt.head_model, n_shape=opt.n_shape, n_expr=opt.n_expr)
    emb: LandmarkEmbedding = default_embedding(head, opt.head_model, opt.embedding)
    frames, is_video = read_inputs(inputs, opt.max_frames, opt.stride)
    sequence = is_video if opt.sequence is None else opt.sequence
    clock["read"] = time.perf_counter()
    frames, marks = detect_frames(frames, sequence)
    clock["detect"] = time.perf_counter()
    crops = crops_for(marks, opt.size, opt.margin, sequence)
    all_points = [c.points(m.points) for c, m in zip(crops, marks, strict=True)]
    detected = torch.from_numpy(np.stack([p[emb.landmark_indices.numpy()] for p in all_points])).float()
    longer = [max(f.image.shape[:2]) for f in frames]
    focal = float(np.mean([focal_from_fov(opt.fov_deg, n) * c.scale for n, c in zip(longer, crops, strict=True)]))
    fit = fit_landmarks(head, emb, detected, (opt.size, opt.size), focal, video=sequence, config=opt.fit)
    clock["fit"] = time.perf_counter()
    verts, cam = _posed(head, fit)
    buffers = [mesh_depth(c, head.faces, fit.K, opt.size, opt.size) for c in cam]
    images = [c.apply(f.image) for c, f in zip(crops, frames, strict=True)]
    masks = make_masks(opt.mask, images, torch.stack([b.face >= 0 for b in buffers]), all_points)
    out_frames = []
    for t, (fr, im) in enumerate(zip(frames, images, strict=True)):
        caption = f"{fr.name}: {float(fit.error_px[t]):.2f} px"
        overlay = draw_overlay(im, cam[t], head.faces, fit.K, detected[t].numpy(), fit.projected[t].numpy(),
                               caption) if opt.overlays else im
        out_frames.append(OutputFrame(f"{t:05d}", im, masks[t], overlay))
    write_insta(out, out_frames, fit.shape, fit.expr, fit.pose, fit.world_to_cam, fit.K, verts, head.faces,
                torch.stack([b.depth for b in buffers]))
    clock["write"] = time.perf_counter()
    result = _result(out, frames, fit, detected, clock)
    _write_summary(out, result, opt, frames, crops, emb)
    return result


def _result(out: Path, frames: list[Frame], fit: LandmarkFit, detected: Tensor, clock: dict) -> TrackResult:
    stages = ["start", "read", "detect", "fit", "write"]
    seconds = {b: clock[b] - clock[a] for a, b in zip(stages, stages[1:], strict=False)}
    face = (detected.amax(1) - detected.amin(1)).norm(dim=-1).mean()
    err = float(fit.error_px.mean())
    return TrackResult(out, [f.name for f in frames], fit, detected, err, err / float(face),
                       jitter_px(fit.projected), jitter_px(detected), seconds)


def _write_summary(out: Path, res: TrackResult, opt: TrackOptions, frames: list[Frame], crops: list[Crop],
                   emb: LandmarkEmbedding) -> None:
    """``track.json``: what was tracked, how, and how well (the INSTA loader does not read it)."""
    write_json(out / "track.json", {
        "options": {**asdict(opt), "fit": asdict(opt.fit)},
        "embedding": emb.source, "landmarks": len(emb),
        "focal_px": float(res.fit.K[0, 0]), "error_px": res.error_px, "error_rel_face": res.error_rel,
        "jitter_px": res.jitter_px, "jitter_detected_px": res.jitter_detected_px, "seconds": res.seconds,
        "neck_pose_max_rad": float(res.fit.pose[:, 1].norm(dim=-1).max()),
        "frames": [{"id": f"{t:05d}", "name": f.name, "source": str(f.source), "index": f.index,
                    "crop": asdict(c), "error_px": float(res.fit.error_px[t])}
                   for t, (f, c) in enumerate(zip(frames, crops, strict=True))],
    })
