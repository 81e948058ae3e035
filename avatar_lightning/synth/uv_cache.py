"""The prior's UV inputs of a generated dataset, computed once per identity and cached on disk.

Per identity (SynShot §3.4: "Using a neutral mesh and its hair proxy, we backproject the images
onto the texture map"): ``uv_texture`` back-projected from the neutral sample's views,
``uv_position`` (neutral identity, x_verts) and one ``uv_expression`` map (x_exp) per expression.
For held-out identities, also ``fewshot_texture``: back-projected from the few-shot input views
only, as the inversion must do at test time. The cache folder is keyed by the map size, the
few-shot cameras and the dataset's ``content_hash`` (its manifest's digest of every generated
file), so a dataset regenerated in place with other content gets new maps; it lives inside the
dataset folder, which is itself keyed by the generator config and the head model file's content.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from avatar_lightning.io import config_hash, load_image, torch_save
from avatar_lightning.synth import layout
from avatar_lightning.synth.config import GeneratorConfig, read_manifest
from avatar_lightning.synth.rig import Rig

#: Bumped when the cached content changes for the same inputs.
UV_CACHE_VERSION = 1


class UVCache:
    """Read (and build on demand) the cached UV inputs of a dataset.

    Args:
        root: the generated dataset folder.
        config: its generator config (head model, counts).
        rig: its camera rig.
        size: UV map side h = w.
        fewshot_cameras: the few-shot input cameras (their texture is cached for held-out identities).
    """

    def __init__(self, root: Path, config: GeneratorConfig, rig: Rig, size: int, fewshot_cameras: list[int]) -> None:
        self.root, self.config, self.rig, self.size = Path(root), config, rig, size
        self.fewshot_cameras = list(fewshot_cameras)
        manifest = read_manifest(self.root) or {}
        key = config_hash({"size": size, "fewshot": self.fewshot_cameras, "version": UV_CACHE_VERSION,
                           "content": manifest.get("content_hash")})
        self.folder = self.root / f"uv_cache_{key}"
        self._head = None
        self._memory: dict[int, dict[str, Tensor]] = {}

    def path(self, identity: int) -> Path:
        """Cache file of one identity."""
        return self.folder / f"i{identity:05d}.pt"

    def _head_and_raster(self):
        from avatar_lightning.head import load_head_model
        from avatar_lightning.synth.identity import cached_uv_raster

        if self._head is None:
            self._head = load_head_model(self.config.head_model, n_shape=self.config.n_shape,
                                         n_expr=self.config.n_expr)
        return self._head, cached_uv_raster(self._head, self.size)

    def _views(self, identity: int, cameras: list[int]) -> tuple[Tensor, Tensor]:
        rgb = [load_image(layout.image_path(self.root, identity, 0, c, "rgb"))[:3] for c in cameras]
        mask = [load_image(layout.image_path(self.root, identity, 0, c, "mask"))[:1] for c in cameras]
        return torch.stack(rgb), torch.stack(mask)

    def is_built(self, identity: int, fewshot: bool = False) -> bool:
        """The identity's entry exists (with its few-shot texture when ``fewshot``)."""
        path = self.path(identity)
        return path.is_file() and (not fewshot or "fewshot_texture" in torch.load(path))

    def build(self, identity: int, fewshot: bool = False) -> None:
        """Compute and store one identity's UV inputs unless the file exists."""
        from avatar_lightning.head.texture import uv_inputs
        from avatar_lightning.head.uv import expression_map

        if self.is_built(identity, fewshot):
            return
        self._memory.pop(identity, None)  # e.g. built before it was held out: now with its few-shot texture
        head, raster = self._head_and_raster()
        params = [torch.load(layout.sample_dir(self.root, identity, e) / "params.pt")
                  for e in range(self.config.expressions)]
        neutral = params[0]

        def backproject(cameras: list[int]) -> dict[str, Tensor]:
            images, masks = self._views(identity, cameras)
            return uv_inputs(head, raster, neutral["shape"], neutral["expr"], images, masks, self.rig.K[cameras],
                             self.rig.world_to_cam[cameras], neutral["pose"], neutral["translation"])

        full = backproject(list(range(self.rig.n)))
        with torch.no_grad():
            expr = expression_map(head, raster, torch.stack([p["expr"] for p in params]))
        entry = {"uv_texture": full["uv_texture"], "uv_position": full["uv_position"], "uv_expression": expr}
        if fewshot:
            entry["fewshot_texture"] = backproject(self.fewshot_cameras)["uv_texture"]
        torch_save(self.path(identity), entry)

    def build_all(self, identities: int, fewshot: list[int], progress: bool = True) -> None:
        """Build every identity's entry (resumable: existing files are kept)."""
        todo = [i for i in range(identities) if not self.is_built(i, i in fewshot)]
        for i in tqdm(todo, desc="uv inputs", unit="identity", disable=not progress or not todo):
            self.build(i, fewshot=i in fewshot)

    def inputs(self, identity: int, expression: int, fewshot: bool = False) -> dict[str, Tensor]:
        """The ``uv_*`` batch keys of one sample (each ``[3, h, w]``).

        Args:
            identity: identity index.
            expression: expression index.
            fewshot: use the texture back-projected from the few-shot input views only.

        Raises:
            FileNotFoundError: naming the cache file when it was not built (run ``prepare_data``).
        """
        if identity not in self._memory:
            path = self.path(identity)
            if not path.is_file():
                raise FileNotFoundError(f"UV-input cache {path} missing; SyntheticDataModule.prepare_data() builds it")
            if len(self._memory) > 64:  # bounded: a big dataset does not end up entirely in RAM
                self._memory.clear()
            self._memory[identity] = torch.load(path)
        entry = self._memory[identity]
        if fewshot and "fewshot_texture" not in entry:
            raise KeyError(f"{self.path(identity)} has no few-shot texture: identity {identity} is not held out")
        return {"uv_texture": entry["fewshot_texture" if fewshot else "uv_texture"],
                "uv_position": entry["uv_position"], "uv_expression": entry["uv_expression"][expression]}
