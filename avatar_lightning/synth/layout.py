"""On-disk layout of a generated synthetic dataset (shared by the generator and the DataModule).

::

    <root>/manifest.json                      generator config, its hash, counts, content hash
    <root>/cameras.json                       the fixed rig (K, world_to_cam, frontal flags)
    <root>/identities/i00000/appearance.json  sampled appearance (colours, hair style, light)
    <root>/identities/i00000/texture.png      UV texture
    <root>/identities/i00000/hair.pt          bound hair/beard proxy (HairProxy.to_dict())
    <root>/identities/i00000/e000/params.pt   shape, expr, pose, translation, background
    <root>/identities/i00000/e000/rgb/c00.png  image per camera
    <root>/identities/i00000/e000/mask/c00.png foreground mask (rendered alpha) per camera
    <root>/identities/i00000/e000/done.json   written last: sha256 of every file of the sample

A sample directory counts as finished only once its ``done.json`` exists, so an interrupted run
re-renders exactly the unfinished samples.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
CAMERAS = "cameras.json"
FORMAT = "avatar-lightning-synth"
FORMAT_VERSION = 1


def identity_dir(root: Path, identity: int) -> Path:
    """Folder of one identity."""
    return Path(root) / "identities" / f"i{identity:05d}"


def sample_dir(root: Path, identity: int, expression: int) -> Path:
    """Folder of one (identity, expression) sample."""
    return identity_dir(root, identity) / f"e{expression:03d}"


def image_path(root: Path, identity: int, expression: int, camera: int, kind: str = "rgb") -> Path:
    """PNG of one camera view; ``kind`` is ``"rgb"`` or ``"mask"``."""
    return sample_dir(root, identity, expression) / kind / f"c{camera:02d}.png"
