"""NeRSemble as exported by VHAP (``export_as_nerf_dataset``) — what 3DRealHead trains its prior on.

Layout of one exported (subject, sequence) folder, read exactly (see ``FORMATS.md``)::

    <root>/transforms.json  canonical_flame_param.npz
    <root>/images/{timestep:05d}_{camera:02d}.png     RGB composited on white
    <root>/fg_masks/{timestep:05d}_{camera:02d}.png   8-bit foreground alpha
    <root>/flame_param/{timestep:05d}.npz             translation, rotation, neck/jaw/eyes pose, shape, expr

``transform_matrix`` is an OpenGL camera-to-world matrix; it becomes an OpenCV world-to-camera one.
Splits follow VHAP's ``split_json``: the first ``ceil(train_ratio · T)`` timesteps train on every
camera except the frontal camera 8 (validation, novel view); the later timesteps are the test set.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar_lightning.render import opengl_to_opencv
from data_modules.few_shot import select_few_shot
from data_modules.real_common import (
    Convention,
    FlameParams,
    RealHeadDataModule,
    Sample,
    View,
    data_path,
    intrinsics,
    read_json,
    require_keys,
    thin,
)
from data_modules.real_uv import build_uv_cache

FRAME_KEYS = ("timestep_index", "camera_index", "transform_matrix", "file_path", "fl_x", "fl_y", "cx", "cy")
NPZ_KEYS = ("translation", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "shape", "expr")


def load_vhap_flame(path: Path, n_shape: int, n_expr: int) -> FlameParams:
    """Read one VHAP ``flame_param/{timestep}.npz``.

    Args:
        path: the npz file.
        n_shape: identity coefficients kept (VHAP stores 300).
        n_expr: expression coefficients kept (VHAP stores 100).
    """
    if not path.is_file():
        raise FileNotFoundError(f"FLAME parameter file not found: {path}")
    try:
        with np.load(path) as npz:
            data = {k: torch.from_numpy(np.asarray(npz[k], dtype=np.float32)) for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read FLAME parameter file {path}: {err}") from err
    require_keys(data, NPZ_KEYS, f"FLAME parameter file {path}")
    expected = {"translation": 3, "rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6}
    for key, size in expected.items():
        if data[key].numel() != size:
            raise ValueError(f"{path}: {key} must hold {size} values, got shape {list(data[key].shape)}")
    shape, expr = data["shape"].reshape(-1), data["expr"].reshape(-1)
    if shape.numel() < n_shape or expr.numel() < n_expr:
        raise ValueError(f"{path}: has {shape.numel()} shape / {expr.numel()} expr coefficients, "
                         f"the DataModule asks for {n_shape} / {n_expr}")
    # VHAP's full pose is cat(rotation, neck, jaw, eyes) with eyes = (left, right): FLAME joints 0..4
    pose = torch.cat([data["rotation"].reshape(1, 3), data["neck_pose"].reshape(1, 3),
                      data["jaw_pose"].reshape(1, 3), data["eyes_pose"].reshape(2, 3)])
    offset = data.get("static_offset")
    return FlameParams(shape=shape[:n_shape], expr=expr[:n_expr], pose=pose,
                       translation=data["translation"].reshape(3),
                       static_offset=None if offset is None else offset.reshape(-1, 3))


def vhap_world_to_cam(transform_matrix: list) -> Tensor:
    """OpenGL camera-to-world (VHAP, NeRF) -> OpenCV world-to-camera.

    Returns:
        Tensor  # [4, 4]
    """
    c2w_gl = torch.tensor(transform_matrix, dtype=torch.float64)
    if c2w_gl.shape != (4, 4):
        raise ValueError(f"transform_matrix must be 4x4, got {list(c2w_gl.shape)}")
    return torch.linalg.inv(opengl_to_opencv(c2w_gl)).float()


class VHAPSequence:
    """One parsed VHAP export folder: its views per timestep and FLAME parameters per timestep.

    Args:
        root: the export folder (holding ``transforms.json``).
        n_shape: identity coefficients kept.
        n_expr: expression coefficients kept.
    """

    def __init__(self, root: str | Path, n_shape: int = 300, n_expr: int = 100) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"NeRSemble root is not a folder: {self.root}")
        meta = read_json(self.root / "transforms.json", "VHAP transforms file")
        require_keys(meta, ("frames",), f"{self.root / 'transforms.json'}")
        self.views: dict[int, dict[int, View]] = {}
        self._cameras: dict[tuple, tuple[Tensor, Tensor]] = {}
        flame_paths: dict[int, Path] = {}
        for i, frame in enumerate(meta["frames"]):
            t, view, flame_path = self._parse_frame(frame, f"{self.root / 'transforms.json'} frames[{i}]")
            self.views.setdefault(t, {})[view.camera] = view
            flame_paths[t] = flame_path
        if not self.views:
            raise ValueError(f"{self.root / 'transforms.json'} lists no frames")
        self._check_complete(meta)
        self.flame = {t: load_vhap_flame(p, n_shape, n_expr) for t, p in sorted(flame_paths.items())}

    def _parse_frame(self, frame: dict, where: str) -> tuple[int, View, Path]:
        require_keys(frame, FRAME_KEYS, where)
        if "flame_param_path" not in frame:
            raise KeyError(f"{where} has no flame_param_path: export with VHAP's flame_mode='param'")
        if frame.get("fg_mask_path") is None:
            raise KeyError(f"{where} has no fg_mask_path; VHAP images are composited on white and need their mask")
        size = (int(frame["h"]), int(frame["w"])) if "h" in frame and "w" in frame else None
        K, w2c = self._camera(frame)
        view = View(image_path=data_path(self.root, frame["file_path"]),
                    mask_path=data_path(self.root, frame["fg_mask_path"]), K=K, world_to_cam=w2c,
                    camera=int(frame["camera_index"]), size=size)
        return int(frame["timestep_index"]), view, self.root / frame["flame_param_path"]

    def _camera(self, frame: dict) -> tuple[Tensor, Tensor]:
        """Intrinsics and extrinsics of a frame; NeRSemble's rigs are static, so the (identical)
        entries of one camera across thousands of timesteps share one pair of tensors."""
        key = (frame["fl_x"], frame["fl_y"], frame["cx"], frame["cy"], str(frame["transform_matrix"]))
        if key not in self._cameras:
            self._cameras[key] = (intrinsics(frame["fl_x"], frame["fl_y"], frame["cx"], frame["cy"]),
                                  vhap_world_to_cam(frame["transform_matrix"]))
        return self._cameras[key]

    def _check_complete(self, meta: dict) -> None:
        """Every timestep must be seen by the same cameras, matching the listed indices."""
        cameras = sorted(self.cameras)
        for t, views in sorted(self.views.items()):
            if sorted(views) != cameras:
                raise ValueError(f"{self.root / 'transforms.json'}: timestep {t} has cameras {sorted(views)}, "
                                 f"other timesteps have {cameras} (mismatched frame counts)")
        for key, found in (("timestep_indices", self.timesteps), ("camera_indices", cameras)):
            if key in meta and sorted(meta[key]) != found:
                raise ValueError(f"{self.root / 'transforms.json'}: {key} lists {len(meta[key])} entries but the "
                                 f"frames hold {len(found)} (mismatched frame counts)")

    @property
    def timesteps(self) -> list[int]:
        return sorted(self.views)

    @property
    def cameras(self) -> list[int]:
        return sorted(next(iter(self.views.values())))


def split_timesteps(timesteps: list[int], train_ratio: float) -> tuple[list[int], list[int]]:
    """VHAP's split: the first ``ceil(ratio · T)`` timesteps train (and validate), the rest test."""
    if not 0 < train_ratio <= 1:
        raise ValueError(f"train_ratio must be in (0, 1], got {train_ratio}")
    n_train = math.ceil(len(timesteps) * train_ratio)
    return timesteps[:n_train], timesteps[n_train:]


def split_cameras(cameras: list[int], val_camera: int) -> tuple[list[int], list[int]]:
    """Hold out ``val_camera`` (NeRSemble's frontal camera 8) or else the last one for validation."""
    if len(cameras) == 1:
        return cameras, []
    held = val_camera if val_camera in cameras else cameras[-1]
    return [c for c in cameras if c != held], [held]


def group_views(seq: VHAPSequence, t: int, cameras: list[int], per_sample: int) -> list[list[View]]:
    """Cameras of timestep ``t`` in groups of ``per_sample`` (the last group wraps around).

    The camera order is shuffled with a seed fixed by ``t``, so groups mix cameras across
    timesteps yet the dataset is the same on every run.
    """
    per_sample = min(per_sample, len(cameras))
    order = [cameras[i] for i in torch.randperm(len(cameras), generator=torch.Generator().manual_seed(t))]
    n_groups = math.ceil(len(order) / per_sample)
    return [[seq.views[t][order[(g * per_sample + j) % len(order)]] for j in range(per_sample)]
            for g in range(n_groups)]


class NeRSembleDataModule(RealHeadDataModule):
    """Multi-view NeRSemble sequences exported by VHAP, one identity per subject.

    ``setup`` checks the export as a whole: cameras stored at another resolution are resized to
    the common one (K scaled), another aspect ratio is refused, and so are OpenCV extrinsics
    where VHAP writes OpenGL ones (:mod:`data_modules.real_checks`).

    Args:
        roots: VHAP export folders, one per (subject, sequence).
        identities: identity index of each root (sequences of one subject share it); default
            0, 1, 2, ... in the order of ``roots``.
        downsample: integer image down-sampling factor, K scaled to match; 3DRealHead (Sec. V-A)
            trains at 4 (3208x2200 -> 802x550; sizes it does not divide are resized to the floor).
        views_per_sample: cameras per training sample (V of the batch); validation and test use 1.
        train_ratio: fraction of timesteps used for training (VHAP's default 0.7); the rest test.
        val_camera: camera held out for validation (NeRSemble's frontal camera is 8).
        few_shot: train on this many timesteps per sequence, chosen by farthest-point sampling in
            expression space (SynShot's protocol); None trains on all.
        max_val_samples: evenly thin the validation set to at most this many samples (None: all).
        n_shape: FLAME identity coefficients.
        n_expr: FLAME expression coefficients.
        background: RGB colour the images are composited on (the export uses white).
        uv_size: side of the prior's UV input maps (``uv_*`` batch keys); 0 leaves them out.
        head_model: ``"builtin"`` or the FLAME pickle the UV maps are built with (the model's head).
        teeth: the head carries VHAP's teeth (VHAP tracks with them).
        texture_cameras: cameras whose images of a sample's timestep are back-projected into its
            ``uv_texture`` (3DRealHead: the frontal camera 8, or 8 plus two side views); None: the
            sample's own views.
        batch_size: loader batch size.
        num_workers: loader worker processes.
    """

    title = "NeRSemble (VHAP)"
    convention = Convention(expected="camera-to-world in the OpenGL convention (x right, y up, z backward), "
                                     "as VHAP's export_as_nerf_dataset writes it",
                            other="OpenCV camera-to-world (x right, y down, z forward)")
    stored_white = True

    def __init__(self, roots: list[str], identities: list[int] | None = None, downsample: int = 1,
                 views_per_sample: int = 1, train_ratio: float = 0.7, val_camera: int = 8,
                 few_shot: int | None = None, max_val_samples: int | None = None, n_shape: int = 300,
                 n_expr: int = 100, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 uv_size: int = 0, head_model: str = "builtin", teeth: bool = False,
                 texture_cameras: list[int] | None = None, batch_size: int = 1, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        if identities is not None and len(identities) != len(roots):
            raise ValueError(f"identities has {len(identities)} entries but roots has {len(roots)}")

    def read_splits(self) -> tuple[dict[str, list[Sample]], str]:
        hp = self.hparams
        splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
        self.sequences: dict[Path, VHAPSequence] = {}
        first_frame: dict[int, int] = {}  # per identity: where its next sequence's frames start
        for i, root in enumerate(hp.roots):
            identity = hp.identities[i] if hp.identities is not None else i
            seq = VHAPSequence(root, hp.n_shape, hp.n_expr)
            self.sequences[seq.root] = seq
            offset = first_frame.get(identity, 0)
            for name, samples in self._sequence_samples(seq, identity, offset).items():
                splits[name].extend(samples)
            first_frame[identity] = offset + max(seq.timesteps) + 1
        splits["val"] = thin(splits["val"], hp.max_val_samples)
        return splits, ""

    def uv_files(self, samples: list[Sample], background: Tensor, stored: Tensor | None) -> list[Path] | None:
        hp = self.hparams
        if hp.uv_size <= 0:
            return None
        sequences = self.sequences

        def texture_views(s: Sample) -> list[View]:
            if hp.texture_cameras is None:
                return s.views
            views = sequences[s.root].views[s.local_frame]
            missing = [c for c in hp.texture_cameras if c not in views]
            if missing:
                raise ValueError(f"{s.root}: texture_cameras {missing} are not among cameras {sorted(views)}")
            return [views[c] for c in hp.texture_cameras]

        return build_uv_cache(samples, texture_views, hp.head_model, hp.uv_size, hp.n_shape, hp.n_expr, hp.teeth,
                              hp.downsample, background, stored, self.image_size)

    def _sequence_samples(self, seq: VHAPSequence, identity: int, offset: int) -> dict[str, list[Sample]]:
        hp = self.hparams
        train_t, test_t = split_timesteps(seq.timesteps, hp.train_ratio)
        train_cams, val_cams = split_cameras(seq.cameras, hp.val_camera)
        expr = torch.stack([seq.flame[t].expr for t in train_t])
        shots = [train_t[i] for i in select_few_shot(expr, hp.few_shot, str(seq.root)).tolist()]

        def samples(timesteps: list[int], cameras: list[int], per_sample: int) -> list[Sample]:
            return [Sample(views=g, flame=seq.flame[t], identity=identity, frame=offset + t, root=seq.root,
                           local_frame=t)
                    for t in timesteps for g in group_views(seq, t, cameras, per_sample)] if cameras else []

        return {"train": samples(shots, train_cams, hp.views_per_sample),
                "val": samples(train_t, val_cams, 1), "test": samples(test_t, seq.cameras, 1)}
