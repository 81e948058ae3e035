"""INSTA monocular sequences (512x512), optionally with their metrical-tracker checkpoints.

Layout of one actor, read exactly as INSTA's ``scripts/transforms.py`` writes it (``FORMATS.md``)::

    <actor>/transforms.json           w h cx cy fl_x fl_y camera_angle_x/y x_fov y_fov integer_depth_scale frames
    <actor>/images/<id>.png           RGBA (matted): alpha is the foreground mask
    <actor>/flame/exp/<id>.txt        the tracker's 100 expression coefficients, one per line
    <actor>/meshes/<id>.obj  depth/<id>.png (uint16 mm)  seg_mask/<id>.png

``transform_matrix`` is OpenCV camera-to-world (``inv([R|t])`` of the tracker's OpenCV camera).
The tracker's FLAME has no global rotation/translation (the head pose is in the camera), so those
are zero. The exp files hold no shape, jaw or eye pose: pass ``tracker_dir`` (the tracker's
``output/<actor>``) to read them from the ``.frame`` checkpoints, else they are zero (said in the log).
Split (SynShot / 3DRealHead protocol): the last ``n_test`` frames (600) test, the last ``n_val``
(20) of those validate, the rest train; ``n_test = 0`` trains on every frame (a single tracked photo,
a subject that is only inverted).

As an inversion subject (:meth:`INSTADataModule.fewshot`, the ``FewShotSource`` protocol of
``avatar_lightning.lit.fewshot_data``): the first ``fewshot_inputs`` frames are the inputs, the last
``fewshot_eval`` (default: the test frames) are held out (:mod:`data_modules.real_fewshot`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar_lightning.head.model import load_head_model
from avatar_lightning.lit.fewshot_data import FewShotSplit
from data_modules.few_shot import select_few_shot
from data_modules.insta_meshfit import cached_mesh_fit
from data_modules.metrical_tracker import frame_number, index_checkpoints, load_tracker_frame
from data_modules.real_common import (
    Convention,
    FlameParams,
    RealHeadDataModule,
    RealHeadDataset,
    Sample,
    View,
    data_path,
    intrinsics,
    read_json,
    require_keys,
)
from data_modules.real_fewshot import UVMaps, fewshot_frames, held_out_frames, input_sample
from data_modules.real_uv import build_uv_cache
from data_modules.tracking_noise import TrackingNoise

log = logging.getLogger(__name__)

TOP_KEYS = ("w", "h", "cx", "cy", "fl_x", "fl_y", "frames")
FRAME_KEYS = ("transform_matrix", "file_path", "exp_path")


def read_exp(path: Path, n_expr: int) -> Tensor:
    """Read an INSTA ``flame/exp/<id>.txt`` (one coefficient per line).

    Returns:
        Tensor  # [n_expr]
    """
    if not path.is_file():
        raise FileNotFoundError(f"FLAME expression file not found: {path}")
    try:
        values = np.array(path.read_text().split(), dtype=np.float32)
    except ValueError as err:
        raise ValueError(f"FLAME expression file {path} is not a list of numbers: {err}") from err
    if values.size < n_expr:
        raise ValueError(f"{path} holds {values.size} expression coefficients, the DataModule asks for {n_expr}")
    return torch.from_numpy(values[:n_expr])


def insta_world_to_cam(transform_matrix: list, where: str) -> Tensor:
    """OpenCV camera-to-world (INSTA) -> OpenCV world-to-camera: a plain inverse, no axis flip.

    Returns:
        Tensor  # [4, 4]
    """
    c2w = torch.tensor(transform_matrix, dtype=torch.float64)
    if c2w.shape != (4, 4):
        raise ValueError(f"{where}: transform_matrix must be 4x4, got {list(c2w.shape)}")
    return torch.linalg.inv(c2w).float()


class INSTASequence:
    """One parsed INSTA actor: views and FLAME parameters per frame, sorted by frame number.

    Args:
        root: the actor folder holding ``transforms.json``.
        n_shape: identity coefficients.
        n_expr: expression coefficients.
        tracker_dir: metrical-tracker output of this actor (``output/<actor>`` or its
            ``checkpoint`` folder); supplies shape, jaw and eye poses. None: those are zero.
        tracker_offset: image number minus checkpoint number (0 for INSTA's own export,
            1 for FlashAvatar's layout).
    """

    def __init__(self, root: str | Path, n_shape: int = 300, n_expr: int = 100, tracker_dir: str | None = None,
                 tracker_offset: int = 0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"INSTA root is not a folder: {self.root}")
        meta = read_json(self.root / "transforms.json", "INSTA transforms file")
        require_keys(meta, TOP_KEYS, str(self.root / "transforms.json"))
        if not meta["frames"]:
            raise ValueError(f"{self.root / 'transforms.json'} lists no frames")
        for i, frame in enumerate(meta["frames"]):
            require_keys(frame, FRAME_KEYS, f"{self.root / 'transforms.json'} frames[{i}] (as listed)")
        # INSTA's transforms.py gathers frames with imap_unordered: order them by number
        frames = sorted(meta["frames"], key=lambda f: frame_number(Path(f["file_path"]).stem))
        self.numbers: list[int] = []
        self.mesh_paths: list[Path | None] = []
        self.views: list[View] = []
        self.flame: list[FlameParams] = []
        K = intrinsics(meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"])
        size = (int(meta["h"]), int(meta["w"]))
        for frame in frames:
            where = f"{self.root / 'transforms.json'} frame {frame['file_path']}"
            self.numbers.append(frame_number(Path(frame["file_path"]).stem))
            self.mesh_paths.append(self.root / frame["mesh_path"] if "mesh_path" in frame else None)
            self.views.append(View(image_path=data_path(self.root, frame["file_path"]), mask_path=None, K=K,
                                   world_to_cam=insta_world_to_cam(frame["transform_matrix"], where), size=size))
            self.flame.append(FlameParams(shape=torch.zeros(n_shape), expr=read_exp(self.root / frame["exp_path"],
                                          n_expr), pose=torch.zeros(5, 3), translation=torch.zeros(3)))
        if len(set(self.numbers)) != len(self.numbers):
            raise ValueError(f"{self.root / 'transforms.json'} lists a frame number twice")
        self.source = "exp txt (shape, jaw, eyes zero)"
        if tracker_dir is not None:
            self._read_tracker(Path(tracker_dir), n_shape, n_expr, tracker_offset)

    def _read_tracker(self, folder: Path, n_shape: int, n_expr: int, offset: int) -> None:
        checkpoints = index_checkpoints(folder)
        missing = [n for n in self.numbers if n - offset not in checkpoints]
        if missing:
            raise ValueError(f"{folder}: {len(checkpoints)} checkpoints but {len(self.numbers)} frames; no checkpoint "
                             f"for image(s) {missing[:5]}{'...' if len(missing) > 5 else ''} (offset {offset}; "
                             f"mismatched frame counts)")
        for i, n in enumerate(self.numbers):
            tracked = load_tracker_frame(checkpoints[n - offset], n_shape, n_expr)
            gap = (tracked.world_to_cam - self.views[i].world_to_cam).abs().max()
            if gap > 1e-3:
                log.warning("%s: camera of frame %d differs from transforms.json by %.2g", folder, n, gap)
            self.flame[i] = tracked.flame
        self.source = f"metrical-tracker checkpoints in {folder}"

    def fit_meshes(self, head, head_model: str) -> None:
        """Replace the zero shape/jaw/eyes by a fit of the head to ``meshes/`` (see ``insta_meshfit``)."""
        if None in self.mesh_paths:
            raise KeyError(f"{self.root / 'transforms.json'}: fit_meshes needs mesh_path in every frame")
        expr = torch.stack([f.expr for f in self.flame])
        fit = cached_mesh_fit(self.root, head, head_model, self.mesh_paths, expr)
        for i, f in enumerate(self.flame):
            self.flame[i] = FlameParams(shape=fit.shape, expr=f.expr, pose=fit.pose[i], translation=f.translation)
        self.source = f"exp txt + head fitted to meshes (RMSE {fit.rmse:.1e} m)"


def split_frames(n: int, n_test: int, n_val: int) -> tuple[range, range, range]:
    """INSTA's split of ``n`` time-ordered frames: train, val (last ``n_val``), test (last ``n_test``).

    ``n_test = 0`` (with ``n_val = 0``) trains on every frame, e.g. a single photo.

    Raises:
        ValueError: ``n_test`` outside [0, n) or ``n_val`` outside [0, n_test].
    """
    if not 0 <= n_test < n:
        raise ValueError(f"n_test={n_test} must be in [0, {n}) for a sequence of {n} frames (0: no test frames, "
                         "e.g. a single photo)")
    if not 0 <= n_val <= n_test:
        raise ValueError(f"n_val={n_val} must be in [0, n_test={n_test}]")
    return range(n - n_test), range(n - n_val, n), range(n - n_test, n)


class INSTADataModule(RealHeadDataModule):
    """Monocular INSTA actors (V = 1), one identity per actor.

    Args:
        roots: INSTA actor folders.
        tracker_dirs: metrical-tracker outputs, one per root (None entries, or None for all: read
            expressions from ``flame/exp`` only).
        tracker_offset: image number minus checkpoint number (FlashAvatar's layout: 1).
        n_test: frames at the end of each sequence used for testing (SynShot / 3DRealHead: 600); 0:
            none (every frame trains; a single tracked photo).
        n_val: frames at the very end used for validation (INSTA: 20, a subset of the test frames;
            at most ``n_test``: fewer are used when ``n_test`` is smaller).
        few_shot: train on this many frames per actor, chosen by farthest-point sampling in
            expression space (SynShot: Fibonacci counts 1..987); None trains on all.
        downsample: integer image down-sampling factor; K is scaled to match.
        n_shape: FLAME identity coefficients.
        n_expr: FLAME expression coefficients.
        background: RGB colour the RGBA images are composited on.
        uv_size: side of the prior's UV input maps (``uv_*`` batch keys; the texture is each frame's
            own image back-projected); 0 leaves them out.
        head_model: ``"builtin"`` or the FLAME pickle the UV maps are built with (the model's head).
        fit_meshes: without tracker checkpoints, recover shape, jaw and eye poses by fitting
            ``head_model`` (the FLAME the data was tracked with) to ``meshes/``; cached beside the data.
        fewshot_inputs: K, input frames of :meth:`fewshot` (the first K of the sequence; a single
            photo has K = 1).
        fewshot_eval: held-out frames of :meth:`fewshot`, the last ones of the sequence; None: the
            ``n_test`` test frames.
        batch_size: loader batch size.
        num_workers: loader worker processes.
    """

    title = "INSTA"
    convention = Convention(expected="camera-to-world in the OpenCV convention (x right, y down, z forward), "
                                     "as INSTA's transforms.py writes it (inv([R|t]), no axis flip)",
                            other="OpenGL camera-to-world (x right, y up, z backward)")
    stored_white = False

    def __init__(self, roots: list[str], tracker_dirs: list[str | None] | None = None, tracker_offset: int = 0,
                 n_test: int = 600, n_val: int = 20, few_shot: int | None = None, downsample: int = 1,
                 n_shape: int = 300, n_expr: int = 100, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 uv_size: int = 0, head_model: str = "builtin", fit_meshes: bool = False, fewshot_inputs: int = 3,
                 fewshot_eval: int | None = None, batch_size: int = 1, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.sequences: list[INSTASequence] = []
        if tracker_dirs is not None and len(tracker_dirs) != len(roots):
            raise ValueError(f"tracker_dirs has {len(tracker_dirs)} entries but roots has {len(roots)}")

    def read_splits(self) -> tuple[dict[str, list[Sample]], str]:
        hp = self.hparams
        splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
        sources, self.sequences = [], []
        for i, root in enumerate(hp.roots):
            tracker = hp.tracker_dirs[i] if hp.tracker_dirs is not None else None
            seq = INSTASequence(root, hp.n_shape, hp.n_expr, tracker, hp.tracker_offset)
            if tracker is None and hp.fit_meshes:
                seq.fit_meshes(load_head_model(hp.head_model, n_shape=hp.n_shape, n_expr=hp.n_expr), hp.head_model)
            sources.append(seq.source)
            self.sequences.append(seq)
            for name, samples in self._sequence_samples(seq, identity=i).items():
                splits[name].extend(samples)
        return splits, "FLAME from " + "; ".join(sorted(set(sources)))

    def uv_files(self, samples: list[Sample], background: Tensor, stored: Tensor | None) -> list[Path] | None:
        hp = self.hparams
        if hp.uv_size <= 0:
            return None
        return build_uv_cache(samples, lambda s: s.views, hp.head_model, hp.uv_size, hp.n_shape, hp.n_expr, False,
                              hp.downsample, background, stored, self.image_size)

    def _sequence_samples(self, seq: INSTASequence, identity: int) -> dict[str, list[Sample]]:
        hp = self.hparams
        train, val, test = split_frames(len(seq.views), hp.n_test, min(hp.n_val, hp.n_test))
        expr = torch.stack([seq.flame[i].expr for i in train])
        shots = [train[j] for j in select_few_shot(expr, hp.few_shot, str(seq.root)).tolist()]
        return {"train": seq_samples(seq, shots, identity), "val": seq_samples(seq, val, identity),
                "test": seq_samples(seq, test, identity)}

    # -- few-shot subject (avatar_lightning.lit.fewshot_data.FewShotSource) ------------------------------
    def split_identities(self) -> dict[str, list[int]]:
        """Identity (actor) indices per split. INSTA splits each actor's frames in time, not actors:
        every actor is in every split (a prior trained on these actors has seen all of them)."""
        ids = list(range(len(self.hparams.roots)))
        return {"train": ids, "val": ids, "test": ids}

    def fewshot_positions(self, identity: int | None, inputs: int | list[int] | None
                          ) -> tuple[int, INSTASequence, list[int], list[int]]:
        """The few-shot subject's (identity, sequence, input positions, held-out positions).

        Args:
            identity: actor index (position in ``roots``); None: the first.
            inputs: K (the first K frames) or explicit positions; None: ``fewshot_inputs``.

        Raises:
            RuntimeError: before ``setup``.
            ValueError: ``identity`` out of range, or frames that do not fit the sequence
                (:func:`~data_modules.real_fewshot.fewshot_frames`).
        """
        hp = self.hparams
        name = type(self).__name__
        if not self.sequences or self.image_size is None:
            raise RuntimeError(f"{name}.fewshot: call setup() first")
        identity = 0 if identity is None else int(identity)
        if not 0 <= identity < len(self.sequences):
            raise ValueError(f"{name}.fewshot: identity {identity} is not one of the {len(self.sequences)} "
                             f"actor(s) in roots")
        seq = self.sequences[identity]
        n_eval = hp.n_test if hp.fewshot_eval is None else hp.fewshot_eval
        picks, held = fewshot_frames(len(seq.views), hp.fewshot_inputs if inputs is None else inputs, n_eval,
                                     str(seq.root))
        return identity, seq, picks, held

    def fewshot(self, identity: int | None = None, tracking_noise: TrackingNoise | dict | None = None,
                inputs: int | list[int] | None = None) -> FewShotSplit:
        """One actor as an inversion subject: K input frames, the held-out frames to score.

        Inputs are one sample whose V = K views are the input frames (their own cameras; their mean
        expression and jaw/eye pose, :mod:`data_modules.real_fewshot`), with ``uv_texture``
        back-projected from those frames only. Evaluation: the last ``fewshot_eval`` frames (default:
        the test frames), each with its own parameters, minus any input frame.

        Args:
            identity: actor index (position in ``roots``); None: the first.
            tracking_noise: extra simulated tracking error on the parameters (``TrackingNoise`` or its dict).
            inputs: K (the first K frames) or explicit frame positions (0-based, in time order);
                None: ``fewshot_inputs``.

        Returns:
            :class:`~avatar_lightning.lit.fewshot_data.FewShotSplit` (``input_cameras``: the input
            frames' positions, the cameras of a monocular sequence).

        Raises:
            RuntimeError: before ``setup``.
            ValueError: ``identity`` out of range, or frames that do not fit the sequence
                (:func:`~data_modules.real_fewshot.fewshot_frames`).
        """
        hp = self.hparams
        identity, seq, picks, held = self.fewshot_positions(identity, inputs)
        noise = TrackingNoise.parse(tracking_noise)
        maps = None
        if hp.uv_size > 0:
            maps = UVMaps(load_head_model(hp.head_model, n_shape=hp.n_shape, n_expr=hp.n_expr), hp.uv_size)
        bg = torch.tensor(hp.background, dtype=torch.float32)
        batch = input_sample(seq_samples(seq, picks, identity), hp.downsample, bg, self.image_size, maps, noise)
        base = RealHeadDataset(seq_samples(seq, held, identity), hp.downsample, bg, None, None, self.image_size)
        return FewShotSplit(identity=identity, inputs=batch, evaluation=held_out_frames(base, batch, maps, noise),
                            input_cameras=picks)


def seq_samples(seq: INSTASequence, indices: list[int] | range, identity: int) -> list[Sample]:
    """Samples of the frames at ``indices`` (positions in time order) of one sequence."""
    return [Sample(views=[seq.views[i]], flame=seq.flame[i], identity=identity, frame=seq.numbers[i], root=seq.root)
            for i in indices]
