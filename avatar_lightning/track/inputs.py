"""What the tracker reads: photos, folders of photos, or one video; and the square face crop.

Every error names the file it is about. Frames are RGB ``uint8`` arrays ``[H, W, 3]``; pixel
coordinates are continuous with pixel centres at (j + 0.5, i + 0.5), as everywhere in the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif"}


@dataclass
class Frame:
    """One input image.

    Attributes:
        name: how messages name it (``photo.jpg`` or ``clip.mp4 frame 12``).
        source: the file it came from.
        index: frame number within ``source`` (0 for a photo).
        image: np.ndarray  # [H, W, 3] uint8 RGB
    """

    name: str
    source: Path
    index: int
    image: np.ndarray


def expand_inputs(inputs: list[str | Path]) -> tuple[list[Path], bool]:
    """Files named on the command line: folders expand to their images (sorted by name, as
    INSTA's and metrical-tracker's frame folders are read).

    Args:
        inputs: photos, folders of photos, or one video file.

    Returns:
        (files, is_video)

    Raises:
        FileNotFoundError: an input does not exist, or a folder holds no image.
        ValueError: several videos, a video mixed with photos, or an unknown suffix.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {item}")
            files.extend(found)
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                raise ValueError(f"{item}: unknown input type {item.suffix!r}; give photos "
                                 f"({', '.join(sorted(IMAGE_SUFFIXES))}), a folder of them, or one video")
            files.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    if not files:
        raise ValueError("no inputs given")
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    if videos and len(files) > 1:
        raise ValueError(f"give one video alone (one sequence per run), got {len(videos)} video(s) among "
                         f"{len(files)} inputs: {', '.join(map(str, videos))}")
    return files, bool(videos)


def read_image(path: Path) -> np.ndarray:
    """A photo as RGB through PIL (alpha dropped, greyscale expanded).

    Returns:
        np.ndarray  # [H, W, 3] uint8

    Raises:
        ValueError: naming ``path`` when it cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except Exception as err:  # PIL raises several unrelated types for corrupt files
        raise ValueError(f"cannot read image {path}: {err}") from err


def read_video(path: Path, max_frames: int | None = None, stride: int = 1) -> list[Frame]:
    """Frames of a video through imageio's ffmpeg plugin (the ffmpeg binary ships in imageio-ffmpeg).

    Args:
        path: the video file.
        max_frames: keep at most this many frames (after striding); None keeps all.
        stride: keep every ``stride``-th frame.

    Raises:
        ValueError: naming ``path`` when it cannot be decoded or holds no frame.
    """
    import imageio.v3 as iio

    frames = []
    try:
        for i, image in enumerate(iio.imiter(path, plugin="FFMPEG")):
            if i % stride:
                continue
            frames.append(Frame(f"{path.name} frame {i}", path, i, np.ascontiguousarray(image[..., :3])))
            if max_frames is not None and len(frames) >= max_frames:
                break
    except Exception as err:  # imageio/ffmpeg raise several unrelated types for corrupt files
        raise ValueError(f"cannot read video {path}: {err}") from err
    if not frames:
        raise ValueError(f"cannot read video {path}: no frames")
    return frames


def read_inputs(inputs: list[str | Path], max_frames: int | None = None, stride: int = 1) -> tuple[list[Frame], bool]:
    """Read every input (see :func:`expand_inputs`).

    Returns:
        (frames, is_video)
    """
    files, is_video = expand_inputs(inputs)
    if is_video:
        return read_video(files[0], max_frames, stride), True
    files = files[::stride][:max_frames]
    return [Frame(f.name, f, 0, read_image(f)) for f in files], False


@dataclass
class Crop:
    """A square window of a source image, resampled to ``size`` × ``size``.

    Attributes:
        x0, y0: top-left corner in source pixels (may lie outside the image: padded black).
        side: window side in source pixels.
        size: output side in pixels.
    """

    x0: float
    y0: float
    side: float
    size: int

    @property
    def scale(self) -> float:
        """Output pixels per source pixel."""
        return self.size / self.side

    def points(self, p: np.ndarray) -> np.ndarray:
        """Source pixel coordinates ``[..., 2]`` -> output pixel coordinates ``[..., 2]`` (continuous,
        pixel centres at j + 0.5 in both, so the map is exactly affine)."""
        return (p - [self.x0, self.y0]) * self.scale

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Cut and resample (PIL's antialiased bicubic ``resize`` with a sub-pixel box) ``[H, W, 3]``
        uint8 -> ``[size, size, 3]`` uint8; pixels outside the source are black."""
        h, w = image.shape[:2]
        pad = int(np.ceil(max(0.0, -self.x0, -self.y0, self.x0 + self.side - w, self.y0 + self.side - h))) + 1
        padded = Image.fromarray(np.pad(image, ((pad, pad), (pad, pad), (0, 0))))
        box = (self.x0 + pad, self.y0 + pad, self.x0 + pad + self.side, self.y0 + pad + self.side)
        return np.asarray(padded.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box))


def face_crop(points: np.ndarray, size: int, margin: float = 2.0) -> Crop:
    """The square around all given landmarks, ``margin`` times their larger bounding-box side
    (INSTA and metrical-tracker crop square around the head and resize to 512).

    Args:
        points: np.ndarray  # [..., N, 2] landmarks of one or more frames (pixels).
        size: output side.
        margin: window side / landmark box side (2 takes in hair and chin room, as INSTA's crops).
    """
    flat = points.reshape(-1, 2)
    lo, hi = flat.min(0), flat.max(0)
    centre, side = (lo + hi) / 2, margin * float((hi - lo).max())
    return Crop(float(centre[0] - side / 2), float(centre[1] - side / 2), side, size)
