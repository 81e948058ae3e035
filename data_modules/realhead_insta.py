"""INSTA monocular sequences (and so the tracker's output) as 3DRealHead enrollment subjects (paper §IV-C, §V-C).

:class:`RealHeadINSTADataModule` is :class:`~data_modules.insta.INSTADataModule` (same reader,
checks, split and few-shot frames) whose :meth:`~RealHeadINSTADataModule.fewshot` serves the
3DRealHead batch keys ``uv_identity``, ``uv_expr_offset`` and ``uv_mouth``
(:mod:`avatar_lightning.realhead.inputs`) instead of SynShot's ``uv_*`` inputs. This is the paper's
monocular protocol (§V-C, INSTA: the first frames enroll, the last 600 are the test frames driven
by their own tracking and images).

- **Inputs**: the first K frames (``fewshot_inputs``; 1–3, paper §IV-C1) as the K views of one
  sample, as :meth:`INSTADataModule.fewshot` serves them (their mean expression and jaw/eye pose;
  each frame keeps its own camera). ``uv_identity``: each input frame back-projected through its
  **own** tracked mesh and merged by visibility weight, mouth zeroed (paper §IV-A). The first input
  frame is the frontal one (a monocular video's camera faces the subject; the enrollment checks it):
  ``uv_mouth`` is its Sobel map (``mouth_features``), back-projected through its own mesh and masked
  to ``mouth_region``; ``uv_expr_offset`` the canonical offsets of the shared expression and jaw (cm).
- **Held-out frames** (the last ``fewshot_eval``, default the ``n_test`` test frames): each with its
  own tracked parameters, camera and image; its ``uv_expr_offset`` from its own expression and jaw,
  its ``uv_mouth`` from **its own frame's** image, exactly as the driver builds them when the video
  drives the avatar (:mod:`avatar_lightning.realhead.drive`, paper §IV-C2: the driving frame's
  mouth features are an input); ``uv_identity`` is the inputs' (no held-out pixel outside the mouth
  region reaches the avatar). The frames are served in time order, so t-LPIPS applies.

``uv_size`` is the 3DRealHead prior's map side R (linked from the data like every prior's). The
train/val/test loaders are the parent's (tracking and images, no conditioning maps): the driver
(:class:`~data_modules.realhead_driving.RealHeadDrivingDataModule` with ``split``) builds the maps
of a driving sequence itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from avatar_lightning.head.model import load_head_model
from avatar_lightning.lit.fewshot_data import FewShotSplit
from avatar_lightning.realhead.inputs import (
    MOUTH_FEATURES,
    MOUTH_REGIONS,
    backproject_features,
    expr_offset_map,
    feature_extractor,
    region_mask,
)
from data_modules.insta import INSTADataModule, seq_samples
from data_modules.real_common import FlameParams, RealHeadDataset, Sample
from data_modules.real_fewshot import input_sample, merged_texture
from data_modules.realhead import ENROLL_VIEWS


class FrameConditioning:
    """3DRealHead's conditioning maps of tracked real frames, for one head model and map side.

    Args:
        head: :class:`~avatar_lightning.head.HeadModel` with the data's S and E.
        uv_size: the maps' side R.
        mouth_features: ``sobel`` (paper), ``rgb`` or ``hog`` (``dino`` needs weights none ship).
        mouth_region: ``mouth`` (paper) or ``face``.
    """

    def __init__(self, head, uv_size: int, mouth_features: str = "sobel", mouth_region: str = "mouth") -> None:
        self.head, self.raster = head, head.uv_raster(uv_size)
        self.mouth = region_mask(head, self.raster, "mouth")
        self.region = region_mask(head, self.raster, mouth_region)
        self.features = feature_extractor(mouth_features)

    @torch.no_grad()
    def expression(self, expr: Tensor, pose: Tensor) -> Tensor:
        """``uv_expr_offset [3, R, R]`` (cm) of one frame's ``expr [E]`` and ``pose [5, 3]`` (its jaw)."""
        dt = self.head.v_template
        return expr_offset_map(self.head, self.raster, expr[None].to(dt), pose[2][None].to(dt))[0].float()

    @torch.no_grad()
    def mouth_map(self, item: dict[str, Tensor], view: int = 0) -> Tensor:
        """``uv_mouth [3, R, R]``: the features of view ``view`` of a schema sample (no batch dim),
        back-projected through that sample's tracked mesh and masked to the region."""
        sl = slice(view, view + 1)
        feats = self.features(item["image"][sl])
        mask = item["mask"][sl] if "mask" in item else None
        return (backproject_features(self.head, self.raster, feats, mask, item["K"][sl], item["world_to_cam"][sl],
                                     item["shape"], item["expr"], item["pose"], item["translation"])
                * self.region).float()

    @torch.no_grad()
    def identity(self, flames: Sequence[FlameParams], images: Tensor, masks: Tensor, K: Tensor,
                 world_to_cam: Tensor) -> Tensor:
        """``uv_identity [3, R, R]``: F frames, each back-projected through its own posed mesh, merged by
        visibility weight (0 where no frame sees a texel), mouth zeroed (paper §IV-A).

        Args:
            flames: the F frames' parameters.
            images: Tensor  # [F, 3, H, W]
            masks: Tensor  # [F, 1, H, W]
            K: Tensor  # [F, 3, 3]
            world_to_cam: Tensor  # [F, 4, 4] OpenCV
        """
        texture = merged_texture(self.head, self.raster, flames, images, masks, K, world_to_cam)
        return (texture * (1 - self.mouth)).float()


#: held-out frames whose maps :class:`ConditionedFrames` keeps in memory (chosen: 1.5 MB a frame at R = 256)
MEMO_FRAMES = 128


class ConditionedFrames(Dataset):
    """Held-out frames with their own expression offsets and mouth map and the subject's identity map.

    Args:
        base: schema samples without a batch dim (V = 1), in time order.
        conditioning: builds the per-frame maps.
        uv_identity: Tensor  # [3, R, R] the enrolled subject's identity texture.
    """

    def __init__(self, base: Dataset, conditioning: FrameConditioning, uv_identity: Tensor) -> None:
        self.base, self.conditioning, self.uv_identity = base, conditioning, uv_identity
        self._memo: dict[int, dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = dict(self.base[index])
        if index not in self._memo:  # maps are a head forward + a back-projection: computed once per frame
            if len(self._memo) >= MEMO_FRAMES:  # bounded: 600 INSTA frames at R = 256 would hold ~0.9 GB
                self._memo.clear()
            self._memo[index] = {"uv_expr_offset": self.conditioning.expression(item["expr"], item["pose"]),
                                 "uv_mouth": self.conditioning.mouth_map(item)}
        item.update(self._memo[index], uv_identity=self.uv_identity)
        return item


class RealHeadINSTADataModule(INSTADataModule):
    """INSTA actors (or tracked photos / video) with 3DRealHead's conditioning maps for enrollment.

    Every argument of :class:`~data_modules.insta.INSTADataModule` (``uv_size`` is the 3DRealHead
    prior's map side R and must be > 0), plus:

    Args:
        mouth_features: driving features of the frontal frame: ``sobel`` (paper), ``rgb`` or ``hog``.
        mouth_region: ``mouth`` (paper) or ``face`` (Table II "Full").
    """

    def __init__(self, *args, mouth_features: str = "sobel", mouth_region: str = "mouth", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if mouth_features not in MOUTH_FEATURES or mouth_features == "dino":
            raise ValueError(f"RealHeadINSTADataModule.mouth_features must be one of "
                             f"{[m for m in MOUTH_FEATURES if m != 'dino']}, got {mouth_features!r}")
        if mouth_region not in MOUTH_REGIONS:
            raise ValueError(f"RealHeadINSTADataModule.mouth_region must be one of {MOUTH_REGIONS}, "
                             f"got {mouth_region!r}")
        if int(self.hparams.uv_size) <= 0:
            raise ValueError(f"RealHeadINSTADataModule.uv_size must be the 3DRealHead prior's map side R (> 0), "
                             f"got {self.hparams.uv_size}")
        self.save_hyperparameters()
        self._conditioning: FrameConditioning | None = None

    def uv_files(self, samples: list[Sample], background: Tensor, stored: Tensor | None) -> list[Path] | None:
        """No SynShot ``uv_*`` maps: 3DRealHead reads its own (built by :meth:`fewshot` or the driver)."""
        return None

    @property
    def conditioning(self) -> FrameConditioning:
        """The map builder (head model loaded on first use)."""
        if self._conditioning is None:
            hp = self.hparams
            head = load_head_model(hp.head_model, n_shape=hp.n_shape, n_expr=hp.n_expr)
            self._conditioning = FrameConditioning(head, hp.uv_size, hp.mouth_features, hp.mouth_region)
        return self._conditioning

    def fewshot(self, identity: int | None = None, tracking_noise: dict | None = None,
                inputs: int | list[int] | None = None, views: int | None = None) -> FewShotSplit:
        """One actor as a 3DRealHead enrollment subject (module docstring).

        Args:
            identity: actor index (position in ``roots``); None: the first.
            tracking_noise: not supported (the conditioning maps come from the tracked parameters).
            inputs: K (the first K frames) or explicit frame positions; None: ``fewshot_inputs``.
            views: the enrollment's view count (``RealHeadFewShotDataModule.views``, 1 or 3): K input
                frames; overrides ``inputs``.

        Returns:
            :class:`~avatar_lightning.lit.fewshot_data.FewShotSplit` whose inputs (``[1, K, ...]``) and
            held-out frames carry :data:`~avatar_lightning.batch.REALHEAD_KEYS`.

        Raises:
            RuntimeError: before ``setup``.
            ValueError: ``tracking_noise`` given, ``views`` not 1 or 3, ``identity`` out of range, or frames
                that do not fit the sequence (naming the sequence).
        """
        hp = self.hparams
        if tracking_noise:
            raise ValueError("RealHeadINSTADataModule.fewshot: tracking_noise is not supported for the 3DRealHead "
                             "inputs (their maps come from the tracked parameters)")
        if views is not None:
            if views not in ENROLL_VIEWS:
                raise ValueError(f"RealHeadINSTADataModule.fewshot: views must be one of {ENROLL_VIEWS}, got {views}")
            inputs = int(views)
        identity, seq, picks, held = self.fewshot_positions(identity, inputs)
        bg = torch.tensor(hp.background, dtype=torch.float32)
        samples = seq_samples(seq, picks, identity)
        batch = {k: v[0] for k, v in input_sample(samples, hp.downsample, bg, self.image_size, None).items()}
        cond = self.conditioning
        flames = [s.flame for s in samples]
        uv_identity = cond.identity(flames, batch["image"], batch["mask"], batch["K"], batch["world_to_cam"])
        first = {**batch, **{k: getattr(flames[0], k) for k in ("shape", "expr", "pose", "translation")}}
        batch.update(uv_identity=uv_identity, uv_expr_offset=cond.expression(batch["expr"], batch["pose"]),
                     uv_mouth=cond.mouth_map(first, view=0))
        base = RealHeadDataset(seq_samples(seq, held, identity), hp.downsample, bg, None, None, self.image_size)
        return FewShotSplit(identity=identity, inputs={k: v[None] for k, v in batch.items()},
                            evaluation=ConditionedFrames(base, cond, uv_identity), input_cameras=picks)
