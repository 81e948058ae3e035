"""What the real-data DataModules (NeRSemble, INSTA) share: records, image loading, the Dataset.

A dataset is parsed once into :class:`Sample` records (paths, cameras and FLAME parameters, no
pixels); :class:`RealHeadDataset` reads the pixels lazily, so a 16-camera NeRSemble sequence
costs only its JSON at start-up. Every sample is one (identity, frame) seen from V views and
becomes one item of the batch schema in :mod:`avatar_lightning.batch`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from avatar_lightning.io import load_image
from data_modules.real_checks import Convention, check_dataset, downsampled_size
from data_modules.uv_cache import read_cached

log = logging.getLogger(__name__)


@dataclass
class FlameParams:
    """FLAME parameters of one frame, in the order the head model takes them.

    Attributes:
        shape: Tensor  # [S]
        expr: Tensor  # [E]
        pose: Tensor  # [5, 3] axis-angle: global, neck, jaw, left eye, right eye
        translation: Tensor  # [3]
        static_offset: Tensor | None  # [Nv, 3] per-vertex offsets (VHAP), Nv = 5023 or 5143 with teeth
    """

    shape: Tensor
    expr: Tensor
    pose: Tensor
    translation: Tensor
    static_offset: Tensor | None = None


@dataclass
class View:
    """One camera's image of a sample.

    Attributes:
        image_path: RGB or RGBA image.
        mask_path: foreground mask file, or None to use the image's alpha channel.
        K: Tensor  # [3, 3] intrinsics in pixels of the image as stored (before down-sampling)
        world_to_cam: Tensor  # [4, 4] OpenCV extrinsics
        camera: camera index within the dataset.
        size: (height, width) the metadata declares for the image, checked when it is read.
    """

    image_path: Path
    mask_path: Path | None
    K: Tensor
    world_to_cam: Tensor
    camera: int = 0
    size: tuple[int, int] | None = None


@dataclass
class Sample:
    """One (identity, frame) seen from ``len(views)`` cameras."""

    views: list[View]
    flame: FlameParams
    identity: int
    frame: int  # unique within the identity (sequences of one subject are numbered one after another)
    root: Path | None = None  # the sequence folder (UV maps are cached inside it)
    local_frame: int | None = None  # the frame's number within its sequence (file names); default ``frame``

    def __post_init__(self) -> None:
        if self.local_frame is None:
            self.local_frame = self.frame


def read_json(path: Path, what: str) -> dict:
    """Read a JSON file, naming it (and what it is) in any error."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from err


def data_path(root: Path, relative: str) -> Path:
    """``root / relative``; NeRF-style files may omit the ``.png`` suffix, as NeRF loaders assume."""
    path = root / relative
    return path if path.suffix else path.with_suffix(".png")


def require_keys(obj: dict, keys: tuple[str, ...], where: str) -> None:
    """Raise a KeyError naming ``where`` and the missing fields."""
    missing = [k for k in keys if k not in obj]
    if missing:
        raise KeyError(f"{where} lacks field(s) {missing}")


def intrinsics(fl_x: float, fl_y: float, cx: float, cy: float) -> Tensor:
    """Pinhole matrix from focal lengths and principal point, all in pixels.

    Returns:
        Tensor  # [3, 3]
    """
    return torch.tensor([[fl_x, 0.0, cx], [0.0, fl_y, cy], [0.0, 0.0, 1.0]])


def scale_intrinsics(K: Tensor, sx: float, sy: float | None = None) -> Tensor:
    """Intrinsics of the image resized by ``sx`` horizontally and ``sy`` vertically (default ``sx``).

    With pixel centres at (j + 0.5, i + 0.5) (the convention of ``render``), resizing maps
    continuous pixel coordinates u -> u·sx, v -> v·sy exactly, so fx, cx scale by sx and fy, cy by
    sy (no half-pixel shift).

    Args:
        K: Tensor  # [..., 3, 3]
        sx, sy: new size / old size along x and y.
    """
    out = K.clone()
    out[..., 0, :] = K[..., 0, :] * sx
    out[..., 1, :] = K[..., 1, :] * (sx if sy is None else sy)
    return out


def downsample(image: Tensor, factor: int, size: tuple[int, int] | None = None) -> Tensor:
    """Down-sample by an integer factor: exact block averages when it divides the size, else an
    anti-aliased resize to :func:`downsampled_size` (which maps u -> u·W'/W exactly).

    Args:
        image: Tensor  # [C, H, W]
        factor: integer down-sampling factor.
        size: (H', W') to resize to instead (a camera stored at another resolution than the rest
            of the dataset); None: the down-sampled size.
    """
    h, w = image.shape[-2:]
    natural = downsampled_size(h, w, factor)
    size = natural if size is None else tuple(size)
    if size == (h, w):
        return image
    if size == natural and h % factor == 0 and w % factor == 0:
        return F.avg_pool2d(image[None], factor)[0]
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


@dataclass
class ViewPixels:
    """A view as the batch holds it: image [3, H, W], mask [1, H, W], intrinsics K [3, 3] of that size."""

    image: Tensor
    mask: Tensor
    K: Tensor


def load_view_pixels(view: View, factor: int, background: Tensor, stored_background: Tensor | None,
                     size: tuple[int, int] | None = None) -> ViewPixels:
    """Read a view's image and foreground mask, down-sample, composite onto ``background``.

    Args:
        view: the view.
        factor: integer down-sampling factor.
        background: Tensor  # [3] colour to composite on
        stored_background: Tensor  # [3] colour the stored RGB image is already composited on
            (VHAP exports composite on white), or None when the image is RGBA and not composited.
        size: (H, W) of the output, the dataset's common size (:mod:`data_modules.real_checks`);
            None: the image's own size down-sampled by ``factor``.

    Returns:
        :class:`ViewPixels`: image in [0, 1] composited on ``background``, mask in [0, 1], and K
        scaled to the output size.
    """
    pixels = load_image(view.image_path)
    if view.size is not None and tuple(pixels.shape[-2:]) != tuple(view.size):
        raise ValueError(f"image {view.image_path} is {pixels.shape[-1]}x{pixels.shape[-2]} but its metadata "
                         f"says {view.size[1]}x{view.size[0]}")
    if view.mask_path is not None:
        mask = load_image(view.mask_path)[:1]
    elif pixels.shape[0] == 4:
        mask = pixels[3:4]
    else:
        raise ValueError(f"{view.image_path} has no alpha channel and no foreground mask file was given")
    if mask.shape[-2:] != pixels.shape[-2:]:
        raise ValueError(f"mask {view.mask_path} is {list(mask.shape[-2:])} but image {view.image_path} is "
                         f"{list(pixels.shape[-2:])}")
    rgb = pixels[:3] if pixels.shape[0] >= 3 else pixels[:1].expand(3, -1, -1)
    # premultiplied foreground fg·a: linear in the pixels, so area down-sampling commutes with the
    # compositing below and the full-resolution work is one multiply-add
    # (a stored composite is fg·a + stored_bg·(1 - a))
    premultiplied = rgb * mask if stored_background is None else rgb - stored_background.view(3, 1, 1) * (1 - mask)
    premultiplied, small = downsample(premultiplied, factor, size), downsample(mask, factor, size)
    image = premultiplied + background.view(3, 1, 1) * (1 - small)
    (h, w), (h2, w2) = mask.shape[-2:], small.shape[-2:]
    return ViewPixels(image.clamp(0, 1), small.clamp(0, 1), scale_intrinsics(view.K, w2 / w, h2 / h))


class RealHeadDataset(Dataset):
    """Lazily reads the pixels of parsed :class:`Sample` records into batch-schema items.

    Args:
        samples: the parsed samples (all with the same number of views).
        downsample: integer image down-sampling factor; K is scaled to match.
        background: Tensor  # [3] colour the images are composited on.
        stored_background: Tensor  # [3] colour stored RGB images already sit on, None for RGBA.
        uv: optional per-sample UV cache files (``uv_texture``, ``uv_position``, ``uv_expression``,
            each [3, h, w]), aligned with ``samples``; read per item.
        size: (H, W) every view is brought to (cameras may be stored at other resolutions);
            None: each image's own size after down-sampling.
    """

    def __init__(self, samples: list[Sample], downsample: int, background: Tensor,
                 stored_background: Tensor | None, uv: list[Path] | None = None,
                 size: tuple[int, int] | None = None) -> None:
        if len({len(s.views) for s in samples}) > 1:
            raise ValueError("all samples of a dataset must have the same number of views")
        self.samples = samples
        self.factor = downsample
        self.background = background
        self.stored_background = stored_background
        self.uv = uv
        self.size = size
        has_offset = [s.flame.static_offset is not None for s in samples]
        # a batch key must be in every item; mixing sequences with and without offsets drops them
        self.with_offset = all(has_offset)
        if any(has_offset) and not self.with_offset:
            log.warning("static_offset is present in only some sequences; it is left out of the batch")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        s = self.samples[index]
        pixels = [load_view_pixels(v, self.factor, self.background, self.stored_background, self.size)
                  for v in s.views]
        item = {
            "image": torch.stack([p.image for p in pixels]),
            "mask": torch.stack([p.mask for p in pixels]),
            "K": torch.stack([p.K for p in pixels]),
            "world_to_cam": torch.stack([v.world_to_cam for v in s.views]),
            "shape": s.flame.shape,
            "expr": s.flame.expr,
            "pose": s.flame.pose,
            "translation": s.flame.translation,
            "identity": torch.tensor(s.identity),
            "frame": torch.tensor(s.frame),
            "background": self.background,
        }
        if self.with_offset:
            item["static_offset"] = s.flame.static_offset
        if self.uv is not None:
            item.update(read_cached(self.uv[index]))
        return item


def summary_line(name: str, splits: dict[str, list[Sample]], size: tuple[int, int], note: str = "") -> str:
    """One line saying what was loaded, e.g. for the log."""
    parts = []
    for split, samples in splits.items():
        frames = {(s.identity, s.frame) for s in samples}
        cams = {v.camera for s in samples for v in s.views}
        parts.append(f"{split}: {len(samples)} samples ({len(frames)} frames, {len(cams)} cameras)")
    identities = {s.identity for ss in splits.values() for s in ss}
    line = f"{name}: {len(identities)} identities; " + "; ".join(parts) + f"; images {size[1]}x{size[0]}"
    return line + (f"; {note}" if note else "")


def thin(samples: list[Sample], limit: int | None) -> list[Sample]:
    """At most ``limit`` samples, evenly spaced (all when ``limit`` is None)."""
    if limit is None or len(samples) <= limit:
        return samples
    idx = torch.linspace(0, len(samples) - 1, limit).round().long().tolist()
    return [samples[i] for i in idx]


class RealHeadDataModule(LightningDataModule):
    """What the real-data DataModules share: ``setup`` checks the dataset as a whole
    (:mod:`data_modules.real_checks`) and builds the datasets and loaders.

    A subclass calls ``save_hyperparameters()`` (with at least ``roots``, ``downsample``,
    ``background``, ``uv_size``, ``batch_size``, ``num_workers``), sets the class attributes and
    implements :meth:`read_splits` and :meth:`uv_files`.
    """

    title: str  # names the dataset in the summary line
    convention: Convention  # of its extrinsics
    stored_white: bool  # stored RGB images are composited on white (else RGBA)

    def __init__(self) -> None:
        super().__init__()
        self.splits: dict[str, list[Sample]] = {}
        self.datasets: dict[str, RealHeadDataset] = {}
        self.image_size: tuple[int, int] | None = None

    def read_splits(self) -> tuple[dict[str, list[Sample]], str]:
        """Parse the roots into ``{"train"|"val"|"test": samples}`` and a note for the summary line."""
        raise NotImplementedError

    def uv_files(self, samples: list[Sample], background: Tensor, stored: Tensor | None) -> list[Path] | None:
        """Per-sample UV cache files (built if missing), or None when ``uv_size`` is 0."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        splits, note = self.read_splits()
        if not splits["train"]:
            raise ValueError(f"no training samples in {hp.roots}")
        self.splits = splits
        self.image_size = check_dataset([s for ss in splits.values() for s in ss], hp.downsample, self.convention)
        bg = torch.tensor(hp.background, dtype=torch.float32)
        stored = torch.ones(3) if self.stored_white else None
        self.datasets = {k: RealHeadDataset(v, hp.downsample, bg, stored, self.uv_files(v, bg, stored),
                                            self.image_size)
                         for k, v in splits.items() if v}
        rank_zero_info(summary_line(self.title, splits, self.image_size, note))

    def prepare_data(self) -> None:
        """Fill the UV cache once (rank 0) before ``setup`` reads it on every rank."""
        if self.hparams.uv_size > 0:
            self.setup()
            self.datasets = {}

    @property
    def num_identities(self) -> int:
        """Number of distinct identities (for ``link_arguments`` to the model)."""
        return len({s.identity for samples in self.splits.values() for s in samples})

    def _loader(self, split: str, shuffle: bool) -> DataLoader | list:
        if split not in self.datasets:
            if split == "train":
                raise RuntimeError(f"the train split is empty for roots {self.hparams.roots}")
            # e.g. a one-camera export has no held-out camera; Lightning skips an empty loader list
            log.info("the %s split is empty for roots %s; skipping it", split, self.hparams.roots)
            return []
        workers = self.hparams.num_workers
        return DataLoader(self.datasets[split], batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test", shuffle=False)
