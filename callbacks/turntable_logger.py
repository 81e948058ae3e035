"""A 360° turntable of one validation identity every N validation runs, in TensorBoard (and as MP4 files).

A LightningModule that supports it implements::

    def turntable(self, batch, frames: int) -> Tensor   # [frames, 3, H, W] in [0, 1]

(``SynShotPrior.turntable`` orbits the first sample of the batch at its expression and pose). This
callback calls it on the first validation batch, writes the frames to every TensorBoard logger as a
video (``add_video``, which needs ``moviepy``) or, without moviepy, as one tiled image, and with
``save_dir`` also writes ``<save_dir>/turntable_<step>.mp4`` atomically.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from avatar_lightning.viz import make_grid


def _has_moviepy_editor() -> bool:
    """TensorBoard's ``add_video`` imports ``moviepy.editor`` (moviepy 1.x; 2.x removed it)."""
    try:
        return importlib.util.find_spec("moviepy.editor") is not None
    except ModuleNotFoundError:
        return False


class TurntableLogger(Callback):
    """Log ``pl_module.turntable(batch, frames)`` of the first validation sample.

    Args:
        every_n_validations: log on every this many validation runs, counting from the first (one run
            per epoch, or per ``val_check_interval`` steps; the sanity check does not count).
        frames: frames of the orbit.
        fps: frame rate of the video.
        save_dir: if set, also write ``<save_dir>/turntable_<step>.mp4``.
    """

    def __init__(self, every_n_validations: int = 2, frames: int = 24, fps: float = 12.0,
                 save_dir: str | None = None) -> None:
        super().__init__()
        if every_n_validations < 1 or frames < 1:
            raise ValueError(f"TurntableLogger: every_n_validations and frames must be ≥ 1, "
                             f"got {every_n_validations}, {frames}")
        self.every_n_validations, self.frames, self.fps, self.save_dir = every_n_validations, frames, fps, save_dir
        # Validation runs seen; checkpointed, so a resumed run does not start counting from 0 (it may
        # be one behind: ModelCheckpoint can save just before the validation of the same step).
        self.validations = 0
        self.logged: list[int] = []  # global steps at which a turntable was logged
        self._video = _has_moviepy_editor()
        if not self._video:
            rank_zero_info("TurntableLogger: moviepy is not installed; turntables go to TensorBoard as tiled images.")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "turntable", None)):
            raise AttributeError(f"TurntableLogger: {type(pl_module).__name__} has no turntable(batch, frames) method")

    @rank_zero_only
    def _log(self, trainer: Trainer, pl_module: LightningModule, batch: Any) -> None:
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            frames = pl_module.turntable(batch, frames=self.frames).float().cpu()
        pl_module.train(was_training)
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"TurntableLogger: turntable() must return [frames, 3, H, W], got {list(frames.shape)}")
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                if self._video:
                    logger.experiment.add_video("val/turntable", frames[None], global_step=step, fps=self.fps)
                else:
                    logger.experiment.add_image("val/turntable", make_grid(frames), global_step=step)
        if self.save_dir:
            from avatar_lightning.export import write_video

            write_video(Path(self.save_dir) / f"turntable_{step:07d}.mp4", frames, fps=self.fps)
        self.logged.append(step)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking:
            if self.validations % self.every_n_validations == 0:
                self._log(trainer, pl_module, batch)
            self.validations += 1

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))
