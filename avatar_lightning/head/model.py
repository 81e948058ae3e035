"""The FLAME-format morphable head model as an ``nn.Module`` and its one entry point.

Dimension letters: B batch, V vertices, Vt UV vertices, F faces, S shape dims, E expression
dims, J joints (5: global, neck, jaw, left eye, right eye).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from avatar_lightning.head.flame_io import read_flame_model, read_masks, read_obj_uv
from avatar_lightning.head.lbs import flatten_posedirs, linear_blend_skinning

#: FLAME's shapedirs hold 300 identity then 100 expression components.
FLAME_N_SHAPE_TOTAL = 300
JOINT_NAMES = ("global", "neck", "jaw", "left_eye", "right_eye")


@dataclass
class HeadOutput:
    """What :meth:`HeadModel.forward` returns (all in world space unless said otherwise).

    Attributes:
        vertices: Tensor  # [B, V, 3] posed vertices, translation included.
        canonical_vertices: Tensor  # [B, V, 3] template + shape + expression (the 3DMM space).
        joints: Tensor  # [B, J, 3] posed joint locations, translation included.
        joint_transforms: Tensor  # [B, J, 4, 4] rest → world for points bound to each joint.
        vertex_transforms: Tensor  # [B, V, 4, 4] per-vertex LBS transforms, rest → world.
        pose_offsets: Tensor  # [B, V, 3] pose correctives, added in rest space before skinning.
    """

    vertices: Tensor
    canonical_vertices: Tensor
    joints: Tensor
    joint_transforms: Tensor
    vertex_transforms: Tensor
    pose_offsets: Tensor


class HeadModel(nn.Module):
    """FLAME-format morphable model: blendshapes + LBS with a 5-joint kinematic tree.

    Build it with :func:`load_head_model`. Buffers follow the module's device/dtype.

    Attributes:
        faces: LongTensor  # [F, 3]
        uv_coords: Tensor  # [Vt, 2] in [0, 1]; image row = (1 − v)·h (OBJ convention)
        uv_faces: LongTensor  # [F, 3] indices into ``uv_coords``
        regions: dict name -> LongTensor of vertex indices (CPU); at least ``face``, ``scalp``,
            ``hair`` (= scalp), ``neck``, ``eyes``, ``mouth``, plus every key of the masks file.
        n_shape, n_expr: numbers of identity / expression coefficients ``forward`` takes.
        source: the file (or ``"builtin"``) the model came from.
    """

    def __init__(self, data: dict[str, np.ndarray], uv_coords: np.ndarray | None, uv_faces: np.ndarray | None,
                 regions: dict[str, np.ndarray], n_shape: int, n_expr: int,
                 n_shape_total: int = FLAME_N_SHAPE_TOTAL, source: str = "") -> None:
        super().__init__()
        K = data["shapedirs"].shape[2]
        if n_shape > n_shape_total or n_shape_total + n_expr > K:
            raise ValueError(f"{source}: shapedirs has {K} components ({n_shape_total} identity + "
                             f"{K - n_shape_total} expression); asked for n_shape={n_shape}, n_expr={n_expr}")
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        self.register_buffer("v_template", f32(data["v_template"]))
        self.register_buffer("shapedirs", f32(data["shapedirs"][:, :, :n_shape]))
        self.register_buffer("exprdirs", f32(data["shapedirs"][:, :, n_shape_total:n_shape_total + n_expr]))
        self.register_buffer("posedirs", flatten_posedirs(f32(data["posedirs"])))
        self.register_buffer("J_regressor", f32(data["J_regressor"]))
        self.register_buffer("lbs_weights", f32(data["weights"]))
        self.register_buffer("faces", torch.as_tensor(data["f"], dtype=torch.long))
        self.register_buffer("_uv_coords", None if uv_coords is None else f32(uv_coords))
        self.register_buffer("_uv_faces", None if uv_faces is None else torch.as_tensor(uv_faces, dtype=torch.long))
        parents = [int(p) for p in data["kintree_table"][0]]
        parents[0] = -1
        if any(p >= j for j, p in enumerate(parents[1:], 1)):
            raise ValueError(f"{source}: kintree_table must list parents before children, got {parents}")
        self.parents = parents
        self.regions = Regions({k: torch.as_tensor(v, dtype=torch.long) for k, v in regions.items()})
        self.regions.source = source
        self.n_shape, self.n_expr, self.source = n_shape, n_expr, source

    @property
    def uv_coords(self) -> Tensor:
        """``[Vt, 2]`` UV coordinates (raises when the model was loaded without a UV template)."""
        if self._uv_coords is None:
            raise ValueError(f"{self.source}: this head model has no UV layout; pass uv_template= "
                             f"(FLAME's head_template_mesh.obj) to load_head_model")
        return self._uv_coords

    @property
    def uv_faces(self) -> Tensor:
        """``[F, 3]`` indices into :attr:`uv_coords`."""
        if self._uv_faces is None:
            return self.uv_coords  # raises the message above
        return self._uv_faces

    def uv_raster(self, size: int | tuple[int, int]):
        """The :class:`~avatar_lightning.head.uv.UVRaster` of this model's layout at ``size``,
        computed once per size and device and kept (rasterising is the slow step of every UV map)."""
        from avatar_lightning.head.uv import uv_rasterize

        key = (size if isinstance(size, tuple) else (size, size), str(self.uv_coords.device))
        cache = self.__dict__.setdefault("_uv_raster_cache", {})
        if key not in cache:
            cache[key] = uv_rasterize(self.uv_coords, self.uv_faces, key[0])
        return cache[key]

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    def canonical(self, shape: Tensor, expr: Tensor) -> Tensor:
        """Template + identity + expression blendshapes (no pose).

        Args:
            shape: Tensor  # [B, S]
            expr: Tensor  # [B, E]

        Returns:
            Tensor  # [B, V, 3]
        """
        self._check(shape, "shape", self.n_shape)
        self._check(expr, "expr", self.n_expr)
        V = self.num_vertices
        # one matrix product per basis ([B, S] @ [S, V·3]) is several times faster than einsum here
        offsets = shape @ self.shapedirs.reshape(V * 3, -1).T + expr @ self.exprdirs.reshape(V * 3, -1).T
        return self.v_template + offsets.reshape(-1, V, 3)

    def expression_offsets(self, expr: Tensor) -> Tensor:
        """Expression blendshape offsets alone (SynShot's γ·B_expr), ``[B, E] -> [B, V, 3]``."""
        self._check(expr, "expr", self.n_expr)
        return (expr @ self.exprdirs.reshape(self.num_vertices * 3, -1).T).reshape(-1, self.num_vertices, 3)

    def forward(self, shape: Tensor, expr: Tensor, pose: Tensor | None = None,
                translation: Tensor | None = None) -> HeadOutput:
        """Pose the head.

        Args:
            shape: Tensor  # [B, S] identity coefficients.
            expr: Tensor  # [B, E] expression coefficients.
            pose: Tensor  # [B, 5, 3] axis-angle: global, neck, jaw, left eye, right eye (zeros if None).
            translation: Tensor  # [B, 3] added after skinning (zeros if None).

        Returns:
            :class:`HeadOutput`.
        """
        B = shape.shape[0]
        pose = shape.new_zeros(B, self.num_joints, 3) if pose is None else pose
        translation = shape.new_zeros(B, 3) if translation is None else translation
        if pose.shape != (B, self.num_joints, 3):
            raise ValueError(f"pose must have shape [B={B}, {self.num_joints}, 3], got {list(pose.shape)}")
        if translation.shape != (B, 3):
            raise ValueError(f"translation must have shape [B={B}, 3], got {list(translation.shape)}")
        v_shaped = self.canonical(shape, expr)
        res = linear_blend_skinning(v_shaped, pose, self.J_regressor, self.parents, self.lbs_weights,
                                    self.posedirs, translation)
        return HeadOutput(res.vertices, v_shaped, res.joints, res.joint_transforms, res.vertex_transforms,
                          res.pose_offsets)

    def _check(self, x: Tensor, name: str, n: int) -> None:
        if x.ndim != 2 or x.shape[1] != n:
            raise ValueError(f"{name} must have shape [B, {n}] for this head model ({self.source}), "
                             f"got {list(x.shape)}")


class Regions(dict):
    """name -> vertex indices; a missing name raises a KeyError that says where regions come from."""

    source = ""

    def __missing__(self, key: str):
        raise KeyError(f"{self.source}: no vertex region {key!r}; regions come from FLAME_masks.pkl (masks=) "
                       f"and have {sorted(self)}")


def derive_regions(masks: dict[str, np.ndarray], path: str | os.PathLike = "") -> dict[str, np.ndarray]:
    """The named regions every consumer relies on, derived from FLAME_masks keys."""
    regions = dict(masks)
    need = {"face", "scalp", "neck", "left_eyeball", "right_eyeball", "lips"}
    missing = need - set(masks)
    if missing:
        raise KeyError(f"{path}: masks file lacks region(s) {sorted(missing)}; FLAME_masks.pkl has {sorted(need)}")
    regions["hair"] = masks["scalp"]
    regions["eyes"] = np.union1d(masks["left_eyeball"], masks["right_eyeball"])
    mouth = [masks["lips"]] + [masks[k] for k in ("mouth_interior", "teeth") if k in masks]
    regions["mouth"] = np.unique(np.concatenate(mouth))
    return regions


def load_head_model(path: str | os.PathLike = "builtin", n_shape: int = 20, n_expr: int = 15,
                    teeth: bool = False, uv_template: str | os.PathLike | None = None,
                    masks: str | os.PathLike | None = None, seed: int = 0,
                    cache_dir: str | os.PathLike | None = None) -> HeadModel:
    """Load a FLAME-format head model: a user's FLAME pickle or the project's built-in head.

    Args:
        path: ``generic_model.pkl`` / ``flame2023.pkl``, or ``"builtin"`` (generated and cached).
        n_shape: identity coefficients ``forward`` takes (≤ 300).
        n_expr: expression coefficients ``forward`` takes (≤ 100).
        teeth: append the 120 teeth vertices of GaussianAvatars/VHAP (V = 5023 + 120 for FLAME).
        uv_template: ``head_template_mesh.obj``; default: that name beside ``path`` if it exists
            (without one, ``uv_coords`` raises a clear error when used).
        masks: ``FLAME_masks.pkl``; default: that name beside ``path`` if it exists (without one,
            ``regions`` holds only what teeth add).
        seed: built-in head only: the generator's seed.
        cache_dir: built-in head only: where its files are cached (default ``~/.cache/avatar_lightning``).

    Raises:
        FileNotFoundError / KeyError / ValueError naming the file and what is missing or malformed.
    """
    if str(path) == "builtin":
        from avatar_lightning.head.builtin import builtin_head_files

        files = builtin_head_files(seed=seed, cache_dir=cache_dir)
        path, uv_template, masks = files.model, files.uv_template, files.masks
    path = Path(path)
    data = read_flame_model(path)
    uv_path = Path(uv_template) if uv_template is not None else path.parent / "head_template_mesh.obj"
    uv_coords = uv_faces = None
    if uv_template is not None or uv_path.is_file():  # beside the model it is optional, named it is required
        obj = read_obj_uv(uv_path)
        if obj.faces.shape != data["f"].shape or not np.array_equal(obj.faces, data["f"]):
            raise ValueError(f"{uv_path}: its faces differ from 'f' of {path}; the UV template must match the model")
        uv_coords, uv_faces = obj.uv_coords, obj.uv_faces
    mask_path = Path(masks) if masks is not None else path.parent / "FLAME_masks.pkl"
    region_masks: dict[str, np.ndarray] = {}
    has_masks = masks is not None or mask_path.is_file()
    if has_masks:
        region_masks = read_masks(mask_path, data["v_template"].shape[0])
    if teeth:
        from avatar_lightning.head.teeth import add_teeth

        data, uv_coords, uv_faces, region_masks = add_teeth(data, uv_coords, uv_faces, region_masks, source=path)
    regions = derive_regions(region_masks, mask_path) if has_masks else region_masks
    return HeadModel(data, uv_coords, uv_faces, regions, n_shape, n_expr,
                     source=str(path) if str(path) else "builtin")
