"""3DRealHead driving (paper §IV-C2): a tracked sequence drives an enrolled avatar, rendered at any camera.

Per frame: tracked shape / expression / pose / camera → canonical expression offsets
(:func:`~avatar_lightning.realhead.inputs.expr_offset_map`) and the mouth features of the **frontal**
frame back-projected through the tracked mesh → E_expr → the decoder with the enrolled identity
skip maps (computed once, cached as buffers) → per-texel Gaussians → LBS with the tracked pose →
render at the sequence's camera, an orbit, or a fixed novel view.

:class:`EnrolledAvatar` is that computation as a plain module (the benchmark uses it directly);
:class:`RealHeadDriver` runs it under ``lightning predict`` (``experiments/drive.yaml``) and writes
an MP4 (optionally per-frame PNGs) and ``drive.json`` (frames per second, time per part). Temporal
smoothing of the tracking is the data's job (:mod:`avatar_lightning.realhead.smoothing`).

Dimension letters: B frames in a batch, V views, H W image, R UV side.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from avatar_lightning.export import write_video
from avatar_lightning.io import save_image, write_json
from avatar_lightning.lit.realhead_enroll import RealHeadEnrollment
from avatar_lightning.lit.render_step import head_centre, render_batch
from avatar_lightning.models.style_unet import activate_gaussian_maps
from avatar_lightning.realhead.enrollment import read_avatar_checkpoint
from avatar_lightning.realhead.inputs import backproject_features, expr_offset_map, feature_extractor, region_mask
from avatar_lightning.realhead.views import require_frontal
from avatar_lightning.render import Gaussians, RenderOutput, orbit_cameras

CAMERAS = ("sequence", "orbit", "fixed")
#: what a frame must carry to drive the avatar (a tracked sequence)
TRACKING_KEYS = ("shape", "expr", "pose", "translation", "K", "world_to_cam", "image")
PARTS = ("conditioning", "network", "raster")


def require_tracking(sample: Mapping[str, Any], where: str) -> None:
    """Raise ``ValueError`` naming the missing keys when ``sample`` is not a tracked frame."""
    missing = [k for k in TRACKING_KEYS if k not in sample]
    if missing:
        raise ValueError(f"{where}: the frames carry no tracking (missing {missing}); a driving sequence needs "
                         f"per-frame shape/expr/pose/translation and cameras (run a tracker first, e.g. "
                         f"python -m avatar_lightning.track, or metrical-tracker for INSTA)")


class EnrolledAvatar(nn.Module):
    """An enrolled 3DRealHead avatar ready to drive: frozen network, cached identity maps, head, binding.

    Args:
        net: the prior's :class:`~avatar_lightning.models.style_unet.StyleUNet` with the enrolled final layer.
        head: the head model the avatar was enrolled with.
        texels: its :class:`~avatar_lightning.realhead.gaussians.TexelGaussians`.
        identity: the L enrolled identity skip maps, finest first, each ``[1, c_l, R/2^l, R/2^l]``.
        use_mouth: the prior reads mouth features (False: zeros, Table II "w/o mouth").
        mouth_features: ``sobel`` (paper), ``rgb``, ``hog`` or ``dino`` — as the prior was trained.
        mouth_region: ``mouth`` (paper) or ``face`` — as the prior was trained.
        vit: a DINO ViT for ``mouth_features: dino``.
        render_backend: rasteriser backend.
    """

    def __init__(self, net: nn.Module, head: nn.Module, texels: nn.Module, identity: list[Tensor],
                 use_mouth: bool = True, mouth_features: str = "sobel", mouth_region: str = "mouth",
                 vit: nn.Module | None = None, render_backend: str = "auto") -> None:
        super().__init__()
        self.net, self.head, self.texels = net.eval().requires_grad_(False), head, texels
        for level, skip in enumerate(identity):
            self.register_buffer(f"identity_{level}", skip.detach().clone())
        self.register_buffer("region", region_mask(head, head.uv_raster(net.resolution), mouth_region).float())
        self.features = feature_extractor(mouth_features, vit)
        self.use_mouth, self.render_backend = use_mouth, render_backend
        self.times = dict.fromkeys(PARTS, 0.0)

    @classmethod
    def from_enrollment(cls, enrollment: nn.Module, **kwargs: Any) -> EnrolledAvatar:
        """From a :class:`~avatar_lightning.lit.realhead_enroll.RealHeadEnrollment` (kwargs as ``__init__``)."""
        return cls(enrollment.net, enrollment.head, enrollment.texels, list(enrollment.identity),
                   use_mouth=enrollment.use_mouth, **kwargs)

    @property
    def identity(self) -> list[Tensor]:
        """The cached identity skip maps, finest first."""
        return [getattr(self, f"identity_{level}") for level in range(self.net.levels)]

    @contextmanager
    def timed(self, part: str):
        """Add the wall time of the block to ``times[part]`` (device work finished first)."""
        sync = torch.cuda.synchronize if self.region.is_cuda else (lambda *a: None)
        sync()
        start = time.perf_counter()
        yield
        sync()
        self.times[part] += time.perf_counter() - start

    def conditioning(self, batch: Mapping[str, Tensor], view: int) -> Tensor:
        """E_expr's input ``[B, 6, R, R]``: expression offsets (cm) and the frontal view's mouth features.

        Args:
            batch: tracked frames (``shape``, ``expr``, ``pose``, ``translation``, ``image [B, V, 3, H, W]``,
                ``K``, ``world_to_cam``, optionally ``mask``).
            view: the frontal view the mouth features come from.
        """
        raster = self.head.uv_raster(self.net.resolution)
        offsets = expr_offset_map(self.head, raster, batch["expr"], batch["pose"][:, 2])
        if not self.use_mouth:
            return torch.cat([offsets, torch.zeros_like(offsets)], 1).float()
        feats = self.features(batch["image"][:, view])  # [B, 3, H, W]
        masks = batch.get("mask")
        mouth = torch.stack([backproject_features(
            self.head, raster, feats[b:b + 1], None if masks is None else masks[b, view:view + 1],
            batch["K"][b, view:view + 1], batch["world_to_cam"][b, view:view + 1], batch["shape"][b],
            batch["expr"][b], batch["pose"][b], batch["translation"][b]) for b in range(feats.shape[0])])
        return torch.cat([offsets, mouth.to(offsets) * self.region], 1).float()

    def raw_maps(self, expr_input: Tensor) -> Tensor:
        """Decoder maps ``[B, 59, R, R]`` of the cached identity with E_expr of ``expr_input [B, 6, R, R]``."""
        return self.net.decode(self.identity, self.net.encode_expression(expr_input))

    def gaussians(self, raw: Tensor, batch: Mapping[str, Tensor]) -> Gaussians:
        """Canonical Gaussians ``[B, N, ...]`` of raw maps for the frames' shape and expression."""
        maps = activate_gaussian_maps(raw.float(), self.texels.base_scale)
        return self.texels(self.head.canonical(batch["shape"].float(), batch["expr"].float()), maps)

    @torch.no_grad()
    def forward(self, batch: Mapping[str, Tensor], view: int, cameras: Mapping[str, Tensor] | None = None
                ) -> RenderOutput:
        """Drive and render tracked frames, timing each part (:attr:`times`).

        Args:
            batch: tracked frames (see :meth:`conditioning`).
            view: the frontal view (conditioning).
            cameras: ``K [B, C, 3, 3]``, ``world_to_cam [B, C, 4, 4]`` and ``image [B, C, 3, H, W]`` (for the
                size) to render with; None: the batch's own views.

        Returns:
            :class:`RenderOutput`, rgb ``[B, C, 3, H, W]``.
        """
        with self.timed("conditioning"):
            expr_input = self.conditioning(batch, view)
        with self.timed("network"):
            gaussians = self.gaussians(self.raw_maps(expr_input), batch)
        with self.timed("raster"):
            return render_batch({**batch, **(cameras or {})}, gaussians, self.texels.binding, self.head,
                                self.render_backend)


def scaled_cameras(K: Tensor, height: int, width: int, size: int | None) -> tuple[Tensor, int, int]:
    """Intrinsics and image size for a render ``size`` pixels wide (same field of view; None: unchanged).

    Args:
        K: Tensor  # [..., 3, 3] pixels.

    Returns:
        ``(K' [..., 3, 3], H', W')``.
    """
    if size is None or size == width:
        return K, height, width
    s = size / width
    scale = K.new_tensor([[s, 1.0, s], [1.0, s, s], [1.0, 1.0, 1.0]])  # fx, skew, cx / fy, cy / 1
    return K * scale, max(1, round(height * s)), size


def novel_view_cameras(batch: Mapping[str, Tensor], head: nn.Module, view: int, azimuth_deg: Tensor,
                       elevation_deg: float) -> Tensor:
    """One look-at camera per frame around its head centre, at the distance of view ``view``.

    Args:
        batch: tracked frames (B).
        head: the head model.
        view: the view whose distance to the head is kept.
        azimuth_deg: Tensor  # [B] degrees (0 = in front, +z; growing towards +x).
        elevation_deg: degrees above the horizontal plane.

    Returns:
        Tensor  # [B, 1, 4, 4] world_to_cam (OpenCV).
    """
    out = []
    for b in range(azimuth_deg.shape[0]):
        one = {k: batch[k][b:b + 1] for k in ("shape", "expr", "pose", "translation")}
        centre = head_centre(one, head)
        eye = torch.linalg.inv(batch["world_to_cam"][b, view])[:3, 3]
        w2c = orbit_cameras(1, float((eye - centre).norm()), elevation_deg, target=centre.detach().cpu(),
                            start_azimuth_deg=float(azimuth_deg[b]))
        out.append(w2c.to(batch["world_to_cam"]))
    return torch.stack(out)


class RealHeadDriver(LightningModule):
    """Drive an enrolled avatar with a tracked sequence under ``lightning predict`` (paper §IV-C2).

    Args:
        avatar_checkpoint: the enrollment's ``avatar.ckpt`` (its prior's file must still exist).
        output_dir: where ``video_name``, ``drive.json`` and ``frames/`` go.
        video_name: the MP4's file name.
        camera: ``sequence`` (the sequence's camera ``render_view``), ``orbit`` (360° every
            ``orbit_frames`` frames) or ``fixed`` (``azimuth_deg`` / ``elevation_deg`` around the head).
        render_view: the sequence view rendered with ``camera: sequence`` (None: the frontal one).
        frontal_view: the view the mouth features come from (None: the most frontal, checked).
        render_size: width of the rendered frames in pixels (None: the sequence's; the field of view is kept).
        orbit_frames: frames per revolution of ``camera: orbit``.
        azimuth_deg: novel-view azimuth (``fixed``) / start azimuth (``orbit``), 0 = frontal.
        elevation_deg: novel-view elevation.
        mouth_features: the prior's mouth features (None: as recorded with the avatar, else ``sobel``).
        mouth_region: the prior's mouth region (None: as recorded, else ``mouth``).
        dino_weights: DINO ViT-S/16 weights for ``mouth_features: dino``.
        write_frames: also write ``frames/%05d.png``.
        fps: frame rate of the MP4.
        progress: show a tqdm bar with frames per second.
        render_backend: rasteriser backend.
    """

    def __init__(self, avatar_checkpoint: str, output_dir: str = "runs/drive", video_name: str = "drive.mp4",
                 camera: str = "sequence", render_view: int | None = None, frontal_view: int | None = None,
                 render_size: int | None = None, orbit_frames: int = 120, azimuth_deg: float = 30.0,
                 elevation_deg: float = 10.0, mouth_features: str | None = None, mouth_region: str | None = None,
                 dino_weights: str | None = None, write_frames: bool = False, fps: float = 25.0,
                 progress: bool = True, render_backend: str = "auto") -> None:
        super().__init__()
        if camera not in CAMERAS:
            raise ValueError(f"RealHeadDriver.camera must be one of {CAMERAS}, got {camera!r}")
        self.save_hyperparameters()
        self.avatar: EnrolledAvatar | None = None
        self.frames: list[Tensor] = []
        self._bar = None

    def configure_model(self) -> None:
        """Load the enrolled avatar (and, through it, its prior's frozen weights)."""
        if self.avatar is not None:
            return
        hp = self.hparams
        record = read_avatar_checkpoint(hp.avatar_checkpoint).get("enrollment", {})
        recorded = ((record.get("dataset") or {}).get("init_args") or {})
        enrollment = RealHeadEnrollment.load_from_checkpoint(hp.avatar_checkpoint, map_location="cpu")
        vit = None
        kind = hp.mouth_features or recorded.get("mouth_features", "sobel")
        weights = hp.dino_weights or recorded.get("mouth_dino_weights")
        if kind == "dino" and weights:
            from avatar_lightning.models.vit import load_dino_vit

            vit = load_dino_vit(weights).eval()
        self.avatar = EnrolledAvatar.from_enrollment(
            enrollment, mouth_features=kind, mouth_region=hp.mouth_region or recorded.get("mouth_region", "mouth"),
            vit=vit, render_backend=hp.render_backend)

    def check_frames(self, batch: Mapping[str, Tensor]) -> None:
        """Refuse frames without tracking, or tracked with another head model (coefficient counts)."""
        require_tracking(batch, "RealHeadDriver")
        head = self.avatar.head
        for key, want in (("shape", head.n_shape), ("expr", head.n_expr)):
            if batch[key].shape[-1] != want:
                raise ValueError(f"RealHeadDriver: the sequence's {key} has {batch[key].shape[-1]} coefficients, "
                                 f"the avatar's head model {want} (head_model mismatch: track the sequence with "
                                 f"the avatar's head model)")

    def render_cameras(self, batch: Mapping[str, Tensor], frontal: int) -> dict[str, Tensor]:
        """``K``, ``world_to_cam``, ``image`` (size only) of the one camera each frame is rendered from."""
        hp = self.hparams
        b, _, _, height, width = batch["image"].shape
        view = frontal if hp.render_view is None else hp.render_view
        K, h, w = scaled_cameras(batch["K"][:, view:view + 1], height, width, hp.render_size)
        w2c = batch["world_to_cam"][:, view:view + 1]
        if hp.camera != "sequence":
            index = torch.arange(len(self.frames), len(self.frames) + b, dtype=torch.float64)
            step = 360.0 / hp.orbit_frames if hp.camera == "orbit" else 0.0
            w2c = novel_view_cameras(batch, self.avatar.head, view, hp.azimuth_deg + step * index, hp.elevation_deg)
        return {"K": K, "world_to_cam": w2c, "image": batch["image"].new_zeros(b, 1, 1, 1, 1).expand(b, 1, 3, h, w)}

    def on_predict_start(self) -> None:
        self.frames = []
        self.avatar.times = dict.fromkeys(PARTS, 0.0)
        self._started = time.perf_counter()
        if self.hparams.progress:
            from tqdm import tqdm

            dataset = getattr(self.trainer.predict_dataloaders, "dataset", None)  # one DataLoader: its length
            total = len(dataset) if hasattr(dataset, "__len__") else None
            self._bar = tqdm(total=total, desc="drive", unit="frame")

    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.check_frames(batch)
        frontal = require_frontal(batch["world_to_cam"], batch["pose"], self._centres(batch),
                                  self.hparams.frontal_view, "RealHeadDriver (driving sequence)")
        rgb = self.avatar(batch, frontal, self.render_cameras(batch, frontal)).rgb[:, 0].clamp(0, 1)
        for frame in rgb:
            if self.hparams.write_frames:
                save_image(Path(self.hparams.output_dir) / "frames" / f"{len(self.frames):05d}.png", frame)
            self.frames.append(frame.mul(255).round().byte().cpu())
        if self._bar is not None:
            self._bar.update(rgb.shape[0])
            self._bar.set_postfix(fps=f"{len(self.frames) / (time.perf_counter() - self._started):.1f}")

    def _centres(self, batch: Mapping[str, Tensor]) -> Tensor:
        return torch.stack([head_centre({k: batch[k][b:b + 1] for k in ("shape", "expr", "pose", "translation")},
                                        self.avatar.head) for b in range(batch["expr"].shape[0])])

    def on_predict_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
        seconds = time.perf_counter() - self._started
        out = Path(self.hparams.output_dir)
        if not self.frames:
            raise RuntimeError("RealHeadDriver: the sequence had no frames; nothing written")
        write_video(out / self.hparams.video_name, (f.float() / 255 for f in self.frames), fps=self.hparams.fps)
        write_json(out / "drive.json", self.summary(seconds))

    def summary(self, seconds: float) -> dict[str, Any]:
        """Frames, wall time, frames per second and each part's share of the driving time."""
        times = self.avatar.times
        total = sum(times.values()) or math.inf
        return {"frames": len(self.frames), "seconds": round(seconds, 3),
                "fps": round(len(self.frames) / seconds, 3) if seconds > 0 else None,
                "share": {k: round(v / total, 4) for k, v in times.items()},
                "camera": self.hparams.camera, "avatar_checkpoint": str(self.hparams.avatar_checkpoint)}

