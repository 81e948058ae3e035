"""A DataModule serving one subject's few-shot split: the inputs to fit, the held-out views to score.

By default the subject comes from the dataset the prior was trained on, as the prior's checkpoint
records it (:func:`avatar_lightning.lit.checkpoint.recorded_dataset`), and is one of the identities
that dataset held out from training: what an inversion scores is a head the prior never saw. An
explicit ``source`` (``{class_path, init_args}``) takes the subject from other data instead.

The source is any DataModule that speaks :class:`FewShotSource` — e.g.
``data_modules.synthetic.SyntheticDataModule``, whose default split is a held-out identity's 3
frontal-ish neutral views vs every other camera and expression. Training batches are the inputs
themselves (all views of the one sample every step). It duck-types its source through that
protocol, so ``avatar_lightning`` still never imports ``data_modules``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import instantiate_class
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from avatar_lightning.lit.checkpoint import find_prior_checkpoint, recorded_dataset


@dataclass
class FewShotSplit:
    """One subject for a few-shot fit: a few input views and the rest for evaluation.

    Attributes:
        identity: the subject's identity index in its dataset.
        inputs: one schema sample with V input views (batch dim B = 1), with ``uv_texture``
            back-projected from the input views only.
        evaluation: samples the inputs did not show (novel views and novel expressions).
        input_cameras: the input camera indices.
    """

    identity: int
    inputs: dict[str, Tensor]
    evaluation: Dataset
    input_cameras: list[int]


@runtime_checkable
class FewShotSource(Protocol):
    """A DataModule that can serve a subject's few-shot split (after ``setup``)."""

    def fewshot(self, identity: int | None = None, tracking_noise: dict[str, float] | None = None) -> FewShotSplit:
        """The split of ``identity`` (None: the dataset's first held-out identity)."""
        ...

    def split_identities(self) -> dict[str, list[int]]:
        """Identity indices per split (``"train"``, ``"val"``, ``"test"``)."""
        ...


def subject_source(source: dict[str, Any] | None, prior_checkpoint: str = "latest",
                   runs_dir: str = "runs", prior_kind: str = "synshot") -> dict[str, Any]:
    """The ``{class_path, init_args}`` of the subject's DataModule: ``source`` when given, else the
    dataset the prior was trained on (recorded in its checkpoint).

    ``"latest"`` takes the newest prior of ``prior_kind`` (``synshot`` | ``realhead``) under
    ``runs_dir`` however long it trained; the inversion refuses an under-trained one itself, so both
    never disagree silently.
    """
    if source is not None:
        if not isinstance(source, dict) or "class_path" not in source:
            raise ValueError(f"FewShotDataModule.source must be {{class_path, init_args}} or null, got {source!r}")
        return source
    return recorded_dataset(find_prior_checkpoint(prior_checkpoint, runs_dir, allow_untrained=True, kind=prior_kind))


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
        source: ``{"class_path": ..., "init_args": {...}}`` of a :class:`FewShotSource` to take the
            subject from (other data: another synthetic set, or your own once its DataModule speaks
            the protocol). None (the default): the dataset the prior was trained on, read from
            ``prior_checkpoint``. Built on first use, not here:
            LightningCLI hands the hyper-parameters of the module it is instantiating to every
            LightningDataModule created inside that ``__init__``, which would overwrite the source's own.
        identity: which subject (None: the source's default, its first held-out test identity). With
            the prior's dataset, an identity the prior trained on is refused.
        prior_checkpoint: the prior whose dataset is the default source: a ``.ckpt`` path or
            ``"latest"``. The CLI links the model's ``prior_checkpoint`` here.
        runs_dir: where ``"latest"`` looks (linked from the model likewise).
        steps_per_epoch: optimiser steps per epoch (each step sees every input view).
        eval_batch_size: held-out samples per validation batch.
        tracking_noise: simulated tracking error handed to ``source.fewshot(identity, tracking_noise=...)``
            (see ``data_modules.tracking_noise``), e.g. ``{"shape": 0.3, "expr": 0.3, "pose": 0.02}``;
            None: exact parameters.

    Class attributes:
        prior_kind: which prior ``prior_checkpoint: latest`` looks for (``synshot``; 3DRealHead
            enrollment's subclass: ``realhead``).
    """

    prior_kind: str = "synshot"

    def __init__(self, source: dict[str, Any] | None = None, identity: int | None = None,
                 prior_checkpoint: str = "latest", runs_dir: str = "runs", steps_per_epoch: int = 50,
                 eval_batch_size: int = 2, tracking_noise: dict[str, float] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._source: LightningDataModule | None = None
        self.split: FewShotSplit | None = None

    @property
    def source(self) -> LightningDataModule:
        """The subject's DataModule (built on first access)."""
        if self._source is None:
            hp = self.hparams
            config = subject_source(hp.source, hp.prior_checkpoint, hp.runs_dir, self.prior_kind)
            source = instantiate_class((), config)
            if not isinstance(source, FewShotSource):
                raise TypeError(f"FewShotDataModule.source {config['class_path']} has no fewshot(identity) / "
                                "split_identities() (avatar_lightning.lit.fewshot_data.FewShotSource)")
            self._source = source
        return self._source

    def prepare_data(self) -> None:
        self.source.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        hp, source = self.hparams, self.source
        source.setup(stage)
        splits = source.split_identities()
        if hp.source is None and hp.identity in splits["train"]:
            raise ValueError(f"FewShotDataModule: identity {hp.identity} is one the prior trained on (its scores would "
                             f"measure memorisation); pick a held-out one, e.g. {splits['test']}")
        noise = {"tracking_noise": hp.tracking_noise} if hp.tracking_noise else {}
        self.split = source.fewshot(hp.identity, **noise)

    @property
    def inputs(self) -> dict[str, Tensor]:
        """The few-shot input sample, ``B = 1``."""
        self.setup()
        return self.split.inputs

    @property
    def n_input_frames(self) -> int:
        """Distinct input images: the one input sample's views
        (:class:`~avatar_lightning.lit.stopping.InputFrames`)."""
        return int(self.inputs["image"].shape[1])

    def train_dataloader(self) -> DataLoader:
        sample = {k: v[0] for k, v in self.inputs.items()}
        return DataLoader(_Repeat(sample, self.hparams.steps_per_epoch), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.split.evaluation, batch_size=self.hparams.eval_batch_size)
