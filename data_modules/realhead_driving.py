"""The tracked sequence that drives an enrolled 3DRealHead avatar under ``lightning predict`` (paper §IV-C2).

By default the sequence is the enrolled subject's own: the avatar checkpoint records the subject's
dataset and identity (``RealHeadEnrollment.subject_record``), and a dataset that offers
``driving_sequence(identity)`` (:class:`data_modules.realhead.RealHeadSyntheticDataModule`: every
expression of the subject seen by the frontal camera) serves it. Any other tracked data works
through ``source`` (``{class_path, init_args}``) and ``split``: e.g. ``data_modules.insta.INSTADataModule``'s
test split (metrical-tracker parameters; the avatar's prior must use the same head model).
Tracking jitter can be smoothed (:mod:`avatar_lightning.realhead.smoothing`).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import instantiate_class
from torch.utils.data import DataLoader, Dataset, Subset

from avatar_lightning.lit.checkpoint import refuse_other_shape
from avatar_lightning.realhead.drive import require_tracking
from avatar_lightning.realhead.enrollment import read_avatar_checkpoint
from avatar_lightning.realhead.smoothing import SMOOTHING, TRACKED, SmoothedSequence

SPLITS = ("train", "val", "test")


class RealHeadDrivingDataModule(LightningDataModule):
    """One tracked sequence, in frame order, for ``RealHeadDriver.predict_step``.

    Args:
        avatar_checkpoint: the enrolled avatar whose subject and dataset are the default sequence (None:
            the ``avatar_checkpoint`` of the module being run, read at ``setup``).
        source: ``{class_path, init_args}`` of the DataModule holding the sequence (None: the avatar's
            recorded subject dataset).
        identity: the subject (None: the avatar's enrolled subject, else the source's default).
        split: with a source that has no ``driving_sequence``, the split whose frames drive (in order).
        max_frames: drive only the first frames (None: all).
        smoothing: ``none``, ``moving_average`` or ``one_euro`` over expression, pose and translation.
        smoothing_window: moving-average window (odd, frames).
        fps: frame rate of the sequence (the one-euro filter's sampling rate).
        min_cutoff: one-euro cut-off at rest (Hz).
        beta: one-euro speed coefficient.
        batch_size: frames per predict step.
        num_workers: DataLoader workers.
    """

    def __init__(self, avatar_checkpoint: str | None = None, source: dict[str, Any] | None = None,
                 identity: int | None = None, split: str = "test", max_frames: int | None = None,
                 smoothing: str = "none", smoothing_window: int = 5, fps: float = 25.0, min_cutoff: float = 1.0,
                 beta: float = 0.0, batch_size: int = 1, num_workers: int = 0) -> None:
        super().__init__()
        if smoothing not in SMOOTHING:
            raise ValueError(f"RealHeadDrivingDataModule.smoothing must be one of {SMOOTHING}, got {smoothing!r}")
        if split not in SPLITS:
            raise ValueError(f"RealHeadDrivingDataModule.split must be one of {SPLITS}, got {split!r}")
        self.save_hyperparameters()
        self.sequence: Dataset | None = None

    def _avatar_path(self) -> str | None:
        """``avatar_checkpoint``, else the running module's (None: neither)."""
        path = self.hparams.avatar_checkpoint
        if path is None and self.trainer is not None and self.trainer.lightning_module is not None:
            path = self.trainer.lightning_module.hparams.get("avatar_checkpoint")
        return None if path is None else str(path)

    def _source(self) -> tuple[LightningDataModule, int | None]:
        """The sequence's DataModule and subject; checks its head model against the avatar's prior.

        Raises:
            ValueError: neither a source nor an avatar that records one; a head-model mismatch (naming
                the field).
            FileNotFoundError: naming a missing avatar checkpoint.
        """
        hp = self.hparams
        path = self._avatar_path()
        avatar = read_avatar_checkpoint(path) if path is not None else {}
        record = avatar.get("enrollment") or {}
        config = hp.source or record.get("dataset")
        if not config:
            raise ValueError(f"RealHeadDrivingDataModule: give source={{class_path, init_args}} (the avatar "
                             f"{path} records no subject dataset)")
        prior = (avatar.get("hyper_parameters") or {}).get("prior_hparams") or {}
        data = config.get("init_args") or {}
        refuse_other_shape("RealHeadDrivingDataModule (the sequence's data vs the avatar's prior)", prior, data,
                           [k for k in ("head_model", "n_shape", "n_expr") if k in data])
        identity = hp.identity if hp.identity is not None else (record.get("identity") if hp.source is None else None)
        return instantiate_class((), config), identity

    def setup(self, stage: str | None = None) -> None:
        if self.sequence is not None:
            return
        hp = self.hparams
        source, identity = self._source()
        source.prepare_data()
        source.setup("predict")
        if hasattr(source, "driving_sequence"):
            base = source.driving_sequence(identity)
            tracks = _synthetic_tracks(source, identity) if hasattr(source, "tracking_params") else None
        else:
            base, tracks = getattr(source, f"{hp.split}_dataloader")().dataset, None
        if len(base) == 0:
            raise ValueError("RealHeadDrivingDataModule: the driving sequence has no frames")
        require_tracking(base[0], "RealHeadDrivingDataModule")
        if hp.max_frames is not None:
            base = Subset(base, range(min(hp.max_frames, len(base))))
            tracks = None if tracks is None else {k: v[:hp.max_frames] for k, v in tracks.items()}
        self.sequence = SmoothedSequence(base, tracks, hp.smoothing, hp.smoothing_window, hp.fps, hp.min_cutoff,
                                         hp.beta)

    def predict_dataloader(self) -> DataLoader:
        self.setup("predict")
        return DataLoader(self.sequence, batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers)


def _synthetic_tracks(source: Any, identity: int | None) -> dict[str, Any]:
    """Tracked parameters ``[T, ...]`` of a synthetic subject, read without loading its frames."""
    identity = source.split_identities()["test"][0] if identity is None else identity
    params = source.tracking_params(identity)
    return {k: torch.stack([p[k] for p in params]) for k in TRACKED}
