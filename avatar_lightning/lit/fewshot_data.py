"""A DataModule serving one subject's few-shot split: the inputs to fit, the held-out views to score.

It wraps any DataModule that offers ``fewshot(identity) -> split`` with ``split.inputs`` (one schema
sample, B = 1, V input views, with the ``uv_*`` keys) and ``split.evaluation`` (a Dataset of schema
samples the inputs did not show) — e.g. ``data_modules.synthetic.SyntheticDataModule``, whose
default split is a held-out identity's 3 frontal-ish neutral views vs every other camera and
expression. Training batches are the inputs themselves (all views of the one sample every step).

It lives here rather than in ``data_modules/`` only because the inversion configs need it now; it
duck-types its source, so ``avatar_lightning`` still never imports ``data_modules``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import instantiate_class
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


class _Repeat(Dataset):
    """The same sample ``n`` times (one optimiser step per item)."""

    def __init__(self, sample: dict[str, Tensor], n: int) -> None:
        self.sample, self.n = sample, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.sample


class FewShotDataModule(LightningDataModule):
    """Few-shot inputs of one subject for training, its held-out samples for validation.

    Args:
        source: ``{"class_path": ..., "init_args": {...}}`` of a DataModule with a
            ``fewshot(identity)`` method (see the module docstring). It is built on first use,
            not here: LightningCLI hands the hyper-parameters of the module it is instantiating to
            every LightningDataModule created inside that ``__init__``, which would overwrite the
            source's own.
        identity: which subject (None: the source's default, e.g. its first test identity).
        steps_per_epoch: optimiser steps per epoch (each step sees every input view).
        eval_batch_size: held-out samples per validation batch.
        tracking_noise: simulated tracking error handed to ``source.fewshot(identity, tracking_noise=...)``
            (see ``data_modules.tracking_noise``), e.g. ``{"shape": 0.3, "expr": 0.3, "pose": 0.02}``;
            None: exact parameters.
    """

    def __init__(self, source: dict[str, Any], identity: int | None = None, steps_per_epoch: int = 50,
                 eval_batch_size: int = 2, tracking_noise: dict[str, float] | None = None) -> None:
        super().__init__()
        if not isinstance(source, dict) or "class_path" not in source:
            raise ValueError(f"FewShotDataModule.source must be {{class_path, init_args}}, got {source!r}")
        self.source_config, self.identity = source, identity
        self._source: LightningDataModule | None = None
        self.steps_per_epoch, self.eval_batch_size = steps_per_epoch, eval_batch_size
        self.tracking_noise = tracking_noise
        self.split: Any = None

    @property
    def source(self) -> LightningDataModule:
        """The wrapped DataModule (built on first access)."""
        if self._source is None:
            source = instantiate_class((), self.source_config)
            if not callable(getattr(source, "fewshot", None)):
                raise TypeError(f"FewShotDataModule.source {self.source_config['class_path']} has no fewshot(identity)")
            self._source = source
        return self._source

    def prepare_data(self) -> None:
        self.source.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.split is None:
            self.source.setup(stage)
            if self.tracking_noise:
                self.split = self.source.fewshot(self.identity, tracking_noise=self.tracking_noise)
            else:
                self.split = self.source.fewshot(self.identity)

    @property
    def inputs(self) -> dict[str, Tensor]:
        """The few-shot input sample, ``B = 1``."""
        self.setup()
        return self.split.inputs

    def train_dataloader(self) -> DataLoader:
        self.setup()
        sample = {k: v[0] for k, v in self.split.inputs.items()}
        return DataLoader(_Repeat(sample, self.steps_per_epoch), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.split.evaluation, batch_size=self.eval_batch_size)
