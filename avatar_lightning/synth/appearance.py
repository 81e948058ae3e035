"""Sampling a synthetic identity's appearance: skin, lips, brows, irises, hair, beard, lighting.

SynShot §3.4 combines random 3DMM shapes with randomly assigned face textures, hairstyles and
beards. We have no scanned textures or strand assets, so appearance is procedural: colours are
drawn from palettes spanning the human range (skin from very light to very dark, natural hair and
iris colours), hair is a style label turned into a Gaussian proxy over the scalp (``hair.py``),
and — unlike the paper's single environment map (its stated limitation) — each identity gets its
own simple light. Everything is a plain dataclass so it is stored as JSON next to the images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

#: sRGB skin tones from very light to very dark; a tone is a random point on this polyline.
SKIN_TONES = np.array([
    [0.97, 0.85, 0.76], [0.93, 0.76, 0.64], [0.87, 0.67, 0.53], [0.78, 0.57, 0.42],
    [0.65, 0.45, 0.32], [0.50, 0.33, 0.23], [0.36, 0.23, 0.16], [0.25, 0.16, 0.11],
])
#: Natural hair colours and their sampling weights.
HAIR_COLOURS = {
    "black": ([0.05, 0.04, 0.04], 0.25), "dark_brown": ([0.17, 0.10, 0.06], 0.22),
    "brown": ([0.33, 0.21, 0.12], 0.16), "auburn": ([0.45, 0.20, 0.10], 0.07),
    "red": ([0.62, 0.28, 0.12], 0.05), "blonde": ([0.76, 0.60, 0.36], 0.10),
    "platinum": ([0.88, 0.84, 0.72], 0.04), "grey": ([0.55, 0.55, 0.55], 0.07), "white": ([0.86, 0.86, 0.84], 0.04),
}
#: Iris colours and their sampling weights (brown dominates the world population).
IRIS_COLOURS = {
    "dark_brown": ([0.18, 0.10, 0.05], 0.45), "brown": ([0.38, 0.23, 0.11], 0.2),
    "hazel": ([0.45, 0.37, 0.18], 0.1), "green": ([0.28, 0.42, 0.26], 0.08),
    "blue": ([0.30, 0.45, 0.65], 0.12), "grey": ([0.50, 0.54, 0.57], 0.05),
}
#: Hair-proxy styles (see ``hair.py``) and their sampling weights.
HAIR_STYLES = {"bald": 0.08, "buzz": 0.14, "short": 0.3, "long": 0.26, "bun": 0.11, "afro": 0.11}
#: Beard styles and their sampling weights ("none" for most identities).
BEARD_STYLES = {"none": 0.6, "stubble": 0.18, "full": 0.15, "goatee": 0.07}
#: Shared by every identity, as in SynShot ("all our synthetic subjects share the same teeth").
TEETH_RGB = (0.93, 0.90, 0.82)
SCLERA_RGB = (0.86, 0.83, 0.79)


@dataclass
class Lighting:
    """One directional light plus ambient, baked into Gaussian colours (view-independent).

    Attributes:
        direction: unit vector from the head towards the light (world frame).
        colour: RGB intensity of the directional light.
        ambient: RGB ambient intensity.
    """

    direction: list[float]
    colour: list[float]
    ambient: list[float]


@dataclass
class Appearance:
    """Everything that defines how one synthetic identity looks (besides its 3DMM shape).

    Attributes:
        skin: base skin RGB in [0, 1].
        skin_blotch: amplitude of low-frequency skin-tone variation.
        lips: lip RGB.
        brows: eyebrow RGB.
        brow_thickness: eyebrow band half-height in head units (metres).
        iris: iris RGB.
        hair_style: key of :data:`HAIR_STYLES`.
        hair: hair RGB.
        hair_length: length of long styles in metres (below the scalp).
        hair_volume: thickness of the hair shell in metres.
        beard: key of :data:`BEARD_STYLES`.
        lighting: the identity's light.
        seed: seed for the procedural noise of this identity.
    """

    skin: list[float]
    skin_blotch: float
    lips: list[float]
    brows: list[float]
    brow_thickness: float
    iris: list[float]
    hair_style: str
    hair: list[float]
    hair_length: float
    hair_volume: float
    beard: str
    lighting: Lighting
    seed: int
    teeth: list[float] = field(default_factory=lambda: list(TEETH_RGB))

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Appearance:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "lighting": Lighting(**d["lighting"])})


def _choice(rng: np.random.Generator, table: dict) -> str:
    keys = list(table)
    weights = np.array([v[1] if isinstance(v, tuple) else v for v in table.values()], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=weights / weights.sum()))]


def _jitter(rng: np.random.Generator, rgb, amount: float) -> list[float]:
    return np.clip(np.asarray(rgb) * (1 + rng.normal(0, amount, 3)), 0.0, 1.0).round(4).tolist()


def sample_skin(rng: np.random.Generator) -> list[float]:
    """A skin tone: a uniform point along :data:`SKIN_TONES` plus a small hue jitter."""
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = min(int(t), len(SKIN_TONES) - 2)
    rgb = SKIN_TONES[i] * (1 - (t - i)) + SKIN_TONES[i + 1] * (t - i)
    return _jitter(rng, rgb, 0.03)


def sample_lighting(rng: np.random.Generator) -> Lighting:
    """A key light from the front/upper hemisphere with a warm or cool tint, plus ambient."""
    az, el = rng.uniform(-70, 70), rng.uniform(-10, 60)
    az, el = np.radians(az), np.radians(el)
    direction = [np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)]
    tint = np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.08, 0.08) * np.array([1.0, 0.0, -1.0])
    key = rng.uniform(0.45, 0.75)
    ambient = rng.uniform(0.4, 0.6)
    return Lighting(direction=np.round(direction, 4).tolist(), colour=np.round(key * tint, 4).tolist(),
                    ambient=np.round(ambient * np.ones(3), 4).tolist())


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draw one identity's appearance.

    Args:
        rng: the identity's random generator (seeded from the dataset seed and identity index).
    """
    skin = sample_skin(rng)
    hair_name = _choice(rng, HAIR_COLOURS)
    hair = _jitter(rng, HAIR_COLOURS[hair_name][0], 0.08)
    # Brows follow the hair colour but stay darker for light hair (as they usually are).
    brows = (np.minimum(np.asarray(hair), 0.45) * rng.uniform(0.6, 0.9)).round(4).tolist()
    lips = _jitter(rng, np.asarray(skin) * np.array([0.9, 0.68, 0.68]) + np.array([0.03, 0.0, 0.01]), 0.04)
    return Appearance(
        skin=skin, skin_blotch=float(rng.uniform(0.02, 0.07)), lips=lips, brows=brows,
        brow_thickness=float(rng.uniform(0.003, 0.0055)),
        iris=_jitter(rng, IRIS_COLOURS[_choice(rng, IRIS_COLOURS)][0], 0.08),
        hair_style=_choice(rng, HAIR_STYLES), hair=hair, hair_length=float(rng.uniform(0.08, 0.2)),
        hair_volume=float(rng.uniform(0.008, 0.02)), beard=_choice(rng, BEARD_STYLES),
        lighting=sample_lighting(rng), seed=int(rng.integers(0, 2**31 - 1)),
    )


def sample_background(rng: np.random.Generator) -> list[float]:
    """A plain studio-like background colour (greys and muted tints), distinct from pure black."""
    grey = rng.uniform(0.15, 0.9)
    return np.clip(grey + rng.normal(0, 0.08, 3), 0.05, 0.95).round(4).tolist()
