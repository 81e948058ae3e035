"""EMA early stopping and the generic image logger."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from avatar_lightning.viz import COLOURS, error_map, line_plot, make_grid
from callbacks import EMAEarlyStopping, ImageLogger, TurntableLogger
from tests.dummy import DummyData, DummyRegression


def test_ema_does_not_stop_during_warmup() -> None:
    cb = EMAEarlyStopping(decay=0.5, warmup_steps=100, patience=5)
    assert not any(cb.update(1.0, step) for step in range(100))
    assert cb.update(1.0, 100)  # flat since step 0, warm-up over -> stop


def test_ema_keeps_going_while_improving_and_stops_on_plateau() -> None:
    cb = EMAEarlyStopping(decay=0.5, warmup_steps=10, patience=20, min_delta=1e-3)
    losses = [1.0 / (1 + s) for s in range(60)] + [1.0 / 61] * 200
    stopped = next(s for s, v in enumerate(losses) if cb.update(v, s))
    assert stopped > 60, "stopped while the loss was still falling"
    # The EMA converges to the plateau within a few dozen steps; patience then runs out.
    assert stopped < 60 + 20 + 40


def test_ema_noise_does_not_reset_patience() -> None:
    g = torch.Generator().manual_seed(0)
    cb = EMAEarlyStopping(decay=0.9, warmup_steps=0, patience=50, min_delta=0.01)
    noise = (torch.rand(2000, generator=g) * 0.02 + 1.0).tolist()
    stopped = next((s for s, v in enumerate(noise) if cb.update(v, s)), None)
    # Noise within ±1 % never counts as a 1 % improvement once the EMA has settled: the run stops
    # exactly `patience` steps after the last real improvement, not earlier, and not never.
    assert stopped is not None and stopped < 300
    assert stopped - cb.best_step == 50 and cb.stop_kind == "plateau"
    assert 1.0 <= cb.best <= 1.02  # an EMA of values in [1, 1.02]


def test_ema_module_can_extend_the_warmup(tmp_path: Path) -> None:
    class Patient(DummyRegression):  # speaks avatar_lightning.lit.stopping.EarlyStoppable
        n_input_frames = 0
        min_steps_before_stopping = 12

    cb = EMAEarlyStopping(monitor="train/loss", decay=0.5, warmup_steps=0, patience=0, min_delta=10.0)
    trainer = Trainer(max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, callbacks=[cb], default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(Patient(), DummyData(n=64, batch_size=2))
    # min_delta=10 means nothing ever counts as an improvement: the first step allowed to stop does
    assert cb.stopped_step == 12 and trainer.global_step == 12 and cb.warmup_steps == 0


def test_ema_state_round_trips() -> None:
    cb = EMAEarlyStopping()
    for s in range(10):
        cb.update(1.0 - 0.01 * s, s)
    other = EMAEarlyStopping()
    other.load_state_dict(cb.state_dict())
    assert other.ema == cb.ema and other.best == cb.best and other.best_step == cb.best_step


def test_ema_stops_a_real_trainer(tmp_path: Path) -> None:
    cb = EMAEarlyStopping(monitor="train/loss", decay=0.5, warmup_steps=5, patience=5, min_delta=0.5)
    trainer = Trainer(max_epochs=100, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, callbacks=[cb], default_root_dir=tmp_path)
    trainer.fit(DummyRegression(lr=0.0), DummyData(n=8, batch_size=1))  # lr 0: a perfect plateau
    assert cb.stopped_step is not None
    assert trainer.global_step == cb.stopped_step < 100 * 8  # global_step counts finished steps
    assert cb.stopped_step >= 5


def test_ema_missing_metric_is_named(tmp_path: Path) -> None:
    cb = EMAEarlyStopping(monitor="train/nope")
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, callbacks=[cb], default_root_dir=tmp_path)
    with pytest.raises(KeyError, match="train/nope"):
        trainer.fit(DummyRegression(), DummyData())


def test_make_grid_layout() -> None:
    imgs = torch.zeros(5, 3, 4, 6)
    imgs[4] = 1.0
    grid = make_grid(imgs, ncol=3, pad=1, pad_value=0.5)
    assert grid.shape == (3, 2 * 5 + 1, 3 * 7 + 1)
    assert grid[:, 6:10, 8:14].eq(1.0).all()  # 5th image: row 1, column 1
    assert grid[:, 0, :].eq(0.5).all()


def test_line_plot_draws_each_series_where_its_data_is() -> None:
    import numpy as np

    img = np.asarray(line_plot({"up": [(0, 0.0), (10, 1.0)], "flat": [(0, 0.0), (10, 0.0)]}, size=(200, 150)))
    assert img.shape == (150, 200, 3)
    up = (img == COLOURS[0]).all(-1)
    flat = (img == COLOURS[1]).all(-1)
    ys, xs = np.nonzero(up[:, :100])  # left half of the plot (legend sits top right)
    assert ys.min() > 75, "the rising line starts low"
    ys, xs = np.nonzero(up[:, 150:185])  # right of the legend swatches (x 100–114)
    assert ys.min() < 75, "and ends high"
    ys, _ = np.nonzero(flat[:, :100])
    assert ys.size and np.ptp(ys) <= 2, "the flat series is one horizontal line at the bottom"


def test_error_map_is_the_channel_mean_l1_on_a_black_red_yellow_ramp() -> None:
    target = torch.rand(2, 3, 1, 5)
    # per-pixel |pred - target| per channel; mean over channels 0, 0.05, 0.1, 0.1875, 0.5
    diff = torch.tensor([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.1, -0.2, 0.0], [0.0, 0.0, -0.5625], [0.5, 0.5, 0.5]])
    pred = target + diff.T.reshape(1, 3, 1, 5)
    rgb = error_map(pred, target, vmax=0.25)
    assert rgb.shape == (2, 3, 1, 5)
    e = torch.tensor([0.0, 0.2, 0.4, 0.75, 1.0])  # mean error / vmax, clamped to 1
    expected = torch.stack([(2 * e).clamp(max=1), (2 * e - 1).clamp(min=0), torch.zeros(5)]).reshape(3, 1, 5)
    torch.testing.assert_close(rgb, expected.expand(2, 3, 1, 5))
    torch.testing.assert_close(error_map(pred, target, vmax=0.5)[0, :, 0, 3], torch.tensor([0.75, 0.0, 0.0]))


class ImagingModule(DummyRegression):
    def log_images(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, _ = batch
        return {"ramp": x.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clamp(0, 1)}


def test_image_logger_writes_tensorboard_and_png(tmp_path: Path) -> None:
    cb = ImageLogger(every_n_epochs=1, every_n_steps=3, save_dir=str(tmp_path / "img"), columns={"ramp": 2})
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="tb"),
                      enable_checkpointing=False, enable_progress_bar=False, callbacks=[cb],
                      default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(ImagingModule(), DummyData(n=16, batch_size=4))
    assert [s for t, s in cb.logged if t == "train/ramp"] == [3, 6]  # 8 optimiser steps, every 3rd
    assert [s for t, s in cb.logged if t == "val/ramp"] == [4, 8]  # end of each epoch of 4 steps
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))
    pngs = sorted((tmp_path / "img" / "val").glob("ramp_*.png"))
    assert pngs
    from avatar_lightning.io import load_image

    assert load_image(pngs[0]).shape[-1] == 2 * (4 + 2) + 2  # 2 columns of 4-px tiles, 2-px padding


class BatchRecorder(DummyRegression):
    """Remembers at which optimiser step it was asked for images, and of which batch."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[int, float]] = []

    def log_images(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, _ = batch
        self.asked.append((self.global_step, x[0, 0].item()))
        return {"x": ((x.view(-1, 1, 1, 1) + 1) / 2).expand(-1, 3, 2, 2)}


@pytest.mark.parametrize("accumulate, every, max_steps", [(1, 2, 7), (4, 2, 8), (3, 3, 10)])
def test_image_logger_logs_once_per_optimiser_step(tmp_path: Path, accumulate: int, every: int,
                                                   max_steps: int) -> None:
    """Under gradient accumulation one optimiser step spans ``accumulate`` micro-batches: log once,
    on the micro-batch that completes a step that is a multiple of ``every`` (bugs/image_logger_accumulation.py)."""
    cb = ImageLogger(every_n_epochs=0, every_n_steps=every)
    module = BatchRecorder()
    trainer = Trainer(max_steps=max_steps, accumulate_grad_batches=accumulate, callbacks=[cb], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(module, DummyData(n=64, batch_size=2))  # one epoch of 32 micro-batches holds every step
    steps = list(range(every, max_steps + 1, every))
    assert trainer.global_step == max_steps
    assert cb.logged == [("train/x", s) for s in steps]
    xs = torch.linspace(-1, 1, 64)
    # the micro-batch that completes step s is number s * accumulate - 1, whose first x is xs[2 * that]
    assert module.asked == [(s, pytest.approx(xs[2 * (s * accumulate - 1)].item())) for s in steps]


def test_image_logger_requires_log_images(tmp_path: Path) -> None:
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, callbacks=[ImageLogger()], default_root_dir=tmp_path,
                      num_sanity_val_steps=0)
    with pytest.raises(AttributeError, match="log_images"):
        trainer.fit(DummyRegression(), DummyData())


class TurntableModule(DummyRegression):
    def turntable(self, batch: tuple[torch.Tensor, torch.Tensor], frames: int) -> torch.Tensor:
        assert not self.training, "turntables are rendered in eval mode"
        ramp = torch.linspace(0, 1, frames).view(frames, 1, 1, 1)
        return ramp.expand(frames, 3, 8, 6).clone()


def test_turntable_logger_every_n_validations_tensorboard_and_mp4(tmp_path: Path) -> None:
    from avatar_lightning.export import read_video

    cb = TurntableLogger(every_n_validations=2, frames=5, save_dir=str(tmp_path / "tt"))
    trainer = Trainer(max_epochs=5, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="tb"),
                      enable_checkpointing=False, enable_progress_bar=False, callbacks=[cb],
                      default_root_dir=tmp_path, num_sanity_val_steps=1, limit_train_batches=2)
    trainer.fit(TurntableModule(), DummyData(n=16, batch_size=4))
    assert len(cb.logged) == 3, cb.logged  # validations 0, 2, 4 (one per epoch); never the sanity check
    assert cb.state_dict() == {"validations": 5}
    videos = sorted((tmp_path / "tt").glob("turntable_*.mp4"))
    assert len(videos) == 3
    frames = read_video(videos[-1])
    assert frames.shape[0] == 5 and frames.shape[-2:] == (8, 6)
    assert frames[0].mean() < 0.1 and frames[-1].mean() > 0.9  # the orbit's frames, in order
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))


def test_turntable_logger_requires_turntable(tmp_path: Path) -> None:
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, callbacks=[TurntableLogger()], default_root_dir=tmp_path)
    with pytest.raises(AttributeError, match="turntable"):
        trainer.fit(DummyRegression(), DummyData())
