"""Lightning callbacks: image and turntable logging, EMA early stopping, stopping on a non-finite loss."""

from callbacks.ema_early_stopping import EMAEarlyStopping
from callbacks.image_logger import ImageLogger
from callbacks.non_finite_stop import NonFiniteStop
from callbacks.turntable_logger import TurntableLogger

__all__ = ["EMAEarlyStopping", "ImageLogger", "NonFiniteStop", "TurntableLogger"]
