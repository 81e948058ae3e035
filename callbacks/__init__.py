"""Lightning callbacks: image logging, EMA early stopping, export."""

from callbacks.ema_early_stopping import EMAEarlyStopping
from callbacks.image_logger import ImageLogger

__all__ = ["EMAEarlyStopping", "ImageLogger"]
