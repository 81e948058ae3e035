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
"""

from __future__ import annotations

import random

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from avatar_lightning.io import load_image
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
from data_modules.synthetic import SyntheticDataModule, fewshot_cameras
from data_modules.uv_cache import UVCache, read_cached

#: Bumped when the cached maps change for the same settings.
REALHEAD_CACHE_VERSION = 1
IDENTITY_VIEWS = ("mixed", "1", "3")


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
            or ``dino`` (Table III; ``dino`` needs ``dino_weights``).
        mouth_region: ``mouth`` (paper) or ``face`` (Table II "Full").
        identity_views: identity-texture views in training: ``mixed`` (paper §V-A), ``1`` or ``3``.
        eval_identity_views: identity-texture views for validation/test samples (``1`` or ``3``).
        dino_weights: a DINO ViT-S/16 state dict for ``mouth_features: dino``.
    """

    def __init__(self, *args, with_uv: bool = False, mouth_features: str = "sobel", mouth_region: str = "mouth",
                 identity_views: str = "mixed", eval_identity_views: str = "3", dino_weights: str | None = None,
                 **kwargs) -> None:
        super().__init__(*args, with_uv=with_uv, **kwargs)
        if mouth_features not in MOUTH_FEATURES:
            raise ValueError(f"mouth_features must be one of {MOUTH_FEATURES}, got {mouth_features!r}")
        if mouth_features == "dino" and dino_weights is None:
            raise ValueError("RealHeadSyntheticDataModule: mouth_features 'dino' needs dino_weights (a DINO "
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
                  "identity_cameras": self.identity_cameras(3), "dino_weights": h.dino_weights,
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
        if dm.hparams.mouth_features == "dino" and dm.hparams.dino_weights is not None:
            from avatar_lightning.models.vit import load_dino_vit

            vit = load_dino_vit(dm.hparams.dino_weights).eval()
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
        root, n = self.dm.data_dir, self.dm.config.expressions
        params = [torch.load(layout.sample_dir(root, identity, e) / "params.pt") for e in range(n)]
        neutral = min(range(n), key=lambda e: float(params[e]["expr"].norm() + params[e]["pose"][2].norm()))
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
