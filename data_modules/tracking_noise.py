"""Simulated tracking error: perturb the head-model parameters a method receives, not its targets.

Real trackers (VHAP, metrical-tracker, our own landmark fit) are noisy; synthetic data hands every
method the exact parameters the images were rendered with, which flatters mesh-bound methods. With
:class:`TrackingNoise` the few-shot split gives the methods perturbed ``shape`` / ``expr`` / ``pose`` /
``translation`` — and the UV inputs derived from them, recomputed the way a tracker's output would
be used (texture back-projected with the perturbed mesh) — while the images they are fitted to and
scored against stay those rendered from the true parameters.

Noise model (a stated size, zero-mean Gaussian, seeded per identity and sample so every method sees
the same perturbation):

- ``shape``: σ in units of the identity coefficients (the built-in head and FLAME store them in
  standard deviations of the shape space), one draw per subject — a tracker estimates one shape;
- ``expr``: σ in expression-coefficient units, one draw per frame;
- ``pose``: σ in radians on every axis-angle joint (global, neck, jaw, eyes), one draw per frame;
- ``translation``: σ in metres, one draw per frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset


@dataclass(frozen=True)
class TrackingNoise:
    """Standard deviations of the simulated tracking error (see the module docstring for units)."""

    shape: float = 0.0
    expr: float = 0.0
    pose: float = 0.0
    translation: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, value: TrackingNoise | dict[str, Any] | None) -> TrackingNoise | None:
        """From a config dict (``{"shape": 0.3, "pose": 0.02}``); None or all-zero σ gives None.

        Raises:
            ValueError: an unknown key or a negative σ (naming it).
        """
        if value is None or isinstance(value, TrackingNoise):
            noise = value
        else:
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"tracking_noise: unknown keys {sorted(unknown)}; expected "
                                 f"{sorted(cls.__dataclass_fields__)}")
            noise = cls(**value)
        if noise is None:
            return None
        for key, sigma in asdict(noise).items():
            if key != "seed" and sigma < 0:
                raise ValueError(f"tracking_noise.{key} must be ≥ 0, got {sigma}")
        return noise if any(v > 0 for k, v in asdict(noise).items() if k != "seed") else None

    def _generator(self, *keys: int) -> torch.Generator:
        seed = self.seed
        for k in keys:
            seed = (seed * 1_000_003 + int(k) + 1) % (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    def subject_shape(self, shape: Tensor, identity: int) -> Tensor:
        """``shape`` [..., S] plus the subject's one shape error."""
        if self.shape <= 0:
            return shape
        g = self._generator(identity, -1)
        return shape + self.shape * torch.randn(shape.shape[-1], generator=g).to(shape)

    def frame(self, sample: dict[str, Tensor], identity: int, frame: int) -> dict[str, Tensor]:
        """``sample`` with its per-frame parameters (``expr``, ``pose``, ``translation``) perturbed and
        the subject's shape error applied; other keys untouched (a new dict)."""
        g = self._generator(identity, frame)
        out = dict(sample)
        out["shape"] = self.subject_shape(sample["shape"], identity)
        for key, sigma in (("expr", self.expr), ("pose", self.pose), ("translation", self.translation)):
            noise = torch.randn(sample[key].shape, generator=g)  # drawn always: one stream layout
            if sigma > 0:
                out[key] = sample[key] + sigma * noise.to(sample[key])
        return out


class NoisyTracking(Dataset):
    """Wraps a dataset of schema samples (no batch dim) so that its parameters carry tracking error.

    Args:
        base: the dataset (e.g. a few-shot split's ``evaluation``).
        noise: the error model.
        derive_uv: ``sample -> {uv key: map}`` recomputing the UV inputs from the (perturbed)
            parameters, or None when the samples carry no UV inputs.
    """

    def __init__(self, base: Dataset, noise: TrackingNoise, derive_uv: Any | None = None) -> None:
        self.base, self.noise, self.derive_uv = base, noise, derive_uv

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = self.base[index]
        noisy = self.noise.frame(sample, int(sample["identity"]), int(sample["frame"]))
        if self.derive_uv is not None:
            noisy.update(self.derive_uv(noisy))
        return noisy
