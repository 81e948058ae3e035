"""The one vocabulary every LightningModule of the project speaks (nerfstudio's, in Lightning's terms).

A module (SynShot prior, inversion, no-prior baseline, and the 3DRealHead modules) subclasses
:class:`AvatarModule` and implements::

    forward(batch) -> Outputs                             # a dataclass; ``outputs.render`` always
    compute_losses(batch, outputs) -> dict[str, Tensor]   # named terms and their weighted sum "loss"
    compute_metrics(batch, outputs) -> dict[str, Tensor]  # per-image head-region scores [B·V]
    log_images(batch) -> dict[str, Tensor]                # name -> [N, 3, H, W] for callbacks.ImageLogger

``compute_metrics`` and ``log_images`` have defaults (the shared head-region metrics of
:mod:`avatar_lightning.metrics.head_region` on ``outputs.render``; target | render | error rows).
The Lightning steps are thin and shared:

- ``training_step``: forward → compute_losses → log every term as ``train/<name>`` (plus what
  :meth:`AvatarModule.track_training_step` returns) → return ``"loss"``. Automatic optimisation is
  only this default: a module that optimises manually (a GAN) overrides ``training_step`` and
  keeps the rest of the vocabulary.
- ``validation_step`` / ``test_step``: forward → (``<stage>/<name>`` losses when
  :attr:`AvatarModule.log_eval_losses`) → compute_metrics, accumulated per metric group
  (:meth:`AvatarModule.metric_groups`) and logged at epoch end as ``<stage>/<score>`` for the group
  ``"all"``, ``<stage>/<group>/<score>`` for the others.

Checkpoints: the head model (possibly a user's licensed FLAME) is never written — ``head.*`` keys
are stripped and rebuilt on load; :meth:`AvatarModule.check_checkpoint` refuses weights written for
another shape; and the checkpoint records the DataModule it was fitted on under ``"dataset"``
(:func:`avatar_lightning.lit.checkpoint.dataset_config`), which the few-shot data of an inversion
reads to take a subject the prior never trained on, and its own class under ``"module_class"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from avatar_lightning.head.model import HeadModel
from avatar_lightning.lit.checkpoint import DATASET_KEY, dataset_config, refuse_other_shape
from avatar_lightning.metrics.head_region import MeanScores, shared_head_metrics
from avatar_lightning.render import RenderOutput
from avatar_lightning.viz import error_map

Batch = Mapping[str, Tensor]  # the schema of avatar_lightning.batch
#: Checkpoint key holding the module's import path (``package.module.Class``), e.g. for reports.
MODULE_KEY = "module_class"


@dataclass
class Outputs:
    """What every module's ``forward`` returns at least; a module's own outputs extend it.

    Attributes:
        render: the posed, rasterised Gaussians: rgb [B, V, 3, H, W], alpha and depth [B, V, 1, H, W].
    """

    render: RenderOutput


def view_rows(batch: Batch, outputs: Outputs) -> Tensor:
    """The first sample's views as rows target | render | error, ``[3V, 3, H, W]`` in [0, 1]."""
    target, pred = batch["image"][0], outputs.render.rgb[0].clamp(0, 1)
    return torch.stack([target, pred, error_map(pred, target)], dim=1).flatten(0, 1)


class AvatarModule(LightningModule):
    """Base of the project's LightningModules: the vocabulary and the shared steps (module docstring).

    Class attributes a subclass may set:
        score_groups: the metric groups it accumulates (``"all"``: every image).
        log_eval_losses: also log the loss terms at validation / test.
        SHAPING_HPARAMS: hyper-parameters that shape the module or its inputs; a checkpoint that
            records other values is refused (:meth:`check_checkpoint`).
    """

    score_groups: tuple[str, ...] = ("all",)
    log_eval_losses: bool = False
    SHAPING_HPARAMS: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.head: HeadModel | None = None  # set by the subclass (or when its prior is loaded)
        self.eval_scores = nn.ModuleDict({g: MeanScores() for g in self.score_groups})

    # ------------------------------------------------------------------------------ vocabulary
    def forward(self, batch: Batch) -> Outputs:
        """Everything one step computes for ``batch`` (at least its render)."""
        raise NotImplementedError

    def compute_losses(self, batch: Batch, outputs: Outputs) -> dict[str, Tensor]:
        """Every named loss term and ``"loss"``, the weighted sum that is optimised."""
        raise NotImplementedError

    def compute_metrics(self, batch: Batch, outputs: Outputs) -> dict[str, Tensor]:
        """Head-region ``psnr``, ``ssim``, ``lpips``, ``id``, ``psnr_full`` per image ``[B·V]``."""
        pred = outputs.render.rgb.flatten(0, 1).clamp(0, 1)
        return shared_head_metrics(pred.device)(pred, batch["image"].flatten(0, 1), batch["mask"].flatten(0, 1))

    @torch.no_grad()
    def log_images(self, batch: Batch) -> dict[str, Tensor]:
        """``views``: the first sample's views as rows target | render | error, ``[3V, 3, H, W]``."""
        sample = {k: v[:1] for k, v in batch.items()}
        return {"views": view_rows(sample, self(sample))}

    # ----------------------------------------------------------------------------------- hooks
    def metric_groups(self, batch: Batch) -> dict[str, Tensor]:
        """Which of the batch's ``B·V`` images count towards which of :attr:`score_groups` (bool masks)."""
        return {"all": torch.ones(batch["image"].shape[:2].numel(), dtype=torch.bool, device=batch["image"].device)}

    def track_training_step(self, batch: Batch, outputs: Outputs, losses: dict[str, Tensor]) -> dict[str, Any]:
        """Update running statistics of a training step; returns extra ``train/*`` scalars to log."""
        return {}

    # ------------------------------------------------------------------------------ Lightning
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        outputs = self(batch)
        losses = self.compute_losses(batch, outputs)
        logs = {f"train/{k}": v.detach() for k, v in losses.items()}
        logs.update(self.track_training_step(batch, outputs, losses))
        self.log_dict(logs, on_step=True, on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])
        return losses["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.evaluation_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.evaluation_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_scores("val")

    def on_test_epoch_end(self) -> None:
        self.log_scores("test")

    def evaluation_step(self, batch: Batch, stage: str) -> None:
        """Forward, (losses as ``<stage>/<name>``), and the batch's scores into their groups."""
        outputs = self(batch)
        if self.log_eval_losses:
            self.log_dict({f"{stage}/{k}": v for k, v in self.compute_losses(batch, outputs).items()},
                          on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])
        self.update_scores(batch, outputs)

    # ------------------------------------------------------------------------------- scores
    @torch.no_grad()
    def update_scores(self, batch: Batch, outputs: Outputs) -> None:
        """Add the batch's per-image scores to the groups each image belongs to."""
        scores = self.compute_metrics(batch, outputs)
        for group, keep in self.metric_groups(batch).items():
            if keep.any():
                self.eval_scores[group].update({k: v[keep] for k, v in scores.items()})

    def compute_scores(self, reset: bool = True) -> dict[str, dict[str, float]]:
        """``{group: {"psnr", "ssim", "lpips", "id", "psnr_full", "images"}}`` for the groups that saw
        images since the last reset (``images``: how many were scored)."""
        out: dict[str, dict[str, float]] = {}
        for group in self.score_groups:
            metric = self.eval_scores[group]
            if metric.update_count:
                values = {k: float(v) for k, v in metric.compute().items()}
                if values:
                    out[group] = {**values, "images": int(metric.counts[0])}
            if reset:
                metric.reset()
        return out

    def log_scores(self, stage: str) -> None:
        """Log and reset the accumulated scores: ``<stage>/<score>`` (group ``"all"``), else
        ``<stage>/<group>/<score>``; means over every rank's images."""
        for group, values in self.compute_scores().items():
            prefix = stage if group == "all" else f"{stage}/{group}"
            self.log_dict({f"{prefix}/{k}": float(v) for k, v in values.items()}, sync_dist=False)

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The head model is rebuilt from its path: a user's licensed FLAME must not end up in checkpoints.
        for key in [k for k in checkpoint["state_dict"] if k.startswith("head.")]:
            del checkpoint["state_dict"][key]
        checkpoint[MODULE_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"  # what to rebuild it as
        dataset = dataset_config(self.trainer.datamodule) if self._trainer is not None else None
        if dataset is not None:
            checkpoint[DATASET_KEY] = dataset

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint(checkpoint)
        if self.head is not None:
            checkpoint["state_dict"].update({f"head.{k}": v for k, v in self.head.state_dict().items()})

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint written for another shape (:attr:`SHAPING_HPARAMS`)."""
        refuse_other_shape(type(self).__name__, checkpoint.get("hyper_parameters") or {}, self.hparams,
                           self.SHAPING_HPARAMS)
