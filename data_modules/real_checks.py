"""Checks a real dataset must pass as a whole at ``setup``, before any batch is made.

- **One image size.** Cameras stored at different resolutions (a mixed-resolution capture, a
  re-exported camera) are resized to the size most views have, with K scaled; a camera whose
  aspect ratio differs cannot be resized without stretching and is refused, naming it and both
  sizes. Without this the first batch mixing them crashes inside ``torch.stack``.
- **The head is in view.** The tracked head (its FLAME translation) must lie in front of every
  camera and project onto its image in some frame. Extrinsics written in the other axis convention
  (OpenCV for OpenGL or back) put it behind every camera; that is refused, naming the convention
  the format expects (and saying when the other one fits).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:  # real_common builds on these checks
    from data_modules.real_common import Sample

log = logging.getLogger(__name__)

#: the head centre may project this far (a share of the image side) outside the frame and still count
FRAME_MARGIN = 0.25
_ASPECT_TOLERANCE = 0.01
_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))  # OpenCV <-> OpenGL camera axes


@dataclass(frozen=True)
class Convention:
    """The extrinsics convention a format uses, and the other one it is mistaken for.

    Attributes:
        expected: e.g. "camera-to-world in the OpenGL convention (x right, y up, z backward)".
        other: the other convention, e.g. "OpenCV (x right, y down, z forward)".
    """

    expected: str
    other: str


def downsampled_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """Image size after down-sampling by ``factor`` (floor, as NeRSemble's 4x: 3208x2200 -> 802x550)."""
    if factor < 1 or height < factor or width < factor:
        raise ValueError(f"cannot down-sample a {width}x{height} image by {factor}")
    return height // factor, width // factor


def stored_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header only, naming the file if it is missing or unreadable."""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as err:  # PIL raises several unrelated types for corrupt files
        raise ValueError(f"cannot decode image {path}: {err}") from err
    return h, w


def camera_sizes(samples: list[Sample]) -> dict[tuple[Path | None, int], tuple[int, int]]:
    """(H, W) as stored of every (sequence root, camera): the first image's header, which must
    agree with the size its metadata declares; every view of a camera must declare the same size."""
    sizes: dict[tuple[Path | None, int], tuple[int, int]] = {}
    for s in samples:
        for v in s.views:
            key = (s.root, v.camera)
            if key not in sizes:
                sizes[key] = stored_size(v.image_path)
                if v.size is not None and tuple(v.size) != sizes[key]:
                    raise ValueError(f"image {v.image_path} is {sizes[key][1]}x{sizes[key][0]} but its metadata "
                                     f"says {v.size[1]}x{v.size[0]}")
            elif v.size is not None and tuple(v.size) != sizes[key]:
                raise ValueError(f"{s.root}: camera {v.camera} declares {v.size[1]}x{v.size[0]} for {v.image_path} "
                                 f"but {sizes[key][1]}x{sizes[key][0]} elsewhere; one camera has one resolution")
    return sizes


def common_image_size(samples: list[Sample], sizes: dict, factor: int) -> tuple[int, int]:
    """The (H, W) every view is brought to: the down-sampled size most views have (ties: the larger).

    Cameras of another size with the same aspect ratio are resized to it (said in the log; the
    loader scales K to match); another aspect ratio is refused. ``sizes`` is :func:`camera_sizes`.

    Raises:
        ValueError: naming the camera, its sequence and both sizes.
    """
    small = {key: downsampled_size(h, w, factor) for key, (h, w) in sizes.items()}
    votes = Counter(small[(s.root, v.camera)] for s in samples for v in s.views)
    target = max(votes, key=lambda hw: (votes[hw], hw[0] * hw[1]))
    for (root, camera), hw in sorted(small.items(), key=str):
        if hw == target:
            continue
        (h, w), (th, tw) = sizes[(root, camera)], target
        if abs((w / h) / (tw / th) - 1) > _ASPECT_TOLERANCE:
            raise ValueError(f"{root}: camera {camera} stores {w}x{h} images but most views are {tw}x{th} "
                             f"(after down-sampling by {factor}): aspect ratios {w / h:.3f} and {tw / th:.3f} "
                             f"differ, so one cannot be resized to the other; crop or re-export at one aspect ratio")
        log.info("%s: camera %d stores %dx%d images; resized to %dx%d (K scaled) like the other cameras",
                 root, camera, w, h, tw, th)
    return target


def head_on_frame(centre: Tensor, world_to_cam: Tensor, K: Tensor, size: Tensor) -> Tensor:
    """Whether a point is in front of the camera and projects onto (or near) the image.

    Args:
        centre: Tensor  # [M, 3] world points (the head centres)
        world_to_cam: Tensor  # [M, 4, 4] OpenCV extrinsics
        K: Tensor  # [M, 3, 3] intrinsics of the stored image
        size: Tensor  # [M, 2] (H, W) of the stored image

    Returns:
        Tensor  # [M] bool
    """
    cam = torch.einsum("mij,mj->mi", world_to_cam[:, :3, :3], centre) + world_to_cam[:, :3, 3]
    pix = torch.einsum("mij,mj->mi", K, cam)
    z = cam[:, 2]
    uv = pix[:, :2] / z.clamp_min(1e-9)[:, None]
    wh = size.flip(-1).to(uv.dtype)
    inside = ((uv >= -FRAME_MARGIN * wh) & (uv <= (1 + FRAME_MARGIN) * wh)).all(-1)
    return (z > 0) & inside


def check_head_in_view(samples: list[Sample], sizes: dict, convention: Convention) -> None:
    """Refuse a dataset where some camera never has the head in front of it and on its image.

    ``sizes`` is :func:`camera_sizes`; the head centre is the frame's FLAME translation.

    Raises:
        ValueError: naming the transforms file, the cameras and the convention expected.
    """
    views = [(s, v) for s in samples for v in s.views]
    centre = torch.stack([s.flame.translation for s, _ in views]).double()
    w2c = torch.stack([v.world_to_cam for _, v in views]).double()
    K = torch.stack([v.K for _, v in views]).double()
    hw = torch.tensor([sizes[(s.root, v.camera)] for s, v in views])
    ok = head_on_frame(centre, w2c, K, hw).tolist()
    flipped = head_on_frame(centre, _FLIP_YZ.double() @ w2c, K, hw).tolist()  # read in the other convention
    for root in sorted({s.root for s in samples}, key=str):
        mine = [i for i, (s, _) in enumerate(views) if s.root == root]
        seen: dict[int, bool] = {}
        for i in mine:
            seen[views[i][1].camera] = seen.get(views[i][1].camera, False) or ok[i]
        blind = sorted(c for c, any_ok in seen.items() if not any_ok)
        where = Path(root) / "transforms.json" if root is not None else "the dataset"
        if blind:
            other = all(flipped[i] for i in mine)
            raise ValueError(
                f"{where}: the tracked head is behind or off the image of camera(s) {blind} in every frame. "
                f"transform_matrix must be {convention.expected}"
                + (f"; read as {convention.other} instead, the head is in front of every camera: convert the "
                   f"export" if other else "") + ".")
        n_off = sum(not ok[i] for i in mine)
        if n_off:
            log.warning("%s: the tracked head is behind or off the image in %d of %d views", where, n_off, len(mine))


def check_dataset(samples: list[Sample], factor: int, convention: Convention) -> tuple[int, int]:
    """Run both checks over every sample of every split; return the common (H, W) of the batches."""
    sizes = camera_sizes(samples)
    check_head_in_view(samples, sizes, convention)
    return common_image_size(samples, sizes, factor)
