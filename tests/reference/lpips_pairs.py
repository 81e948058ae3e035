"""Deterministic image pairs for the LPIPS reference values (numpy only, so that the reference
script runs in a venv without torch and the test in one without jax).

``pairs()`` returns ``{name: (img0, img1)}`` of float32 ``[H, W, 3]`` images in [0, 1].
"""

from __future__ import annotations

import numpy as np


def _scene(size: int) -> np.ndarray:
    """A structured test image: colour ramps, a checkerboard, a disc and a soft ring."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    img = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * np.pi * x * y)], axis=-1)
    checker = ((np.floor(x * 8) + np.floor(y * 8)) % 2)[..., None]
    img = 0.7 * img + 0.3 * checker
    r = np.hypot(x - 0.55, y - 0.45)
    img[r < 0.2] = [0.9, 0.2, 0.1]
    img += 0.3 * np.exp(-((r - 0.3) ** 2) / 0.002)[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


def _blur(img: np.ndarray, k: int = 5) -> np.ndarray:
    pad = np.pad(img, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="edge")
    out = np.zeros_like(img)
    for dy in range(k):
        for dx in range(k):
            out += pad[dy:dy + img.shape[0], dx:dx + img.shape[1]]
    return out / (k * k)


def pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(20261130)
    a = _scene(64)
    b = _scene(96)
    noise = rng.random((64, 64, 3)).astype(np.float32)
    return {
        "noise_small": (a, np.clip(a + 0.05 * (noise - 0.5), 0, 1)),
        "noise_large": (a, np.clip(a + 0.5 * (noise - 0.5), 0, 1)),
        "blur": (b, _blur(b)),
        "shift": (b, np.roll(b, 3, axis=1)),
        "colour": (b, np.clip(b * np.array([1.2, 0.9, 0.8], np.float32), 0, 1)),
        "unrelated": (a, noise),
    }
