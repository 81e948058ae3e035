"""Early stopping on an exponential moving average of a logged loss (SynShot §3.3).

The inversion optimises for a number of steps proportional to the number of input frames, with a
warm-up, then stops once the EMA of the loss stops improving. The trainer stops — the module has
no loop of its own — and the callback's state is checkpointed, so a resumed run continues the
same EMA.

A non-finite loss (NaN / inf) stops the run at the step that produced it, before the optimiser
applies its gradients (they are dropped), with ``stop_kind = "non_finite"``: the EMA must not read
a divergence as a plateau (the fault kind of Lightning's ``EarlyStopping(check_finite=True)``).
Under gradient accumulation the EMA advances once per optimiser step (the loss of the micro-batch
that completed it), not once per micro-batch. Why a run ended is kept in ``stop_kind``
(``"plateau"``, ``"budget"``, ``"non_finite"`` or ``None`` while running / when the trainer's own
``max_steps`` ended it) and ``reason`` (a sentence).

What it reads from the module, and what it records for it, is the contract of
:mod:`avatar_lightning.lit.stopping` (:class:`EarlyStoppable`, :class:`StopRecord`).
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from avatar_lightning.lit.stopping import EarlyStoppable
from callbacks.non_finite_stop import NonFiniteStop


class EMAEarlyStopping(NonFiniteStop):
    """Stop training when the EMA of ``monitor`` has not improved for ``patience`` steps.

    Args:
        monitor: key in ``trainer.callback_metrics`` logged every training step (e.g. ``train/loss``).
        decay: EMA decay per step; the EMA is ``decay * ema + (1 - decay) * value``.
        warmup_steps: no stopping before this many optimiser steps (the EMA still updates). An
            :class:`~avatar_lightning.lit.stopping.EarlyStoppable` module may ask for a longer
            warm-up (``min_steps_before_stopping``; the inversion does: its stage 1 must end and
            stage 2 warm up first); the larger one applies.
        patience: steps without an improvement larger than ``min_delta`` before stopping.
        min_delta: relative improvement of the EMA that counts (0.001 = 0.1 %).
        max_steps_per_frame: if > 0, also stop after ``max_steps_per_frame × n_frames`` steps, where
            ``n_frames`` is an :class:`~avatar_lightning.lit.stopping.EarlyStoppable` module's
            ``n_input_frames`` (its DataModule's count; SynShot: ×10); other modules have no budget.
    """

    def __init__(
        self,
        monitor: str = "train/loss",
        decay: float = 0.9,
        warmup_steps: int = 50,
        patience: int = 30,
        min_delta: float = 1e-3,
        max_steps_per_frame: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMAEarlyStopping.decay must be in [0, 1), got {decay}")
        self.monitor = monitor
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.patience = patience
        self.min_delta = min_delta
        self.max_steps_per_frame = max_steps_per_frame
        self.ema: float | None = None
        self.best = math.inf
        self.best_step = 0
        self._last_step: int | None = None  # the optimiser step last fed to the EMA

    def update(self, value: float, step: int, min_steps: int = 0) -> bool:
        """Feed one loss value at optimiser step ``step``; returns True when training should stop.

        ``min_steps`` extends the warm-up for this call (the module's ``min_steps_before_stopping``).
        """
        self.ema = value if self.ema is None else self.decay * self.ema + (1.0 - self.decay) * value
        if self.ema < self.best * (1.0 - self.min_delta):
            self.best, self.best_step = self.ema, step
        if step < max(self.warmup_steps, min_steps):
            return False
        if step - self.best_step >= self.patience:
            self.reason = f"EMA of {self.monitor} plateaued at {self.best:.5g} (best at step {self.best_step})"
            self.stop_kind = "plateau"
            return True
        return False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_step = trainer.global_step  # steps before this point (a resumed run's) were fed already

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"EMAEarlyStopping: '{self.monitor}' was not logged; logged keys: {sorted(trainer.callback_metrics)}"
            )
        step = trainer.global_step
        if step == self._last_step and self.stop_kind != "non_finite":
            return  # a micro-batch of gradient accumulation: no optimiser step happened, nothing to decide
        self._last_step = step
        stop = self.stop_kind == "non_finite"
        if not stop and not math.isfinite(float(value)):
            self._non_finite(trainer, self.monitor, float(value), step - 1)  # logged before the step counted
            stop = True
        stoppable = isinstance(pl_module, EarlyStoppable)
        if not stop:
            stop = self.update(float(value), step, int(pl_module.min_steps_before_stopping) if stoppable else 0)
        n_frames = int(pl_module.n_input_frames) if stoppable else 0
        if not stop and self.max_steps_per_frame > 0 and n_frames > 0 and step >= self.max_steps_per_frame * n_frames:
            stop, self.reason = True, f"step budget {self.max_steps_per_frame} x {n_frames} frames reached"
            self.stop_kind = "budget"
        # Under DDP every rank sees the same loss only if it was logged with sync_dist, so the
        # decision is reduced on every step, by every rank (a collective called only by the ranks
        # that want to stop would hang the others); a single-device strategy returns it unchanged.
        stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
        if stop:
            trainer.should_stop = True
            if self.stop_kind != "non_finite":  # a divergence keeps the step that produced it
                self.stopped_step = step
            pl_module.log("early_stop/step", float(step))

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "best": self.best, "best_step": self.best_step, "stopped_step": self.stopped_step,
                "stop_kind": self.stop_kind, "reason": self.reason}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.ema = state_dict["ema"]
        self.best = state_dict["best"]
        self.best_step = state_dict["best_step"]
        self.stopped_step = state_dict["stopped_step"]
        self.stop_kind = state_dict.get("stop_kind")  # absent in checkpoints written before it existed
        self.reason = state_dict.get("reason", "")
