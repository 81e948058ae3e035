"""The early-stopping contract between a fit, its DataModule and ``callbacks.EMAEarlyStopping``.

SynShot §3.3 runs a few-shot fit for a number of steps that scales with its input images, with a
warm-up, and ends it at a plateau of the loss's moving average. Three parties take part, and each
reads the others only through the protocols below (``avatar_lightning`` never imports
``callbacks``; the callback imports this module):

- the **DataModule** says how many input images it serves (:class:`InputFrames`);
  :func:`input_frames` asks it (0 when it does not say: no step budget).
- the **module** (:class:`EarlyStoppable`) exposes that count and how long stopping must wait:
  the inversion's stage 1 and as long again of stage 2, the baseline's densification schedule.
- the **callback** (:class:`StopRecord`) records why the run ended; :func:`stop_reason` reads it
  for ``metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lightning.pytorch import Trainer


@runtime_checkable
class InputFrames(Protocol):
    """A DataModule serving a few input images (e.g. :class:`~avatar_lightning.lit.fewshot_data.FewShotDataModule`).

    Attributes:
        n_input_frames: distinct input images (views × distinct samples), however often the
            training loader repeats them: SynShot's "training frames".
    """

    @property
    def n_input_frames(self) -> int: ...


@runtime_checkable
class EarlyStoppable(Protocol):
    """What ``callbacks.EMAEarlyStopping`` reads from the module it may stop.

    Attributes:
        n_input_frames: the fit's input images (from its DataModule, :func:`input_frames`); the
            callback's step budget is ``max_steps_per_frame × n_input_frames`` (0: no budget).
        min_steps_before_stopping: no plateau stop before this optimiser step (the callback's own
            ``warmup_steps`` applies too; the larger one wins).
    """

    @property
    def n_input_frames(self) -> int: ...

    @property
    def min_steps_before_stopping(self) -> int: ...


@runtime_checkable
class StopRecord(Protocol):
    """What a stopping callback records about the end of a run.

    Attributes:
        stop_kind: ``"plateau"``, ``"budget"``, ``"non_finite"``, or None while running / when the
            trainer's own limits ended the run.
        reason: a sentence saying why.
    """

    stop_kind: str | None
    reason: str


@dataclass
class Stop:
    """Why a fit ended.

    Attributes:
        kind: :attr:`StopRecord.stop_kind` of the callback that stopped it, else ``"cap"`` (the
            trainer's ``max_steps``) or ``"other"`` (e.g. ``max_epochs``, an interrupt).
        reason: a sentence.
    """

    kind: str
    reason: str


def input_frames(trainer: Trainer) -> int:
    """The input images the trainer's DataModule serves (0 when it is not an :class:`InputFrames`)."""
    datamodule = trainer.datamodule
    return int(datamodule.n_input_frames) if isinstance(datamodule, InputFrames) else 0


def stop_reason(trainer: Trainer) -> Stop:
    """Why a fit ended: the first :class:`StopRecord` callback that stopped it, else the trainer's cap."""
    for cb in trainer.callbacks:
        if isinstance(cb, StopRecord) and cb.stop_kind:
            return Stop(str(cb.stop_kind), str(cb.reason))
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps:
        return Stop("cap", f"trainer.max_steps={max_steps} reached (the run did not stop on its own)")
    return Stop("other", "training ended without an early-stopping decision")
