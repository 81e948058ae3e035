"""Stop training at the first non-finite loss, before its gradients reach the weights.

The fault kind of Lightning's ``EarlyStopping(check_finite=True)`` and of early-stopping-pytorch#16:
a NaN / inf loss must end the run *at that step*, with a reason that says so, and must not be read
later as a plateau or exported as a model. Used alone in the prior configs, and as the base of
:class:`callbacks.EMAEarlyStopping` (inversion, baseline).
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class NonFiniteStop(Callback):
    """Stops the trainer at the first step whose training loss is NaN or inf.

    The gradients of that loss are dropped (``p.grad = None``, which Adam and SGD skip), so the
    weights stay those of the last finite step. Attributes after a stop: ``stop_kind ==
    "non_finite"``, ``stopped_step`` (the optimiser step that produced the loss) and ``reason``.
    Under DDP, every rank stops when any rank saw a non-finite loss.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stopped_step: int | None = None
        self.reason = ""
        self.stop_kind: str | None = None
        self._drop_gradients = False

    def _non_finite(self, trainer: Trainer, name: str, value: float, step: int) -> None:
        """Stop now: ``name`` was ``value`` (not finite) at optimiser step ``step``."""
        self.reason = f"{name} is not finite ({value}) at step {step}: training diverged"
        self.stop_kind, self.stopped_step = "non_finite", step
        trainer.should_stop = True

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Any) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            self._non_finite(trainer, "the training loss", value, trainer.global_step)
            self._drop_gradients = True

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if self._drop_gradients:  # a non-finite loss's gradients must not reach the weights
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop = bool(trainer.strategy.reduce_boolean_decision(self.stop_kind == "non_finite", all=False))
        if stop:
            trainer.should_stop = True
