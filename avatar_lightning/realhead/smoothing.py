"""Temporal smoothing of tracked parameters for driving (paper §IV-C2; REALHEAD.md "Driving").

Monocular trackers (VHAP, SMIRK, metrical-tracker) jitter from frame to frame; the jitter goes
straight into the expression offsets, the pose and the mouth back-projection. Two filters, both over
the frame axis T of ``expr [T, E]``, ``pose [T, 5, 3]`` (axis-angle, filtered per component: fine
for the small frame-to-frame rotations of a talking head, not across a ±π wrap) and
``translation [T, 3]``:

- a centred moving average (offline, zero lag; the window shrinks at the ends);
- the one-euro filter (Casiez et al., CHI 2012): a first-order low-pass whose cut-off rises with the
  speed of the signal — little lag on fast motion, strong smoothing at rest; causal, so it also
  works online.

:class:`SmoothedSequence` serves a tracked sequence (any schema dataset) with smoothed parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor
from torch.utils.data import Dataset

SMOOTHING = ("none", "moving_average", "one_euro")
#: the tracked parameters that are smoothed (shape is constant per subject; cameras are not touched)
TRACKED = ("expr", "pose", "translation")


def moving_average(x: Tensor, window: int) -> Tensor:
    """Centred moving average over the first axis; near the ends, the mean of the frames that exist.

    Args:
        x: Tensor  # [T, ...]
        window: odd number of frames (1: no smoothing).

    Returns:
        Tensor  # [T, ...]

    Raises:
        ValueError: ``window`` is not a positive odd number.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"moving_average: window must be a positive odd number of frames, got {window}")
    half = window // 2
    csum = torch.cat([x.new_zeros(1, *x.shape[1:]), x.cumsum(0)])  # [T + 1, ...]
    t = torch.arange(x.shape[0], device=x.device)
    lo, hi = (t - half).clamp_min(0), (t + half + 1).clamp_max(x.shape[0])
    count = (hi - lo).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return (csum[hi] - csum[lo]) / count


def _alpha(cutoff: Tensor | float, rate: float) -> Tensor | float:
    """Smoothing factor of a first-order low-pass at ``cutoff`` Hz sampled at ``rate`` Hz."""
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau * rate)


class OneEuroFilter:
    """The one-euro filter (Casiez, Roussel, Vogel, CHI 2012), elementwise over any tensor shape.

    Args:
        rate: frames per second of the sequence (Hz).
        min_cutoff: cut-off at rest (Hz); lower is smoother.
        beta: how fast the cut-off grows with speed (per unit of the signal per second); 0 is a plain low-pass.
        d_cutoff: cut-off of the speed estimate (Hz).
    """

    def __init__(self, rate: float = 25.0, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        if rate <= 0 or min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(f"OneEuroFilter: need rate, min_cutoff, d_cutoff > 0 and beta >= 0, got {rate}, "
                             f"{min_cutoff}, {d_cutoff}, {beta}")
        self.rate, self.min_cutoff, self.beta, self.d_cutoff = rate, min_cutoff, beta, d_cutoff
        self.x: Tensor | None = None
        self.dx: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        """Filter the next sample ``x [...]`` (the first one passes unchanged)."""
        if self.x is None:
            self.x, self.dx = x.clone(), torch.zeros_like(x)
            return x.clone()
        a_d = _alpha(self.d_cutoff, self.rate)
        self.dx = a_d * (x - self.x) * self.rate + (1 - a_d) * self.dx
        a = _alpha(self.min_cutoff + self.beta * self.dx.abs(), self.rate)
        self.x = a * x + (1 - a) * self.x
        return self.x.clone()


def one_euro(x: Tensor, rate: float = 25.0, min_cutoff: float = 1.0, beta: float = 0.0) -> Tensor:
    """:class:`OneEuroFilter` run over the first axis of ``x [T, ...]`` → ``[T, ...]``."""
    f = OneEuroFilter(rate, min_cutoff, beta)
    return torch.stack([f(frame) for frame in x])


def smooth_tracks(tracks: Mapping[str, Tensor], method: str = "none", window: int = 5, rate: float = 25.0,
                  min_cutoff: float = 1.0, beta: float = 0.0) -> dict[str, Tensor]:
    """Smooth the :data:`TRACKED` parameters of a sequence.

    Args:
        tracks: ``expr [T, E]``, ``pose [T, 5, 3]``, ``translation [T, 3]`` (others are returned as given).
        method: one of :data:`SMOOTHING`.
        window: moving-average window (odd, frames).
        rate: frames per second (one-euro).
        min_cutoff: one-euro cut-off at rest (Hz).
        beta: one-euro speed coefficient.

    Returns:
        The same keys, smoothed.

    Raises:
        ValueError: an unknown method.
    """
    if method not in SMOOTHING:
        raise ValueError(f"smoothing must be one of {SMOOTHING}, got {method!r}")
    out = dict(tracks)
    for key in TRACKED:
        if key in tracks and method == "moving_average":
            out[key] = moving_average(tracks[key], window)
        elif key in tracks and method == "one_euro":
            out[key] = one_euro(tracks[key], rate, min_cutoff, beta)
    return out


class SmoothedSequence(Dataset):
    """A tracked sequence (schema samples, in frame order) served with smoothed parameters.

    Args:
        base: the sequence; every item has ``expr``, ``pose``, ``translation``.
        tracks: the sequence's tracked parameters ``[T, ...]``, when they can be read without loading
            the frames; None reads them from ``base`` once.
        method, window, rate, min_cutoff, beta: see :func:`smooth_tracks`.
    """

    def __init__(self, base: Dataset, tracks: Mapping[str, Tensor] | None = None, method: str = "none",
                 window: int = 5, rate: float = 25.0, min_cutoff: float = 1.0, beta: float = 0.0) -> None:
        self.base = base
        if tracks is None and method != "none":
            items = [base[i] for i in range(len(base))]
            tracks = {k: torch.stack([item[k] for item in items]) for k in TRACKED}
        self.tracks = None if method == "none" else smooth_tracks(tracks, method, window, rate, min_cutoff, beta)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = dict(self.base[index])
        if self.tracks is not None:
            item.update({k: self.tracks[k][index].to(item[k]) for k in TRACKED})
        return item
