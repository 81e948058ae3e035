"""The generator configuration, its manifest, and the rule that a cache built otherwise is never reused."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatar_lightning.fingerprint import head_model_digest
from avatar_lightning.io import config_hash, write_json
from avatar_lightning.synth.layout import FORMAT, FORMAT_VERSION, MANIFEST

#: Bumped whenever the generator's output for a given config changes (keys every cache).
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything that decides the content of a synthetic dataset (not how fast it is made).

    Paper scale (SynShot §3.4): ≈2,000 identities, 28 cameras (14 frontal + 14 upper hemisphere),
    768×512 images. The defaults are the CPU quick-start set.

    Attributes:
        identities: number of identities.
        expressions: expressions per identity; expression 0 is always neutral.
        height: image height H.
        width: image width W.
        cameras: number of rig cameras C (half frontal, half upper hemisphere).
        seed: master seed; every identity/sample derives its own seed from it.
        head_model: ``"builtin"`` or the path of a FLAME pickle.
        n_shape: identity coefficients sampled (S).
        n_expr: expression coefficients sampled (E).
        texture_size: side of the square UV texture.
        surface_points: surface Gaussians per avatar; 0 = chosen from the image size.
        hair_density: multiplies the number of hair-proxy points; 0 = chosen from the image size.
    """

    identities: int = 64
    expressions: int = 4
    height: int = 128
    width: int = 128
    cameras: int = 28
    seed: int = 0
    head_model: str = "builtin"
    n_shape: int = 20
    n_expr: int = 15
    texture_size: int = 256
    surface_points: int = 0
    hair_density: float = 0.0

    def __post_init__(self) -> None:
        for name in ("identities", "expressions", "height", "width", "cameras", "n_shape", "n_expr", "texture_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"GeneratorConfig.{name} must be >= 1, got {getattr(self, name)}")

    def resolved(self) -> GeneratorConfig:
        """Replace the 0 = auto fields by the values the image size calls for.

        Enough surface discs to cover the head at pixel scale: the head spans ~55% of the image
        height, and each pixel it covers should see a couple of discs.
        """
        pixels = self.height * self.width
        surface = self.surface_points or int(min(max(0.8 * pixels, 8000), 250_000))
        density = self.hair_density or float(min(max((pixels / 128**2) ** 0.5, 0.5), 6.0))
        return dataclasses.replace(self, surface_points=surface, hair_density=density)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, including the generator version (so a code change invalidates old caches) and
        the head model file's content (so a FLAME file replaced at the same path does too).

        Raises:
            FileNotFoundError: naming ``head_model`` when it is a path to no file.
        """
        return {**dataclasses.asdict(self.resolved()), "generator_version": GENERATOR_VERSION,
                "head_model_digest": head_model_digest(self.head_model)}

    def hash(self) -> str:
        """Stable hash of :meth:`to_dict`; the DataModule keys its dataset folder by it."""
        return config_hash(self.to_dict())


class ConfigMismatchError(RuntimeError):
    """A dataset folder was built with a different generator config."""


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest of ``root`` or ``None`` if there is none.

    Raises:
        ValueError: naming the file when it is not a synthetic-dataset manifest.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a synthetic dataset manifest (format={data.get('format')!r}, "
                         f"expected {FORMAT!r})")
    return data


def check_or_write_manifest(root: Path, config: GeneratorConfig) -> dict[str, Any]:
    """Start (or continue) a dataset in ``root``: write a fresh manifest or verify the existing one.

    Raises:
        ConfigMismatchError: ``root`` holds a dataset made with another config; the message lists
            the fields that differ.
    """
    existing = read_manifest(root)
    want = config.to_dict()
    if existing is not None:
        have = existing.get("config", {})
        if existing.get("config_hash") != config.hash() or have != want:
            diff = {k: (have.get(k), want.get(k)) for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)}
            raise ConfigMismatchError(
                f"{Path(root) / MANIFEST} was generated with another config (differences, existing -> requested: "
                f"{diff}). Use another --out folder or delete this one; it is never silently reused.")
        return existing
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": want, "config_hash": config.hash(),
                "complete": False, "content_hash": None, "source": "SynShot §3.4-style procedural heads"}
    write_json(Path(root) / MANIFEST, manifest)
    return manifest
