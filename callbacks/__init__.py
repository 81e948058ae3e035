"""Lightning callbacks: image and turntable logging, EMA early stopping."""

from callbacks.ema_early_stopping import EMAEarlyStopping
from callbacks.image_logger import ImageLogger
from callbacks.turntable_logger import TurntableLogger

__all__ = ["EMAEarlyStopping", "ImageLogger", "TurntableLogger"]
