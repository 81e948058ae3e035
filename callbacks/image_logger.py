"""One generic image logger: the module says *what* to show (``log_images``), this says *when*.

A LightningModule that wants images in TensorBoard implements::

    def log_images(self, batch) -> dict[str, Tensor]   # name -> [N, 3, H, W] (or [3, H, W]) in [0, 1]

(the taming-transformers convention). This callback calls it on the first validation batch every
``every_n_epochs`` epochs and, optionally, on a training batch every ``every_n_steps`` optimiser
steps (once per step: under gradient accumulation a step spans several micro-batches), tiles
each entry with :func:`avatar_lightning.viz.make_grid` and writes it to every TensorBoard logger
(and, with ``save_dir``, as PNG files written atomically).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from avatar_lightning.io import save_image
from avatar_lightning.viz import make_grid


class ImageLogger(Callback):
    """Log ``pl_module.log_images(batch)`` grids to TensorBoard.

    Args:
        every_n_epochs: log on the first validation batch every this many epochs (0 = never).
        every_n_steps: also log on a training batch every this many optimiser steps (0 = never):
            on the micro-batch that completes the step, once, whatever ``accumulate_grad_batches``.
        max_images: at most this many images per entry.
        save_dir: if set, also write ``<save_dir>/<split>/<name>_<step>.png``.
        columns: images per grid row by entry name (e.g. ``{"views": 3}`` keeps target | render |
            error rows together); other entries get a square-ish grid.
    """

    def __init__(self, every_n_epochs: int = 1, every_n_steps: int = 0, max_images: int = 8,
                 save_dir: str | None = None, columns: dict[str, int] | None = None) -> None:
        super().__init__()
        self.columns = dict(columns or {})
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.max_images = max_images
        self.save_dir = save_dir
        self.logged: list[tuple[str, int]] = []  # (tag, step) pairs, for inspection and tests
        self._step_before_batch = 0

    @rank_zero_only
    def _log(self, trainer: Trainer, pl_module: LightningModule, batch: Any, split: str) -> None:
        if not hasattr(pl_module, "log_images"):
            raise AttributeError(f"ImageLogger: {type(pl_module).__name__} has no log_images(batch) method")
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            images = pl_module.log_images(batch)
        pl_module.train(was_training)
        step = trainer.global_step
        for name, value in images.items():
            value = value if value.ndim == 4 else value.unsqueeze(0)
            grid = make_grid(value[: self.max_images].float().cpu(), ncol=self.columns.get(name))
            tag = f"{split}/{name}"
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(tag, grid, global_step=step)
            if self.save_dir:
                save_image(Path(self.save_dir) / split / f"{name}_{step:07d}.png", grid)
            self.logged.append((tag, step))

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if (batch_idx == 0 and dataloader_idx == 0 and self.every_n_epochs > 0 and not trainer.sanity_checking
                and trainer.current_epoch % self.every_n_epochs == 0):
            self._log(trainer, pl_module, batch, "val")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # global_step counts optimiser steps; it stands still over the micro-batches of one step, so
        # `global_step % n == 0` alone would fire on each of them. Log when this batch's optimiser
        # step(s) crossed a multiple of n (one batch may step several optimisers).
        n = self.every_n_steps
        if n > 0 and trainer.global_step // n > self._step_before_batch // n:
            self._log(trainer, pl_module, batch, "train")
