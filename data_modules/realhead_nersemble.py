"""3DRealHead's prior data on NeRSemble exported by VHAP (paper §V-A; design ``shared/REALHEAD.md``).

:class:`RealHeadNeRSembleDataModule` serves VHAP exports (:mod:`data_modules.nersemble`, the exact
``export_as_nerf_dataset`` layout) with the 3DRealHead batch keys ``uv_identity``, ``uv_expr_offset``
and ``uv_mouth`` (:mod:`avatar_lightning.realhead.inputs`):

- **Subject-level split** (paper §V-A: train subjects, held-out test subjects). ``root`` holds one
  export folder per (subject, sequence), named as VHAP's NeRSemble recipe names them,
  ``<subject>_<sequence>_v16_DS4_whiteBg_staticOffset_maskBelowLine``; the config lists subject
  ids for ``train_subjects``, ``val_subjects`` and ``test_subjects``. Every frame and every camera
  of a subject belongs to its subject's split. Validation uses held-out *subjects* (chosen: it
  measures what the prior is for, unseen identities; the paper gives no validation split).
- **Conditioning from the frontal camera** (``frontal_camera``, NeRSemble's camera 8), supervision
  from any camera. Per subject, the neutral frame (smallest ‖expr‖ + ‖jaw‖ over all its tracked
  frames, chosen) is back-projected from the frontal camera (1-view texture) and from the frontal
  camera plus the two side cameras nearest ±``side_yaw_deg`` yaw (3-view texture), mouth zeroed;
  training mixes the two (paper §V-A). Per frame: the canonical expression offsets of VHAP's
  tracked expression and jaw (cm; the paper runs SMIRK here, not available offline) and the Sobel
  map of the frontal image of that frame, back-projected through the tracked mesh and masked to
  the mouth.

Maps are computed once and cached beside the data (``<sequence>/.uv_cache/<hash>/``,
:class:`~data_modules.uv_cache.UVCache`): the folder is keyed by every setting and the head model's
content, each file by what it comes from (FLAME parameters, cameras, image and mask files;
:func:`~data_modules.real_uv.sample_key`). They are stored as float16 (chosen: at 256² the cache of
paper-scale NeRSemble is ~1.5 MB per frame in float32; float16 keeps 11 bits, 0.005 cm at 10 cm)
and read back as float32.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fnmatch import fnmatch
from glob import escape
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from avatar_lightning.fingerprint import file_digest, head_model_digest
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
from data_modules.nersemble import NeRSembleDataModule, VHAPSequence, group_views
from data_modules.real_common import (
    FlameParams,
    RealHeadDataModule,
    RealHeadDataset,
    Sample,
    View,
    load_view_pixels,
    thin,
)
from data_modules.real_uv import sample_key
from data_modules.realhead import ENROLL_VIEWS, IDENTITY_VIEWS, neutral_index
from data_modules.uv_cache import UVCache, read_cached

#: Bumped when the cached maps change for the same settings.
REALHEAD_NERSEMBLE_FORMAT = 2  # 2: Sobel maps of flat frames are zeros (MIN_GRADIENT)
SPLITS = ("train", "val", "test")
FIELDS = {"train": "train_subjects", "val": "val_subjects", "test": "test_subjects"}
#: NeRSemble's raw frames are 3208 × 2200 (FORMATS.md); the paper trains at 4× down-sampled.
RAW_LONG_SIDE = 3208


@dataclass
class Subject:
    """One subject's sequences and the frame and cameras its identity texture comes from.

    Attributes:
        name: the NeRSemble id, e.g. ``"074"``.
        identity: its index in the batches (train, val, test subjects in the config's order).
        sequences: its VHAP exports, in name order.
        offsets: per sequence, the number of its first frame (frames stay unique per subject).
        neutral: (sequence index, timestep) of the neutral frame.
        identity_cameras: frontal, then the two side cameras (the 1-view texture uses the first).
    """

    name: str
    identity: int
    sequences: list[VHAPSequence]
    offsets: list[int]
    neutral: tuple[int, int]
    identity_cameras: list[int]

    def neutral_views(self) -> tuple[Sample, list[View]]:
        seq, t = self.sequences[self.neutral[0]], self.neutral[1]
        views = [seq.views[t][c] for c in self.identity_cameras]
        return Sample(views, seq.flame[t], self.identity, t, seq.root, t), views


def subject_roots(root: Path, subject: str, sequences: list[str] | None, field: str) -> list[Path]:
    """The export folders ``<root>/<subject>_<sequence>...`` of a subject, optionally filtered by
    ``sequences`` (glob patterns on the part after ``<subject>_``, e.g. ``"EMO-*"``)."""
    found = sorted(p for p in root.glob(f"{escape(subject)}_*") if (p / "transforms.json").is_file()
                   and (sequences is None or any(fnmatch(p.name[len(subject) + 1:], s) for s in sequences)))
    if not found:
        which = f" matching sequences {sequences}" if sequences is not None else ""
        raise FileNotFoundError(f"{field}: subject {subject!r} has no VHAP export{which} under {root} (folders "
                                f"'{subject}_<sequence>_...' holding transforms.json; quote ids in YAML: an "
                                f"unquoted 074 is read as a number)")
    return found


def camera_yaws(views: dict[int, View], frontal: int, centre: Tensor) -> dict[int, float]:
    """Yaw of every camera around the head, in degrees, 0 at ``frontal``, positive towards its image right.

    Measured in the frontal camera's frame (x right, y down, z forward): a camera centre ``p``
    relative to the head has yaw ``atan2(p_x, -p_z)``, the rotation about the frontal image's vertical.

    Args:
        views: camera -> view of one frame.
        frontal: the frontal camera.
        centre: Tensor  # [3] the head's world position (its FLAME translation).
    """
    R = views[frontal].world_to_cam[:3, :3].double()
    out = {}
    for cam, view in views.items():
        w2c = view.world_to_cam.double()
        p = R @ (-w2c[:3, :3].T @ w2c[:3, 3] - centre.double())
        out[cam] = math.degrees(math.atan2(float(p[0]), float(-p[2])))
    return out


def side_cameras(views: dict[int, View], frontal: int, centre: Tensor, yaw_deg: float, where: str) -> list[int]:
    """The two cameras nearest yaw −``yaw_deg`` and +``yaw_deg`` (REALHEAD.md: about ±40°, chosen)."""
    yaws = {c: y for c, y in camera_yaws(views, frontal, centre).items() if c != frontal}
    picks = [min(yaws, key=lambda c, s=s: abs(yaws[c] - s * yaw_deg)) for s in (-1, 1)] if yaws else []
    if len(set(picks)) != 2:
        raise ValueError(f"{where}: the 3-view identity texture needs two side cameras besides frontal_camera "
                         f"{frontal}, found cameras {sorted(views)} (yaws {yaws}); set side_cameras")
    return picks


def warn_if_downsampled_twice(size: tuple[int, int], factor: int) -> None:
    """Warn when ``factor`` is applied to frames already far smaller than NeRSemble's raw ones.

    VHAP's NeRSemble recipe tracks and exports its ``DS4`` frames (4× down-sampled already), so the
    paper's 4× is then ``downsample: 1``; 4 again would train at 1/16 of the raw size.
    """
    stored = max(size) * factor
    if factor > 1 and stored < RAW_LONG_SIDE / 2:
        rank_zero_warn(f"RealHeadNeRSembleDataModule: the images are about {stored} px on their long side, already "
                       f"far below NeRSemble's raw {RAW_LONG_SIDE} px; downsample {factor} trains at "
                       f"{size[1]}x{size[0]} (paper: 4x of the raw frames; an export of VHAP's DS4 frames needs "
                       f"downsample 1)")


class ConditionedViews(Dataset):
    """A schema dataset with the 3DRealHead keys read from per-frame and per-subject cache files.

    Args:
        base: the views' dataset (:class:`~data_modules.real_common.RealHeadDataset`).
        frame_files: per item, its frame's ``uv_expr_offset`` / ``uv_mouth`` file.
        identity_files: identity -> its ``uv_identity_1`` / ``uv_identity_3`` file.
        identity_views: ``"mixed"`` (1 or 3 at random per access, paper §V-A), ``"1"`` or ``"3"``.
    """

    def __init__(self, base: Dataset, frame_files: list[Path], identity_files: dict[int, Path],
                 identity_views: str) -> None:
        self.base, self.frame_files, self.identity_files = base, frame_files, identity_files
        self.identity_views = identity_views
        self._identities: dict[int, dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.base)

    def _identity(self, identity: int) -> dict[str, Tensor]:
        if identity not in self._identities:
            if len(self._identities) >= 64:  # bounded: a worker may see every subject of the split
                self._identities.clear()
            self._identities[identity] = read_cached(self.identity_files[identity])
        return self._identities[identity]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = self.base[index]
        frame = read_cached(self.frame_files[index])
        views = self.identity_views if self.identity_views != "mixed" else random.choice(("1", "3"))
        item.update(uv_identity=self._identity(int(item["identity"]))[f"uv_identity_{views}"].float(),
                    uv_expr_offset=frame["uv_expr_offset"].float(), uv_mouth=frame["uv_mouth"].float())
        return item


class RealHeadNeRSembleDataModule(RealHeadDataModule):
    """NeRSemble (VHAP exports) with 3DRealHead's conditioning maps and a subject-level split.

    A sibling of :class:`~data_modules.nersemble.NeRSembleDataModule` (same reader, checks and
    down-sampling; its timestep/camera split does not apply). Batches carry the schema's keys plus
    :data:`~avatar_lightning.batch.REALHEAD_KEYS`; train samples hold ``views_per_sample`` cameras
    (any camera, the frontal one included), validation and test samples one camera each, every camera.

    Args:
        root: folder of VHAP export folders ``<subject>_<sequence>_...`` (VHAP's NeRSemble recipe).
        train_subjects: NeRSemble ids trained on (strings: ``"074"``); must not be empty.
        test_subjects: held-out ids for evaluation (paper: 20); must not be empty.
        val_subjects: held-out ids validated on (chosen: one subject); none: no validation.
        sequences: glob patterns of the sequences used (``"EMO-*"``); None: every export of the subject.
        frontal_camera: the conditioning camera (``camera_index``; NeRSemble's frontal camera is 8).
        side_cameras: the two side cameras of the 3-view identity texture; None: per subject, the
            cameras nearest ±``side_yaw_deg`` yaw around the frontal one.
        side_yaw_deg: yaw of the side views (REALHEAD.md: about ±40°, chosen).
        downsample: integer image down-sampling (paper §V-A: 4, of the raw 3208×2200 frames; a VHAP
            export of its DS4 frames is already 4× smaller: use 1).
        views_per_sample: supervising cameras per training sample (V).
        max_val_samples: evenly thin the validation set to at most this many samples (None: all).
        identity_views: identity-texture views in training: ``mixed`` (paper §V-A), ``1`` or ``3``.
        eval_identity_views: identity-texture views for validation and test (``1`` or ``3``).
        mouth_features: ``sobel`` (paper), ``rgb``, ``hog`` or ``dino`` (Table III).
        mouth_region: ``mouth`` (paper) or ``face`` (Table II "Full").
        mouth_dino_weights: a DINO ViT-S/16 state dict for ``mouth_features: dino``.
        n_shape: FLAME identity coefficients (VHAP stores 300).
        n_expr: FLAME expression coefficients (VHAP stores 100).
        background: RGB colour the images are composited on (the exports use white).
        uv_size: side R of the conditioning maps (paper: 256).
        head_model: the FLAME pickle VHAP tracked with (its UV template and masks beside it), or ``builtin``.
        batch_size: loader batch size (paper: 2).
        num_workers: loader worker processes.
    """

    title = "NeRSemble (VHAP) for 3DRealHead"
    convention = NeRSembleDataModule.convention
    stored_white = True

    def __init__(self, root: str, train_subjects: list[str], test_subjects: list[str],
                 val_subjects: list[str] | None = None, sequences: list[str] | None = None, frontal_camera: int = 8,
                 side_cameras: list[int] | None = None, side_yaw_deg: float = 40.0, downsample: int = 4,
                 views_per_sample: int = 1, max_val_samples: int | None = 16, identity_views: str = "mixed",
                 eval_identity_views: str = "3", mouth_features: str = "sobel", mouth_region: str = "mouth",
                 mouth_dino_weights: str | None = None, n_shape: int = 300, n_expr: int = 100,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0), uv_size: int = 256,
                 head_model: str = "builtin", batch_size: int = 2, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_arguments()
        self.subjects: dict[str, Subject] = {}
        self.sequences: dict[Path, VHAPSequence] = {}

    def _check_arguments(self) -> None:
        hp = self.hparams
        for split in ("train", "test"):
            if not hp[FIELDS[split]]:
                raise ValueError(f"RealHeadNeRSembleDataModule: {FIELDS[split]} is empty; list the NeRSemble subject "
                                 f"ids (quoted, e.g. ['017', '074']): the paper does not publish its split")
        seen: dict[str, str] = {}
        for field in FIELDS.values():
            for s in hp[field] or []:
                if s in seen:
                    raise ValueError(f"subject {s!r} is listed in both {seen[s]} and {field}; the split is by subject")
                seen[s] = field
        choices = {"identity_views": IDENTITY_VIEWS, "eval_identity_views": IDENTITY_VIEWS[1:],
                   "mouth_features": MOUTH_FEATURES, "mouth_region": MOUTH_REGIONS}
        for field, allowed in choices.items():
            if hp[field] not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, got {hp[field]!r}")
        if hp.mouth_features == "dino" and hp.mouth_dino_weights is None:
            raise ValueError("mouth_features 'dino' needs mouth_dino_weights (a dino_deitsmall16_pretrain.pth)")
        if hp.side_cameras is not None and len(set(hp.side_cameras)) != 2:
            raise ValueError(f"side_cameras must name two cameras, got {hp.side_cameras}")
        if hp.uv_size <= 0:
            raise ValueError(f"uv_size must be positive (the conditioning maps' side), got {hp.uv_size}")

    # -- parsing ----------------------------------------------------------------------------------
    def subject_lists(self) -> dict[str, list[str]]:
        """``{"train"|"val"|"test": subject ids}`` as configured."""
        return {split: list(self.hparams[field] or []) for split, field in FIELDS.items()}

    def read_splits(self) -> tuple[dict[str, list[Sample]], str]:
        hp = self.hparams
        root = Path(hp.root)
        if not root.is_dir():
            raise FileNotFoundError(f"root: the folder of NeRSemble VHAP exports is not a folder: {root}")
        self.subjects, self.sequences = {}, {}
        splits: dict[str, list[Sample]] = {k: [] for k in SPLITS}
        for split, names in self.subject_lists().items():
            for name in names:
                seqs = [VHAPSequence(p, hp.n_shape, hp.n_expr) for p in subject_roots(root, name, hp.sequences,
                                                                                        FIELDS[split])]
                subject = self._subject(name, len(self.subjects), seqs)
                self.subjects[name] = subject
                self.sequences.update({seq.root: seq for seq in seqs})
                splits[split].extend(self._samples(subject, hp.views_per_sample if split == "train" else 1))
        splits["val"] = thin(splits["val"], hp.max_val_samples)
        cams = {s.name: s.identity_cameras for s in self.subjects.values()}
        return splits, f"conditioning camera {hp.frontal_camera}; identity cameras {cams}"

    def _subject(self, name: str, identity: int, seqs: list[VHAPSequence]) -> Subject:
        hp = self.hparams
        for seq in seqs:
            if hp.frontal_camera not in seq.cameras:
                raise ValueError(f"frontal_camera {hp.frontal_camera} is not among the cameras {seq.cameras} of "
                                 f"{seq.root} (subject {name!r}); NeRSemble's frontal camera is 8")
        frames = [(i, t) for i, seq in enumerate(seqs) for t in seq.timesteps]
        params = [{"expr": seqs[i].flame[t].expr, "pose": seqs[i].flame[t].pose} for i, t in frames]
        i, t = frames[neutral_index(params)]
        views = seqs[i].views[t]
        if hp.side_cameras is None:
            sides = side_cameras(views, hp.frontal_camera, seqs[i].flame[t].translation, hp.side_yaw_deg,
                                 f"{seqs[i].root} (subject {name!r})")
        else:
            sides = list(hp.side_cameras)
            if not set(sides) <= set(views):
                raise ValueError(f"side_cameras {sides} are not all among the cameras {sorted(views)} of "
                                 f"{seqs[i].root} (subject {name!r})")
        offsets = [0]
        for seq in seqs[:-1]:
            offsets.append(offsets[-1] + max(seq.timesteps) + 1)
        return Subject(name, identity, seqs, offsets, (i, t), [hp.frontal_camera, *sides])

    @staticmethod
    def _samples(subject: Subject, per_sample: int) -> list[Sample]:
        """Every frame of the subject, its cameras in groups of ``per_sample`` (all cameras supervise)."""
        return [Sample(views=g, flame=seq.flame[t], identity=subject.identity, frame=offset + t, root=seq.root,
                       local_frame=t)
                for seq, offset in zip(subject.sequences, subject.offsets, strict=True) for t in seq.timesteps
                for g in group_views(seq, t, seq.cameras, per_sample)]

    def uv_files(self, samples: list[Sample], background: Tensor, stored: Tensor | None) -> None:
        return None  # 3DRealHead reads its own maps (ConditionedViews), not SynShot's uv_* inputs

    # -- conditioning maps ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        super().setup(stage)
        hp = self.hparams
        warn_if_downsampled_twice(self.image_size, hp.downsample)
        frames, identities = self._cache_maps()
        views = {"train": hp.identity_views}
        self.datasets = {k: ConditionedViews(d, frames[k], identities, views.get(k, hp.eval_identity_views))
                         for k, d in self.datasets.items()}

    def _cache_config(self) -> dict:
        hp = self.hparams
        dino = file_digest(hp.mouth_dino_weights) if hp.mouth_features == "dino" else None
        return {"format": REALHEAD_NERSEMBLE_FORMAT, "maps": "realhead", "head_model": str(hp.head_model),
                "head_model_digest": head_model_digest(hp.head_model), "uv_size": hp.uv_size, "n_shape": hp.n_shape,
                "n_expr": hp.n_expr, "downsample": hp.downsample, "background": list(hp.background),
                "size": list(self.image_size), "mouth_features": hp.mouth_features, "mouth_region": hp.mouth_region,
                "mouth_dino": dino, "dtype": "float16"}

    def _cache_maps(self) -> tuple[dict[str, list[Path]], dict[int, Path]]:
        """Make sure every frame's and subject's maps are cached; return the files per split item and
        per identity."""
        config, caches, builder = self._cache_config(), {}, []

        def ensure(root: Path, key: str, compute) -> Path:
            cache = caches.setdefault(root, UVCache(root, config))
            if not cache.path(key).is_file() and not builder:
                builder.append(_MapBuilder(self.hparams, self.image_size))
            return cache.ensure(key, lambda: compute(builder[0]))

        identities = {}
        for s in self.subjects.values():
            sample, views = s.neutral_views()
            identities[s.identity] = ensure(sample.root, f"id{s.name}_" + sample_key(sample, views),
                                            lambda b, sample=sample, views=views: b.identity(views, sample.flame))
        frontal = self.hparams.frontal_camera
        files: dict[tuple[Path, int], Path] = {}
        todo = {(s.root, s.local_frame): s for ss in self.splits.values() for s in ss}
        for (root, t), s in tqdm(todo.items(), desc="3DRealHead maps", unit="frame", disable=None):
            view = self.sequences[root].views[t][frontal]
            key = sample_key(Sample([view], s.flame, s.identity, t, root, t), [view])
            files[root, t] = ensure(root, key, lambda b, view=view, flame=s.flame: b.frame(view, flame))
        computed = sum(c.misses for c in caches.values())
        rank_zero_info(f"3DRealHead maps {self.hparams.uv_size}x{self.hparams.uv_size}: {computed} computed, "
                       f"{len(todo) + len(identities) - computed} from cache")
        return {k: [files[s.root, s.local_frame] for s in ss] for k, ss in self.splits.items()}, identities

    # -- enrollment subject (avatar_lightning.lit.fewshot_data.FewShotSource) ------------------------
    def split_identities(self) -> dict[str, list[int]]:
        """Identity indices of the train / val / test subjects (the split is by subject)."""
        return {split: [self.subjects[n].identity for n in names if n in self.subjects]
                for split, names in self.subject_lists().items()}

    def fewshot(self, identity: int | None = None, tracking_noise: dict | None = None,
                views: int | None = None) -> FewShotSplit:
        """A subject as a 3DRealHead enrollment subject (paper §IV-C1, §V-B: held-out NeRSemble subjects).

        Inputs: the subject's neutral frame seen by its identity cameras, frontal first (1 view: the
        frontal camera; 3: with the two side cameras), with ``uv_identity`` back-projected from exactly
        those views and the neutral frame's ``uv_expr_offset`` / ``uv_mouth`` (frontal camera), all
        read from the cache the prior's data built. Evaluation: every other (frame, camera) image of the
        subject in its split, each with its own frame's maps. The neutral frame is renumbered ``frame``
        0 and every other frame ``frame + 1`` (order kept), because the enrollment's evaluation counts
        frame 0 as the novel-view (neutral) frame and every other as a novel expression.

        Args:
            identity: the subject's identity index; None: the first test subject.
            tracking_noise: not supported (must be None).
            views: 1 or 3 input views; None: 3.

        Returns:
            :class:`~avatar_lightning.lit.fewshot_data.FewShotSplit` (``input_cameras``: NeRSemble camera ids).

        Raises:
            RuntimeError: before ``setup``.
            ValueError: ``views`` not 1 or 3, ``tracking_noise`` given, an unknown identity (naming the
                configured subjects), or a subject whose split holds no image besides the inputs.
        """
        if not self.datasets:
            raise RuntimeError("RealHeadNeRSembleDataModule.fewshot: call setup() first")
        views = 3 if views is None else int(views)
        if views not in ENROLL_VIEWS:
            raise ValueError(f"RealHeadNeRSembleDataModule.fewshot: views must be one of {ENROLL_VIEWS}, got {views}")
        if tracking_noise:
            raise ValueError("RealHeadNeRSembleDataModule.fewshot: tracking_noise is not supported for the 3DRealHead "
                             "inputs (their cached maps come from VHAP's parameters)")
        ids = self.split_identities()
        identity = ids["test"][0] if identity is None else int(identity)
        subject = next((s for s in self.subjects.values() if s.identity == identity), None)
        if subject is None:
            raise ValueError(f"RealHeadNeRSembleDataModule.fewshot: identity {identity} is none of the configured "
                             f"subjects {{{', '.join(f'{s.name!r}: {s.identity}' for s in self.subjects.values())}}}")
        split = next(k for k, v in ids.items() if identity in v)
        data: ConditionedViews = self.datasets[split]
        samples = data.base.samples
        neutral, neutral_views = subject.neutral_views()
        seq_i, t = subject.neutral
        root, number = subject.sequences[seq_i].root, subject.offsets[seq_i] + t
        mine = [i for i, s in enumerate(samples) if s.identity == identity]
        at_neutral = [i for i in mine if samples[i].root == root and samples[i].local_frame == t]
        frame_file = data.frame_files[at_neutral[0]] if at_neutral else None
        if frame_file is None:
            raise ValueError(f"subject {subject.name!r}: its neutral frame {t} of {root} is not in the {split} split "
                             "(thinned by max_val_samples?); enroll a test subject")
        cams = subject.identity_cameras[:views]
        inputs_base = RealHeadDataset([Sample(neutral_views[:views], neutral.flame, identity, number, root, t)],
                                      self.hparams.downsample, data.base.background, data.base.stored_background,
                                      None, self.image_size)
        inputs = ConditionedViews(inputs_base, [frame_file], data.identity_files, str(views))[0]
        keep = [i for i in mine if not (i in at_neutral and samples[i].views[0].camera in cams)]
        if not keep:
            raise ValueError(f"subject {subject.name!r}: no {split} image besides the enrollment inputs to evaluate on")
        evaluation = _NeutralFirst(Subset(ConditionedViews(data.base, data.frame_files, data.identity_files,
                                                           str(views)), keep), number)
        return FewShotSplit(identity=identity, inputs={k: v[None] for k, v in inputs.items()},
                            evaluation=evaluation, input_cameras=cams)

    # -- loaders ----------------------------------------------------------------------------------
    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if "val" in self.datasets else []  # no val_subjects: none


class _NeutralFirst(Dataset):
    """Items with ``frame`` renumbered: the neutral frame ``neutral`` becomes 0, every other ``frame + 1``."""

    def __init__(self, base: Dataset, neutral: int) -> None:
        self.base, self.neutral = base, neutral

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = self.base[index]
        frame = int(item["frame"])
        return {**item, "frame": torch.tensor(0 if frame == self.neutral else frame + 1)}


class _MapBuilder:
    """Computes the maps of one frame (expression offsets, mouth features) or one subject (identity)."""

    def __init__(self, hp, size: tuple[int, int]) -> None:
        self.head = load_head_model(hp.head_model, n_shape=hp.n_shape, n_expr=hp.n_expr)
        self.raster = self.head.uv_raster(hp.uv_size)
        self.mouth = region_mask(self.head, self.raster, "mouth")
        self.region = region_mask(self.head, self.raster, hp.mouth_region)
        vit = None
        if hp.mouth_features == "dino":
            from avatar_lightning.models.vit import load_dino_vit

            vit = load_dino_vit(hp.mouth_dino_weights).eval()
        self.features = feature_extractor(hp.mouth_features, vit)
        self.factor, self.size = hp.downsample, size
        self.background = torch.tensor(hp.background, dtype=torch.float32)

    def _project(self, views: list[View], flame: FlameParams, features=None) -> Tensor:
        """Back-project ``views`` (their RGB, or ``features`` of it) through the frame's tracked mesh."""
        pixels = [load_view_pixels(v, self.factor, self.background, torch.ones(3), self.size) for v in views]
        images = torch.stack([p.image for p in pixels])
        return backproject_features(self.head, self.raster, images if features is None else features(images),
                                    torch.stack([p.mask for p in pixels]), torch.stack([p.K for p in pixels]),
                                    torch.stack([v.world_to_cam for v in views]), flame.shape, flame.expr,
                                    flame.pose, flame.translation)

    @torch.no_grad()
    def frame(self, frontal: View, flame: FlameParams) -> dict[str, Tensor]:
        mouth = self._project([frontal], flame, self.features) * self.region
        offset = expr_offset_map(self.head, self.raster, flame.expr[None], flame.pose[2][None])[0]
        return {"uv_expr_offset": offset.half(), "uv_mouth": mouth.half()}

    @torch.no_grad()
    def identity(self, views: list[View], flame: FlameParams) -> dict[str, Tensor]:
        """``views``: frontal first, then the two side cameras, all of the neutral frame."""
        return {f"uv_identity_{n}": (self._project(views[:n], flame) * (1 - self.mouth)).half() for n in (1, 3)}
