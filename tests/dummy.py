"""Tiny modules and DataModules for tests (not part of the product)."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.data import DataLoader, Dataset, TensorDataset


class DummyRegression(LightningModule):
    """Fits y = 2x + 1 with one linear layer; records how many training steps ran.

    Args:
        lr: SGD learning rate.
    """

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(1, 1)
        self.steps_run = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.steps_run += 1
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class DummyData(LightningDataModule):
    """Noise-free samples of y = 2x + 1.

    Args:
        n: number of samples.
        batch_size: loader batch size.
    """

    def __init__(self, n: int = 32, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()

    def _loader(self) -> DataLoader:
        x = torch.linspace(-1, 1, self.hparams.n).unsqueeze(1)
        return DataLoader(TensorDataset(x, 2 * x + 1), batch_size=self.hparams.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


class FewInputs(LightningDataModule):
    """One few-shot input sample served ``repeat`` times per epoch, held-out samples for validation, and
    the count of its input images (``avatar_lightning.lit.stopping.InputFrames``), as
    ``FewShotDataModule`` serves a dataset's split.

    Args:
        inputs: one schema sample without the batch dim (``image`` [V, 3, H, W]).
        evaluation: held-out schema samples.
        repeat: training batches per epoch.
    """

    def __init__(self, inputs: dict[str, torch.Tensor], evaluation: Dataset | list = (), repeat: int = 3) -> None:
        super().__init__()
        self.inputs, self.evaluation, self.repeat = inputs, evaluation, repeat

    @property
    def n_input_frames(self) -> int:
        return int(self.inputs["image"].shape[0])

    def train_dataloader(self) -> DataLoader:
        return DataLoader([self.inputs] * self.repeat, batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.evaluation, batch_size=1)
