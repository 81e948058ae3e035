"""The embedded default data: the project's procedural synthetic heads (SynShot §3.4-style).

``SyntheticDataModule`` generates its dataset on first use (in ``prepare_data``: Lightning runs it
on local rank 0 only and makes the other ranks wait), keyed by the generator config so a folder
made with other settings is never reused, splits by identity into train / val / held-out test
identities, and yields the shared batch schema (:mod:`avatar_lightning.batch`) with the UV inputs
the prior needs, computed once per identity and cached on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from avatar_lightning.head.texture import uv_inputs
from avatar_lightning.io import load_image
from avatar_lightning.lit.fewshot_data import FewShotSplit
from avatar_lightning.synth import layout
from avatar_lightning.synth.config import GeneratorConfig
from avatar_lightning.synth.generate import generate, is_complete
from avatar_lightning.synth.rig import Rig
from avatar_lightning.synth.uv_cache import UVCache
from data_modules.tracking_noise import NoisyTracking, TrackingNoise


@dataclass
class SampleRef:
    """One (identity, expression) sample and the cameras it is served with.

    Attributes:
        identity: identity index in the dataset.
        expression: expression index (0 = neutral).
        cameras: fixed camera indices, or None to draw ``views`` random cameras per access.
    """

    identity: int
    expression: int
    cameras: list[int] | None = None


class SyntheticViews(Dataset):
    """Samples of a generated dataset as schema dicts (without the batch dimension).

    Args:
        root: dataset folder (complete).
        rig: its camera rig.
        refs: the samples served.
        views: V, cameras per sample when a ref does not fix them.
        uv: the UV-input cache (None: no ``uv_*`` keys).
    """

    def __init__(self, root: Path, rig: Rig, refs: list[SampleRef], views: int, uv: UVCache | None) -> None:
        self.root, self.rig, self.refs, self.views, self.uv = root, rig, refs, views, uv

    def __len__(self) -> int:
        return len(self.refs)

    def _cameras(self, ref: SampleRef) -> list[int]:
        if ref.cameras is not None:
            return ref.cameras
        # A fresh random subset on every access from the global RNG, which Lightning/DataLoader seed
        # per worker, so training sees every camera over time and workers do not repeat each other.
        return torch.randperm(self.rig.n)[: self.views].sort().values.tolist()

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        ref = self.refs[index]
        cams = self._cameras(ref)
        params = torch.load(layout.sample_dir(self.root, ref.identity, ref.expression) / "params.pt")
        img = [load_image(layout.image_path(self.root, ref.identity, ref.expression, c, "rgb"))[:3] for c in cams]
        mask = [load_image(layout.image_path(self.root, ref.identity, ref.expression, c, "mask"))[:1] for c in cams]
        item = {
            "image": torch.stack(img), "mask": torch.stack(mask), "K": self.rig.K[cams],
            "world_to_cam": self.rig.world_to_cam[cams], "shape": params["shape"], "expr": params["expr"],
            "pose": params["pose"], "translation": params["translation"],
            "identity": torch.tensor(ref.identity), "frame": torch.tensor(ref.expression),
            "background": params["background"],
        }
        if self.uv is not None:
            item.update(self.uv.inputs(ref.identity, ref.expression))
        return item


def fewshot_cameras(rig: Rig, count: int = 3) -> list[int]:
    """The ``count`` frontal cameras closest to the azimuths spread over ±35° at the lowest pitch.

    Inversion inputs look like casual photos: near-frontal, roughly at eye level.
    """
    centres = rig.centres() - rig.target
    az = torch.rad2deg(torch.atan2(centres[:, 0], centres[:, 2]))
    el = torch.rad2deg(torch.asin(centres[:, 1] / centres.norm(dim=-1)))
    wanted = torch.linspace(-35, 35, count) if count > 1 else torch.zeros(1)
    chosen: list[int] = []
    for a in wanted.tolist():
        cost = (az - a).abs() + 2 * el.abs() + 1e6 * (~rig.frontal).float()
        cost[chosen] = float("inf")
        chosen.append(int(cost.argmin()))
    return chosen


class SyntheticDataModule(LightningDataModule):
    """Procedural synthetic heads, generated on first use; the embedded default of every prior config.

    Paper scale (SynShot §3.4) is ≈2,000 identities × 28 cameras at 768×512; the defaults are a
    CPU-sized set. Each batch sample is one (identity, expression) seen from ``views`` cameras.

    Args:
        root: parent folder; the dataset lives in ``root/<config hash>`` so different settings
            never share (or silently reuse) files.
        identities: number of generated identities (train + val + test).
        expressions: expressions per identity (expression 0 is neutral).
        image_size: image height and width (one int for square images).
        cameras: rig cameras (half frontal, half over the upper hemisphere; 28 in the paper).
        views: V, cameras per training sample (random subset each time); val/test use V spread cameras.
        val_identities: identities held out for validation (taken before the test ones).
        test_identities: identities held out for testing and few-shot inversion (the last ones).
        seed: generator seed (also seeds the training view draws).
        head_model: ``"builtin"`` or a FLAME pickle path.
        n_shape: identity coefficients S.
        n_expr: expression coefficients E.
        uv_size: side h = w of the cached UV inputs (``uv_texture``, ``uv_position``, ``uv_expression``).
        with_uv: serve the ``uv_*`` keys (computed once, cached on disk).
        fewshot_inputs: number of neutral input views of the few-shot identity.
        batch_size: samples per batch B.
        num_workers: DataLoader workers.
        generate_workers: processes used to generate the dataset when it is missing.
        surface_points: surface Gaussians per rendered avatar (0 = chosen from the image size).
        texture_size: side of the generated UV textures.
        hair_density: multiplier of hair-proxy points (0 = chosen from the image size).
    """

    def __init__(self, root: str = "data/synthetic", identities: int = 12, expressions: int = 4,
                 image_size: int | tuple[int, int] = 64, cameras: int = 28, views: int = 4, val_identities: int = 1,
                 test_identities: int = 1, seed: int = 0, head_model: str = "builtin", n_shape: int = 20,
                 n_expr: int = 15, uv_size: int = 64, with_uv: bool = True, fewshot_inputs: int = 3,
                 batch_size: int = 2, num_workers: int = 0, generate_workers: int = 1, surface_points: int = 0,
                 texture_size: int = 256, hair_density: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        if identities - val_identities - test_identities < 1:
            raise ValueError(f"SyntheticDataModule: identities={identities} leaves no training identity after "
                             f"val_identities={val_identities} and test_identities={test_identities}")
        if not 1 <= views <= cameras:
            raise ValueError(f"SyntheticDataModule: views must be in [1, cameras={cameras}], got {views}")
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.config = GeneratorConfig(identities=identities, expressions=expressions, height=height, width=width,
                                      cameras=cameras, seed=seed, head_model=head_model, n_shape=n_shape,
                                      n_expr=n_expr, surface_points=surface_points, texture_size=texture_size,
                                      hair_density=hair_density)
        self.data_dir = Path(root) / self.config.hash()
        self.rig: Rig | None = None
        self.uv: UVCache | None = None

    # -- values other components link to (LightningCLI link_arguments) --------------------------
    @property
    def image_height(self) -> int:
        """H of the served images."""
        return self.config.height

    @property
    def image_width(self) -> int:
        """W of the served images."""
        return self.config.width

    @property
    def n_identities(self) -> int:
        """Number of identities in the whole dataset (identity indices are < this)."""
        return self.config.identities

    @property
    def n_shape(self) -> int:
        """S."""
        return self.config.n_shape

    @property
    def n_expr(self) -> int:
        """E."""
        return self.config.n_expr

    @property
    def uv_size(self) -> int:
        """h = w of the UV inputs."""
        return self.hparams.uv_size

    # -- splits -----------------------------------------------------------------------------------
    def split_identities(self) -> dict[str, list[int]]:
        """Identity indices per split: train first, then val, then the held-out test identities."""
        n, v, t = self.config.identities, self.hparams.val_identities, self.hparams.test_identities
        return {"train": list(range(n - v - t)), "val": list(range(n - v - t, n - t)), "test": list(range(n - t, n))}

    def prepare_data(self) -> None:
        """Generate the dataset and its UV cache if absent (Lightning: local rank 0 only)."""
        if not is_complete(self.data_dir, self.config):
            generate(self.config, self.data_dir, workers=self.hparams.generate_workers)
        if self.hparams.with_uv:
            # few-shot textures for the validation identities too: method settings are tuned on them
            splits = self.split_identities()
            self._uv_cache().build_all(self.config.identities, fewshot=splits["test"] + splits["val"])

    def _uv_cache(self) -> UVCache:
        self.rig = self.rig or Rig.from_dict(_read_json(self.data_dir / layout.CAMERAS))
        fewshot = fewshot_cameras(self.rig, self.hparams.fewshot_inputs)
        return UVCache(self.data_dir, self.config, self.rig, self.hparams.uv_size, fewshot_cameras=fewshot)

    def setup(self, stage: str | None = None) -> None:
        """Open the generated dataset (``prepare_data`` must have run on some rank)."""
        if not is_complete(self.data_dir, self.config):
            raise FileNotFoundError(f"{self.data_dir}: synthetic dataset missing or incomplete; prepare_data() "
                                    f"generates it (python -m avatar_lightning.synth does too)")
        self.rig = Rig.from_dict(_read_json(self.data_dir / layout.CAMERAS))
        self.uv = self._uv_cache() if self.hparams.with_uv else None

    def spread_cameras(self) -> list[int]:
        """V cameras spread evenly over the rig (frontal and upper groups alike)."""
        idx = torch.linspace(0, self.rig.n - 1, self.hparams.views).round().long()
        return sorted(set(idx.tolist()))

    def dataset(self, split: str) -> SyntheticViews:
        """The samples of ``split`` ("train", "val" or "test"): every expression of its identities."""
        fixed = None if split == "train" else self.spread_cameras()
        refs = [SampleRef(i, e, fixed) for i in self.split_identities()[split] for e in range(self.config.expressions)]
        return SyntheticViews(self.data_dir, self.rig, refs, self.hparams.views, self.uv)

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(self.dataset(split), batch_size=self.hparams.batch_size, shuffle=split == "train",
                          num_workers=self.hparams.num_workers, drop_last=False,
                          persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def fewshot(self, identity: int | None = None, tracking_noise: TrackingNoise | dict | None = None) -> FewShotSplit:
        """Few-shot view of a held-out identity (default: the first test identity).

        Inputs: ``fewshot_inputs`` near-frontal neutral views; their ``uv_texture`` is back-projected
        from those views alone (the paper extracts the texture from the input images at test time).
        Evaluation: every expression from every other camera.

        Args:
            identity: the subject; None: the first test identity.
            tracking_noise: simulated tracking error (:class:`data_modules.tracking_noise.TrackingNoise`
                or its dict): the parameters of inputs and evaluation samples, and the UV inputs
                derived from them, are perturbed; the images stay rendered from the true ones.
        """
        identity = self.split_identities()["test"][0] if identity is None else identity
        cams = fewshot_cameras(self.rig, self.hparams.fewshot_inputs)
        inputs = SyntheticViews(self.data_dir, self.rig, [SampleRef(identity, 0, cams)], len(cams), None)[0]
        noise = TrackingNoise.parse(tracking_noise)
        if noise is not None:
            inputs = noise.frame(inputs, identity, 0)
        if self.uv is not None:
            if noise is None:
                inputs.update(self.uv.inputs(identity, 0, fewshot=True))
            else:  # what a tracker's output gives: the texture back-projected with the perturbed mesh
                head, raster = self.uv._head_and_raster()
                inputs.update(uv_inputs(head, raster, inputs["shape"], inputs["expr"], inputs["image"], inputs["mask"],
                                        inputs["K"], inputs["world_to_cam"], inputs["pose"], inputs["translation"]))
        inputs = {k: v[None] for k, v in inputs.items()}
        others = [c for c in range(self.rig.n) if c not in cams]
        refs = [SampleRef(identity, e, others) for e in range(self.config.expressions)]
        evaluation: Dataset = SyntheticViews(self.data_dir, self.rig, refs, len(others), self.uv)
        if noise is not None:
            evaluation = NoisyTracking(evaluation, noise, self._derive_uv if self.uv is not None else None)
        return FewShotSplit(identity=identity, inputs=inputs, evaluation=evaluation, input_cameras=cams)

    def _derive_uv(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        """``uv_position`` / ``uv_expression`` of a sample's (possibly perturbed) shape and expression."""
        from avatar_lightning.head.uv import expression_map, position_map

        head, raster = self.uv._head_and_raster()
        with torch.no_grad():
            s = sample["shape"][None].to(head.v_template)
            e = sample["expr"][None].to(head.v_template)
            neutral = head.canonical(s, torch.zeros_like(e))[0]
            dtype = sample["image"].dtype
            return {"uv_position": position_map(raster, neutral, head.faces).to(dtype),
                    "uv_expression": expression_map(head, raster, e)[0].to(dtype)}


def _read_json(path: Path) -> dict:
    import json

    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: the synthetic dataset is incomplete; regenerate it")
    return json.loads(path.read_text())
