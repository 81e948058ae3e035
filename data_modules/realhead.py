"""3DRealHead's conditioning inputs on the embedded synthetic data (paper §IV-A, §V-A).

:class:`RealHeadSyntheticDataModule` serves the synthetic heads of :class:`SyntheticDataModule`
with three more batch keys (:mod:`avatar_lightning.batch`): ``uv_identity``, ``uv_expr_offset`` and
``uv_mouth`` (:mod:`avatar_lightning.realhead.inputs`). Conditioning always comes from the
**frontal** camera (the rig camera nearest azimuth 0 at eye level), whatever cameras supervise the
sample. The identity texture is back-projected from the identity's neutral frame (the one with the
smallest ‖expr‖ + ‖jaw‖) through 1 view (frontal) or 3 views (frontal and the two ±35° few-shot
cameras); training mixes the two at random (paper §V-A), evaluation uses ``eval_identity_views``.

Maps are computed once per identity and cached beside the data (``.uv_cache/<hash>/``, keyed by
every setting and the dataset's content hash).

Enrollment and driving (paper §IV-C) read a held-out subject through
:meth:`RealHeadSyntheticDataModule.fewshot` (1 or 3 neutral input views, frontal first, and every
other expression / camera for evaluation; served by :class:`RealHeadFewShotDataModule`) and
:meth:`RealHeadSyntheticDataModule.driving_sequence` (the subject's expressions seen by the frontal
camera, a tracked sequence without precomputed conditioning maps).
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from avatar_lightning.io import load_image
from avatar_lightning.lit.fewshot_data import FewShotDataModule, FewShotSplit
from avatar_lightning.realhead.inputs import (
    MOUTH_FEATURES,
    MOUTH_REGIONS,
    backproject_features,
    expr_offset_map,
    feature_extractor,
    region_mask,
)
from avatar_lightning.synth import layout
from avatar_lightning.synth.config import read_manifest
from data_modules.synthetic import SampleRef, SyntheticDataModule, SyntheticViews, fewshot_cameras
from data_modules.uv_cache import UVCache, read_cached

#: Bumped when the cached maps change for the same settings.
REALHEAD_CACHE_VERSION = 2  # 2: Sobel maps of flat frames are zeros (MIN_GRADIENT)
IDENTITY_VIEWS = ("mixed", "1", "3")
#: Enrollment input views (paper §IV-C1: 1–3 neutral images; the identity texture exists for 1 and 3).
ENROLL_VIEWS = (1, 3)


def neutral_index(params: list[Mapping[str, Tensor]]) -> int:
    """The neutral frame of a subject: the smallest ‖expr‖ + ‖jaw‖ (REALHEAD.md, chosen).

    Args:
        params: per frame, ``expr [E]`` and ``pose [5, 3]`` (jaw = ``pose[2]``, axis-angle).

    Returns:
        The frame index.
    """
    return min(range(len(params)), key=lambda e: float(params[e]["expr"].norm() + params[e]["pose"][2].norm()))


class RealHeadViews(Dataset):
    """A schema dataset with the 3DRealHead keys added from a per-identity cache.

    Args:
        base: any dataset whose items carry ``identity`` and ``frame``.
        entry: identity -> its cached maps (``uv_identity_1``, ``uv_identity_3``, ``uv_expr_offset``
            ``[X, 3, h, w]``, ``uv_mouth`` ``[X, 3, h, w]``).
        identity_views: ``"mixed"`` (1 or 3 at random per access), ``"1"`` or ``"3"``.
    """

    def __init__(self, base: Dataset, entry, identity_views: str) -> None:
        if identity_views not in IDENTITY_VIEWS:
            raise ValueError(f"identity_views must be one of {IDENTITY_VIEWS}, got {identity_views!r}")
        self.base, self.entry, self.identity_views = base, entry, identity_views

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = self.base[index]
        maps = self.entry(int(item["identity"]))
        views = self.identity_views if self.identity_views != "mixed" else random.choice(("1", "3"))
        frame = int(item["frame"])
        item.update(uv_identity=maps[f"uv_identity_{views}"], uv_expr_offset=maps["uv_expr_offset"][frame],
                    uv_mouth=maps["uv_mouth"][frame])
        return item


class RealHeadSyntheticDataModule(SyntheticDataModule):
    """Synthetic heads with 3DRealHead's conditioning maps (the embedded default of its prior).

    Every argument of :class:`SyntheticDataModule`, plus:

    Args:
        with_uv: also serve SynShot's ``uv_*`` inputs (off: 3DRealHead does not read them).
        mouth_features: driving features of the frontal frame: ``sobel`` (paper), ``rgb``, ``hog``
            or ``dino`` (Table III; ``dino`` needs ``mouth_dino_weights``).
        mouth_region: ``mouth`` (paper) or ``face`` (Table II "Full").
        identity_views: identity-texture views in training: ``mixed`` (paper §V-A), ``1`` or ``3``.
        eval_identity_views: identity-texture views for validation/test samples (``1`` or ``3``).
        mouth_dino_weights: a DINO ViT-S/16 state dict for ``mouth_features: dino``.
    """

    def __init__(self, *args, with_uv: bool = False, mouth_features: str = "sobel", mouth_region: str = "mouth",
                 identity_views: str = "mixed", eval_identity_views: str = "3", mouth_dino_weights: str | None = None,
                 **kwargs) -> None:
        super().__init__(*args, with_uv=with_uv, **kwargs)
        if mouth_features not in MOUTH_FEATURES:
            raise ValueError(f"mouth_features must be one of {MOUTH_FEATURES}, got {mouth_features!r}")
        if mouth_features == "dino" and mouth_dino_weights is None:
            raise ValueError("RealHeadSyntheticDataModule: mouth_features 'dino' needs mouth_dino_weights (a DINO "
                             "ViT-S/16 state dict such as dino_deitsmall16_pretrain.pth; none ship offline)")
        if mouth_region not in MOUTH_REGIONS:
            raise ValueError(f"mouth_region must be one of {MOUTH_REGIONS}, got {mouth_region!r}")
        if identity_views not in IDENTITY_VIEWS:
            raise ValueError(f"identity_views must be one of {IDENTITY_VIEWS}, got {identity_views!r}")
        if eval_identity_views not in IDENTITY_VIEWS[1:]:
            raise ValueError(f"eval_identity_views must be one of {IDENTITY_VIEWS[1:]}, got {eval_identity_views!r}")
        self.save_hyperparameters()
        self.realhead_cache: UVCache | None = None
        self._memory: dict[int, dict[str, Tensor]] = {}

    # -- cameras --------------------------------------------------------------------------------
    def frontal_camera(self) -> int:
        """The conditioning camera: the rig's camera nearest azimuth 0 at eye level."""
        return fewshot_cameras(self.rig, 1)[0]

    def identity_cameras(self, count: int) -> list[int]:
        """Views the identity texture is back-projected from: frontal first, then the ±35° cameras."""
        if count == 1:
            return [self.frontal_camera()]
        return sorted(fewshot_cameras(self.rig, count), key=lambda c: c != self.frontal_camera())

    # -- cache ----------------------------------------------------------------------------------
    def _cache(self) -> UVCache:
        from avatar_lightning.synth.rig import Rig

        self.rig = self.rig or Rig.from_dict(_read_rig(self))
        h = self.hparams
        config = {"version": REALHEAD_CACHE_VERSION, "uv_size": h.uv_size, "mouth_features": h.mouth_features,
                  "mouth_region": h.mouth_region, "frontal": self.frontal_camera(),
                  "identity_cameras": self.identity_cameras(3), "mouth_dino_weights": h.mouth_dino_weights,
                  "content": (read_manifest(self.data_dir) or {}).get("content_hash")}
        return UVCache(self.data_dir, config)

    def prepare_data(self) -> None:
        """Generate the data (parent), then the 3DRealHead maps of every identity (resumable)."""
        super().prepare_data()
        cache = self._cache()
        todo = [i for i in range(self.config.identities) if not cache.path(f"i{i:05d}").is_file()]
        if todo:
            builder = _MapBuilder(self)
            for i in tqdm(todo, desc="3DRealHead inputs", unit="identity"):
                cache.ensure(f"i{i:05d}", lambda i=i: builder.identity(i))

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.realhead_cache = self._cache()

    def identity_maps(self, identity: int) -> dict[str, Tensor]:
        """The cached maps of one identity (see :class:`RealHeadViews`)."""
        if identity not in self._memory:
            if len(self._memory) > 64:
                self._memory.clear()
            self._memory[identity] = read_cached(self.realhead_cache.path(f"i{identity:05d}"))
        return self._memory[identity]

    def dataset(self, split: str) -> RealHeadViews:
        views = self.hparams.identity_views if split == "train" else self.hparams.eval_identity_views
        return RealHeadViews(super().dataset(split), self.identity_maps, views)

    # -- enrollment and driving (paper §IV-C) ----------------------------------------------------
    def tracking_params(self, identity: int) -> list[dict[str, Tensor]]:
        """The generator's parameters of every expression of ``identity`` (``shape``, ``expr``, ``pose``,
        ``translation``, ``background``): what a tracker would give."""
        root = self.data_dir
        return [torch.load(layout.sample_dir(root, identity, e) / "params.pt") for e in range(self.config.expressions)]

    def fewshot(self, identity: int | None = None, tracking_noise: dict | None = None,
                views: int | None = None) -> FewShotSplit:
        """Enrollment split of a held-out subject (paper §IV-C1), like :meth:`SyntheticDataModule.fewshot`.

        Inputs: the subject's neutral frame (:func:`neutral_index`) seen by ``views`` cameras, frontal
        first (:meth:`identity_cameras`), with ``uv_identity`` back-projected from exactly those views
        and the neutral frame's ``uv_expr_offset`` / ``uv_mouth`` (frontal camera). Evaluation: every
        expression seen by every other camera, with that frame's conditioning maps.

        Args:
            identity: the subject; None: the first held-out test identity.
            tracking_noise: not supported for the 3DRealHead inputs (must be None).
            views: input images, 1 (frontal) or 3 (frontal and ±35°); None: ``fewshot_inputs``.

        Returns:
            :class:`~avatar_lightning.lit.fewshot_data.FewShotSplit` whose ``inputs`` carry the
            :data:`~avatar_lightning.batch.REALHEAD_KEYS` (``[1, 3, h, w]``) and V = ``views`` images.

        Raises:
            ValueError: ``views`` not 1 or 3; ``tracking_noise`` given; the neutral frame is not frame 0
                (the evaluation splits count frame 0 as the neutral, novel-view frame).
        """
        views = self.hparams.fewshot_inputs if views is None else int(views)
        if views not in ENROLL_VIEWS:
            raise ValueError(f"RealHeadSyntheticDataModule.fewshot: views must be one of {ENROLL_VIEWS} (the "
                             f"identity texture is built from 1 or 3 views), got {views}")
        if tracking_noise:
            raise ValueError("RealHeadSyntheticDataModule.fewshot: tracking_noise is not supported for the "
                             "3DRealHead inputs (their cached maps come from the exact parameters)")
        identity = self.split_identities()["test"][0] if identity is None else identity
        neutral = neutral_index(self.tracking_params(identity))
        if neutral != 0:
            raise ValueError(f"identity {identity}: its neutral frame is {neutral}, the evaluation splits need frame 0")
        cams = self.identity_cameras(views)
        maps = self.identity_maps(identity)
        inputs = SyntheticViews(self.data_dir, self.rig, [SampleRef(identity, neutral, cams)], views, None)[0]
        inputs.update(uv_identity=maps[f"uv_identity_{views}"], uv_expr_offset=maps["uv_expr_offset"][neutral],
                      uv_mouth=maps["uv_mouth"][neutral])
        others = [c for c in range(self.rig.n) if c not in cams]
        refs = [SampleRef(identity, e, others) for e in range(self.config.expressions)]
        evaluation = RealHeadViews(SyntheticViews(self.data_dir, self.rig, refs, len(others), None),
                                   self.identity_maps, str(views))
        return FewShotSplit(identity=identity, inputs={k: v[None] for k, v in inputs.items()},
                            evaluation=evaluation, input_cameras=cams)

    def driving_sequence(self, identity: int | None = None) -> SyntheticViews:
        """A tracked driving sequence of a subject (paper §IV-C2): every expression, frontal camera.

        Samples carry the schema's tracking keys and the frontal frame (V = 1), not the conditioning
        maps: the driver builds those from the frame (``avatar_lightning.realhead.drive``).

        Args:
            identity: the subject; None: the first held-out test identity.
        """
        identity = self.split_identities()["test"][0] if identity is None else identity
        refs = [SampleRef(identity, e, [self.frontal_camera()]) for e in range(self.config.expressions)]
        return SyntheticViews(self.data_dir, self.rig, refs, 1, None)


class RealHeadFewShotDataModule(FewShotDataModule):
    """:class:`~avatar_lightning.lit.fewshot_data.FewShotDataModule` with a choice of 1 or 3 enrollment views.

    Every argument of ``FewShotDataModule`` (the subject defaults to a held-out identity of the dataset
    the prior recorded), plus:

    Args:
        views: input images of the subject's neutral frame, frontal first: 1 or 3 (paper §IV-C1); the
            source's ``fewshot(identity, views=...)`` must accept it (:class:`RealHeadSyntheticDataModule`).
    """

    prior_kind = "realhead"  # prior_checkpoint: latest finds a RealHeadPrior

    def __init__(self, source: dict | None = None, identity: int | None = None, prior_checkpoint: str = "latest",
                 runs_dir: str = "runs", steps_per_epoch: int = 50, eval_batch_size: int = 2,
                 tracking_noise: dict[str, float] | None = None, views: int = 3) -> None:
        super().__init__(source=source, identity=identity, prior_checkpoint=prior_checkpoint, runs_dir=runs_dir,
                         steps_per_epoch=steps_per_epoch, eval_batch_size=eval_batch_size,
                         tracking_noise=tracking_noise)
        if views not in ENROLL_VIEWS:
            raise ValueError(f"RealHeadFewShotDataModule.views must be one of {ENROLL_VIEWS}, got {views}")
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        super().setup(stage)  # the parent's checks (held-out subject) and its default split
        if len(self.split.input_cameras) != self.hparams.views:
            self.split = self.source.fewshot(self.split.identity, views=self.hparams.views)


class _MapBuilder:
    """Computes one identity's 3DRealHead maps from the generated images and parameters."""

    def __init__(self, dm: RealHeadSyntheticDataModule) -> None:
        from avatar_lightning.head import load_head_model

        self.dm = dm
        cfg = dm.config
        self.head = load_head_model(cfg.head_model, n_shape=cfg.n_shape, n_expr=cfg.n_expr)
        self.raster = self.head.uv_raster(dm.hparams.uv_size)
        self.mouth = region_mask(self.head, self.raster, "mouth")
        self.region = region_mask(self.head, self.raster, dm.hparams.mouth_region)
        vit = None
        if dm.hparams.mouth_features == "dino" and dm.hparams.mouth_dino_weights is not None:
            from avatar_lightning.models.vit import load_dino_vit

            vit = load_dino_vit(dm.hparams.mouth_dino_weights).eval()
        self.features = feature_extractor(dm.hparams.mouth_features, vit)

    def _views(self, identity: int, expression: int, cameras: list[int]) -> tuple[Tensor, Tensor]:
        root = self.dm.data_dir
        rgb = [load_image(layout.image_path(root, identity, expression, c, "rgb"))[:3] for c in cameras]
        mask = [load_image(layout.image_path(root, identity, expression, c, "mask"))[:1] for c in cameras]
        return torch.stack(rgb), torch.stack(mask)

    def _project(self, params: dict, features: Tensor, masks: Tensor, cameras: list[int]) -> Tensor:
        rig = self.dm.rig
        return backproject_features(self.head, self.raster, features, masks, rig.K[cameras],
                                    rig.world_to_cam[cameras], params["shape"], params["expr"], params["pose"],
                                    params["translation"])

    @torch.no_grad()
    def identity(self, identity: int) -> dict[str, Tensor]:
        n = self.dm.config.expressions
        params = self.dm.tracking_params(identity)
        neutral = neutral_index(params)
        out = {}
        for count in (1, 3):
            cams = self.dm.identity_cameras(count)
            images, masks = self._views(identity, neutral, cams)
            out[f"uv_identity_{count}"] = self._project(params[neutral], images, masks, cams) * (1 - self.mouth)
        frontal = [self.dm.frontal_camera()]
        mouth = []
        for e in range(n):
            images, masks = self._views(identity, e, frontal)
            mouth.append(self._project(params[e], self.features(images), masks, frontal) * self.region)
        out["uv_mouth"] = torch.stack(mouth)
        expr = torch.stack([p["expr"] for p in params])
        jaw = torch.stack([p["pose"][2] for p in params])
        out["uv_expr_offset"] = expr_offset_map(self.head, self.raster, expr, jaw)
        return out


def _read_rig(dm: SyntheticDataModule) -> dict:
    import json

    path = dm.data_dir / layout.CAMERAS
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: the synthetic dataset is incomplete; regenerate it")
    return json.loads(path.read_text())
