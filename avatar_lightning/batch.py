"""The batch schema every DataModule yields and every LightningModule reads — defined once.

A batch is a ``dict[str, Tensor]`` (so Lightning's default collate and device transfer work).
Dimension letters: B batch, V views per sample, H W image, h w UV map, S shape dims, E expression
dims. Each sample is one (identity, frame) seen from V cameras.

=================  ==================  =======  ==================================================
key                shape               dtype    meaning
=================  ==================  =======  ==================================================
``image``          [B, V, 3, H, W]     float    RGB in [0, 1], composited on ``background``
``mask``           [B, V, 1, H, W]     float    foreground (head + hair) in [0, 1]
``K``              [B, V, 3, 3]        float    pinhole intrinsics in pixels (principal point)
``world_to_cam``   [B, V, 4, 4]        float    OpenCV extrinsics (x right, y down, z forward)
``shape``          [B, S]              float    3DMM identity coefficients
``expr``           [B, E]              float    3DMM expression coefficients
``pose``           [B, 5, 3]           float    axis-angle: global, neck, jaw, left eye, right eye
``translation``    [B, 3]              float    global head translation
``identity``       [B]                 long     identity (subject) index within the dataset
``frame``          [B]                 long     frame / expression index within the identity
``background``     [B, 3]              float    background colour the images are composited on
``uv_texture``     [B, 3, h, w]        float    texture back-projected onto UV (prior input)
``uv_position``    [B, 3, h, w]        float    neutral-identity position map (x_verts)
``uv_expression``  [B, 3, h, w]        float    expression offset map (x_exp)
``uv_identity``    [B, 3, h, w]        float    3DRealHead identity texture (1/3 neutral views, mouth 0)
``uv_expr_offset`` [B, 3, h, w]        float    3DRealHead canonical expression + jaw offsets, cm
``uv_mouth``       [B, 3, h, w]        float    3DRealHead driving features of the frontal frame, mouth
=================  ==================  =======  ==================================================

The ``uv_*`` keys are optional for DataModules that serve models which do not need them: SynShot
needs :data:`UV_KEYS`, 3DRealHead :data:`REALHEAD_KEYS` (``avatar_lightning.realhead.inputs``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

#: key -> (shape pattern, dtype kind); letters are bound consistently across keys.
SCHEMA: dict[str, tuple[tuple[str | int, ...], str]] = {
    "image": (("B", "V", 3, "H", "W"), "float"),
    "mask": (("B", "V", 1, "H", "W"), "float"),
    "K": (("B", "V", 3, 3), "float"),
    "world_to_cam": (("B", "V", 4, 4), "float"),
    "shape": (("B", "S"), "float"),
    "expr": (("B", "E"), "float"),
    "pose": (("B", 5, 3), "float"),
    "translation": (("B", 3), "float"),
    "identity": (("B",), "long"),
    "frame": (("B",), "long"),
    "background": (("B", 3), "float"),
    "uv_texture": (("B", 3, "h", "w"), "float"),
    "uv_position": (("B", 3, "h", "w"), "float"),
    "uv_expression": (("B", 3, "h", "w"), "float"),
    "uv_identity": (("B", 3, "h", "w"), "float"),
    "uv_expr_offset": (("B", 3, "h", "w"), "float"),
    "uv_mouth": (("B", 3, "h", "w"), "float"),
}
REQUIRED = tuple(k for k in SCHEMA if not k.startswith("uv_"))
#: SynShot's prior inputs.
UV_KEYS = ("uv_texture", "uv_position", "uv_expression")
#: 3DRealHead's conditioning inputs.
REALHEAD_KEYS = ("uv_identity", "uv_expr_offset", "uv_mouth")


def validate_batch(batch: Mapping[str, Tensor], require_uv: bool = False, require_realhead: bool = False
                   ) -> dict[str, int]:
    """Check a batch against :data:`SCHEMA`.

    Args:
        batch: the batch to check.
        require_uv: also require SynShot's :data:`UV_KEYS`.
        require_realhead: also require 3DRealHead's :data:`REALHEAD_KEYS`.

    Returns:
        The bound dimension sizes, e.g. ``{"B": 2, "V": 4, "H": 64, ...}``.

    Raises:
        ValueError: naming the key and what was expected.
    """
    required = REQUIRED + (UV_KEYS if require_uv else ()) + (REALHEAD_KEYS if require_realhead else ())
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"batch is missing keys {missing}; the schema is avatar_lightning.batch.SCHEMA")
    dims: dict[str, int] = {}
    for key, (pattern, kind) in SCHEMA.items():
        if key not in batch:
            continue
        value = batch[key]
        if not isinstance(value, Tensor):
            raise ValueError(f"batch[{key!r}] must be a Tensor, got {type(value).__name__}")
        if value.ndim != len(pattern):
            raise ValueError(f"batch[{key!r}] must have shape {list(pattern)}, got {list(value.shape)}")
        for letter, size in zip(pattern, value.shape, strict=True):
            if isinstance(letter, int):
                if size != letter:
                    raise ValueError(f"batch[{key!r}] must have shape {list(pattern)}, got {list(value.shape)}")
            elif dims.setdefault(letter, size) != size:
                raise ValueError(
                    f"batch[{key!r}] has {letter}={size} but another key bound {letter}={dims[letter]}"
                )
        is_float = value.dtype.is_floating_point
        if (kind == "float") != is_float or (kind == "long" and value.dtype != torch.long):
            raise ValueError(f"batch[{key!r}] must be {kind}, got {value.dtype}")
    return dims
