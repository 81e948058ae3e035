"""EMAEarlyStopping: why a run ended (stop_kind), and non-finite losses (../shared/bugs/ema_nan_loss.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from callbacks import EMAEarlyStopping
from tests.dummy import DummyData, DummyRegression


class Diverging(DummyRegression):
    """A loss that turns ``bad`` (NaN or inf) from optimiser step ``at`` on."""

    def __init__(self, at: int = 10, bad: float = float("nan"), **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.at, self.bad = at, bad

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        if self.global_step >= self.at:
            loss = loss * self.bad
        self.log("train/loss", loss)
        return loss


def _fit(module, cb: EMAEarlyStopping, tmp_path: Path, max_steps: int = 500) -> Trainer:
    trainer = Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                      default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(module, DummyData(n=64, batch_size=4))
    return trainer


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_at_its_step_with_finite_weights(tmp_path: Path, bad: float) -> None:
    cb = EMAEarlyStopping(monitor="train/loss", decay=0.9, warmup_steps=5, patience=30, min_delta=1e-3)
    module = Diverging(at=10, bad=bad)
    _fit(module, cb, tmp_path)
    assert cb.stopped_step == 10  # the step whose loss was not finite (bugs/ema_nan_loss.py's right value)
    assert cb.stop_kind == "non_finite" and "not finite" in cb.reason
    assert torch.isfinite(module.layer.weight).all() and torch.isfinite(module.layer.bias).all()
    assert cb.ema is not None and torch.isfinite(torch.tensor(cb.ema))  # the EMA never read the NaN


def test_plateau_and_budget_are_told_apart(tmp_path: Path) -> None:
    plateau = EMAEarlyStopping(monitor="train/loss", decay=0.5, warmup_steps=5, patience=5, min_delta=0.5)
    _fit(DummyRegression(lr=0.0), plateau, tmp_path)
    assert plateau.stop_kind == "plateau" and "plateaued" in plateau.reason

    class Framed(DummyRegression):  # speaks avatar_lightning.lit.stopping.EarlyStoppable
        n_input_frames = 3
        min_steps_before_stopping = 0

    budget = EMAEarlyStopping(monitor="train/loss", decay=0.9, warmup_steps=1000, patience=5,
                              max_steps_per_frame=4)
    trainer = _fit(Framed(), budget, tmp_path)
    assert budget.stop_kind == "budget" and budget.stopped_step == trainer.global_step == 12


def test_cap_by_the_trainer_leaves_no_stop_kind(tmp_path: Path) -> None:
    cb = EMAEarlyStopping(monitor="train/loss", decay=0.9, warmup_steps=1000)
    trainer = _fit(DummyRegression(), cb, tmp_path, max_steps=7)
    assert trainer.global_step == 7 and cb.stop_kind is None and cb.stopped_step is None


def test_stop_kind_round_trips_and_old_state_loads() -> None:
    cb = EMAEarlyStopping()
    cb.stop_kind, cb.reason = "plateau", "EMA plateaued"
    other = EMAEarlyStopping()
    other.load_state_dict(cb.state_dict())
    assert (other.stop_kind, other.reason) == ("plateau", "EMA plateaued")
    old = {"ema": 1.0, "best": 1.0, "best_step": 3, "stopped_step": None}  # written before stop_kind existed
    other.load_state_dict(old)
    assert other.stop_kind is None and other.best_step == 3


def test_gradient_accumulation_feeds_one_value_per_optimiser_step(tmp_path: Path) -> None:
    fed: list[int] = []

    class Recording(EMAEarlyStopping):
        def update(self, value: float, step: int, min_steps: int = 0) -> bool:
            fed.append(step)
            return super().update(value, step, min_steps)

    cb = Recording(monitor="train/loss", warmup_steps=1000)
    trainer = Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                      default_root_dir=tmp_path, limit_val_batches=0, accumulate_grad_batches=4)
    trainer.fit(DummyRegression(), DummyData(n=64, batch_size=2))
    assert fed == [1, 2, 3, 4, 5]  # once per optimiser step, not 20 times


def test_no_avatar_is_exported_after_a_non_finite_loss(tmp_path: Path) -> None:
    from avatar_lightning.lit.avatar_common import FewShotAvatar

    class Exporting(Diverging, FewShotAvatar):  # a few-shot avatar whose loss diverges at step 3
        def __init__(self) -> None:
            super().__init__(at=3)
            self.save_hyperparameters({"output_dir": str(tmp_path / "avatar")})

        def on_train_batch_start(self, batch, batch_idx):  # its batches are (x, y), not schema samples
            pass

        def write_outputs(self, out_dir):  # what a real module writes; must not be reached
            (tmp_path / "avatar").mkdir()

    cb = EMAEarlyStopping(monitor="train/loss", warmup_steps=1)
    trainer = Trainer(max_steps=50, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                      default_root_dir=tmp_path, limit_val_batches=0)
    with pytest.raises(RuntimeError, match="not exporting an avatar.*not finite"):
        trainer.fit(Exporting(), DummyData(n=64, batch_size=4))
    assert not (tmp_path / "avatar").exists()


def test_non_finite_stop_alone_ends_any_run_at_the_bad_step(tmp_path: Path) -> None:
    from callbacks import NonFiniteStop

    cb = NonFiniteStop()
    module = Diverging(at=4, bad=float("inf"))
    trainer = _fit(module, cb, tmp_path)
    assert cb.stop_kind == "non_finite" and cb.stopped_step == 4 and trainer.global_step <= 5
    assert torch.isfinite(module.layer.weight).all()
