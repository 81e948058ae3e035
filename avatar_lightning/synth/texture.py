"""Procedural UV textures: skin, lips, brows, irises, teeth, scalp and beard painted in UV space.

Painting happens in UV but is *decided* in 3D: every texel knows its canonical position on the
neutral head (a UV position map) and its semantic region (UV region masks), so a brow is "a band
two centimetres above the eyeball centre" whatever the UV layout of the head model is. Noise is a
sum of random 3D sinusoids (random Fourier features) of the texel position, so it is continuous
across UV seams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avatar_lightning.synth.appearance import SCLERA_RGB, Appearance

#: Regions where hair/beard paint never goes (and skin paint is replaced).
_NOT_HAIR = ("left_eyeball", "right_eyeball", "lips", "teeth")


@dataclass
class Landmarks:
    """Anchor points on the canonical (identity-shaped, neutral) head, in head-model units.

    Attributes:
        left_eye: left eyeball centre.  # [3]
        right_eye: right eyeball centre.  # [3]
        mouth: centre of the lips.  # [3]
        eyeball_radius: mean eyeball radius.
    """

    left_eye: Tensor
    right_eye: Tensor
    mouth: Tensor
    eyeball_radius: float


def fourier_noise(points: Tensor, seed: int, wavelength: float, n: int = 16) -> Tensor:
    """Smooth 3D noise in about [-1, 1]: a normalised sum of ``n`` random sinusoids.

    Args:
        points: positions.  # [..., 3]
        seed: noise seed (same seed, same field).
        wavelength: typical feature size in the units of ``points``.
        n: number of sinusoids.

    Returns:
        noise.  # [...]
    """
    gen = torch.Generator().manual_seed(seed)
    freq = torch.randn(n, 3, generator=gen, dtype=torch.float64) * (2 * torch.pi / wavelength)
    phase = torch.rand(n, generator=gen, dtype=torch.float64) * 2 * torch.pi
    wave = torch.sin(points.to(torch.float64) @ freq.T + phase)  # [..., n]
    return (wave.sum(-1) * (2.0 / n) ** 0.5).to(points.dtype)


def _blend(tex: Tensor, weight: Tensor, rgb) -> Tensor:
    colour = torch.as_tensor(rgb, dtype=tex.dtype).view(3, 1, 1)
    return tex * (1 - weight) + colour * weight


def _smoothstep(edge0: float, edge1: float, x: Tensor) -> Tensor:
    t = ((x - edge0) / (edge1 - edge0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def brow_weight(pos: Tensor, eye: Tensor, thickness: float) -> Tensor:
    """Soft eyebrow mask above one eye: an arched band, thicker near the nose.

    Args:
        pos: canonical texel positions.  # [3, h, w]
        eye: that eye's eyeball centre.  # [3]
        thickness: band half-height.

    Returns:
        weight in [0, 1].  # [h, w]
    """
    lateral = torch.sign(eye[0]) * (pos[0] - eye[0])  # > 0 towards the temple
    u = (lateral + 0.004) / 0.026  # ≈ -1 at the brow head, +1 at its tail
    arch = eye[1] + 0.019 + 0.004 * (1 - u.clamp(-1, 1) ** 2)
    half = thickness * (1.15 - 0.35 * u.clamp(-1, 1))  # tapering tail
    inside = 1 - _smoothstep(0.6, 1.0, (pos[1] - arch).abs() / half)
    along = 1 - _smoothstep(0.85, 1.1, u.abs())
    front = _smoothstep(eye[2] - 0.006, eye[2] + 0.004, pos[2])  # only on the front of the brow ridge
    return inside * along * front


def iris_weights(pos: Tensor, eye: Tensor) -> tuple[Tensor, Tensor]:
    """Iris and pupil masks on one eyeball (the eye looks down +z at rest).

    Returns:
        (iris, pupil) soft masks.  # [h, w] each
    """
    d = torch.nn.functional.normalize(pos - eye.view(3, 1, 1), dim=0)
    cos = d[2]
    iris = _smoothstep(0.78, 0.81, cos)  # ≈ 37° half-angle: the iris fills most of the eye opening
    pupil = _smoothstep(0.955, 0.965, cos)
    return iris, pupil


def beard_weight(pos: Tensor, style: str, marks: Landmarks) -> Tensor:
    """Where a beard style grows, as a soft mask over the lower face and chin.

    Returns:
        weight in [0, 1].  # [h, w]
    """
    if style == "none":
        return torch.zeros_like(pos[0])
    mouth = marks.mouth
    eyes_y = 0.5 * (marks.left_eye[1] + marks.right_eye[1])
    # Everything on the front/sides below the cheekbones; the moustache band above the upper lip.
    below_cheek = 1 - _smoothstep(eyes_y - 0.058, eyes_y - 0.045, pos[1])
    front = _smoothstep(mouth[2] - 0.09, mouth[2] - 0.07, pos[2])
    above_neck = _smoothstep(mouth[1] - 0.075, mouth[1] - 0.06, pos[1])
    weight = below_cheek * front * above_neck
    if style == "goatee":
        weight = weight * (1 - _smoothstep(0.02, 0.028, (pos[0] - mouth[0]).abs()))
    return weight


def paint_texture(app: Appearance, position: Tensor, valid: Tensor, regions: dict[str, Tensor],
                  marks: Landmarks) -> Tensor:
    """Paint one identity's UV texture.

    Args:
        app: the identity's appearance.
        position: canonical neutral position of every texel.  # [3, h, w]
        valid: texels covered by the UV layout.  # [h, w] bool
        regions: UV region masks by name (FLAME mask names; missing names are skipped).  # [h, w] each
        marks: anchor points of the canonical head.

    Returns:
        RGB texture in [0, 1] (uncovered texels are skin-coloured to avoid dark seams).  # [3, h, w]
    """
    h, w = valid.shape
    dtype = position.dtype
    tex = torch.as_tensor(app.skin, dtype=dtype).view(3, 1, 1).expand(3, h, w).clone()
    coarse = fourier_noise(position.permute(1, 2, 0), app.seed, wavelength=0.05)
    fine = fourier_noise(position.permute(1, 2, 0), app.seed + 1, wavelength=0.004, n=24)
    tex = tex * (1 + app.skin_blotch * coarse + 0.015 * fine)
    # Warmer, redder lips blended over the lip region.
    region = {k: v.to(dtype) for k, v in regions.items()}
    zero = torch.zeros(h, w, dtype=dtype)
    tex = _blend(tex, 0.75 * region.get("lips", zero), app.lips)
    brows = sum(brow_weight(position, eye, app.brow_thickness) for eye in (marks.left_eye, marks.right_eye))
    brows = brows.clamp(0, 1) * (1 - sum(region.get(k, zero) for k in _NOT_HAIR).clamp(0, 1))
    tex = _blend(tex, 0.75 * brows * (0.8 + 0.2 * fine.abs()), app.brows)
    beard = beard_weight(position, app.beard, marks) * (1 - region.get("lips", zero))
    strength = {"none": 0.0, "stubble": 0.45, "full": 0.85, "goatee": 0.85}[app.beard]
    tex = _blend(tex, strength * beard * (0.85 + 0.15 * fine), [c * 0.8 for c in app.brows])
    if app.hair_style != "bald":  # scalp under the hair proxy takes the hair colour (no skin gaps)
        tex = _blend(tex, 0.8 * region.get("scalp", zero), app.hair)
    tex = _blend(tex, region.get("teeth", zero), app.teeth)
    for eye, name in ((marks.left_eye, "left_eyeball"), (marks.right_eye, "right_eyeball")):
        ball = region.get(name, zero)
        iris, pupil = iris_weights(position, eye)
        eye_tex = _blend(torch.as_tensor(SCLERA_RGB, dtype=dtype).view(3, 1, 1).expand(3, h, w), iris, app.iris)
        eye_tex = _blend(eye_tex, pupil, [0.02, 0.02, 0.02])
        tex = tex * (1 - ball) + eye_tex * ball
    return tex.clamp(0, 1)
