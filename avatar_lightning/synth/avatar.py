"""One synthetic avatar: sampled 3DMM parameters and the Gaussians the rasteriser draws.

The avatar is a dense layer of flat Gaussians on the posed mesh surface (sampled by barycentrics,
oriented along the triangle, coloured from the identity's UV texture) plus the bound hair/beard
proxy. Lighting is a Lambert key light plus ambient baked into the colours (SH degree 0), so the
images are view-consistent like SynShot's ray-traced renders under one environment map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from avatar_lightning.head.uv import sample_uv
from avatar_lightning.render import Gaussians
from avatar_lightning.render.rotations import rotmat_to_quat
from avatar_lightning.render.sh import rgb_to_sh
from avatar_lightning.synth.appearance import Appearance, Lighting, sample_background
from avatar_lightning.synth.hair import HairProxy, face_frames, pose_proxy

#: Std of sampled identity coefficients (FLAME bases are in standard-deviation units).
SHAPE_STD = 0.8
#: Std of sampled expression coefficients, and the clip applied to both.
EXPR_STD = 0.7
COEFF_CLIP = 2.5


@dataclass
class FrameParams:
    """The 3DMM parameters and background of one (identity, expression) sample.

    Attributes:
        shape: identity coefficients.  # [S]
        expr: expression coefficients.  # [E]
        pose: axis-angle global, neck, jaw, left eye, right eye.  # [5, 3]
        translation: global translation.  # [3]
        background: background RGB the images are composited on.  # [3]
    """

    shape: Tensor
    expr: Tensor
    pose: Tensor
    translation: Tensor
    background: Tensor

    def to_dict(self) -> dict[str, Tensor]:
        """Tensors by name (stored as ``params.pt``)."""
        return {k: getattr(self, k) for k in ("shape", "expr", "pose", "translation", "background")}


def sample_shape(rng: np.random.Generator, n_shape: int) -> Tensor:
    """Identity coefficients ~ N(0, SHAPE_STD²), clipped.  # [S]"""
    return torch.from_numpy(np.clip(rng.normal(0, SHAPE_STD, n_shape), -COEFF_CLIP, COEFF_CLIP)).float()


def sample_frame(rng: np.random.Generator, shape: Tensor, n_expr: int, neutral: bool) -> FrameParams:
    """Expression, jaw, gaze and a slight neck turn for one sample (all zero when ``neutral``).

    SynShot drives its avatars with tracked multi-view expressions; we have none, so expression
    coefficients are Gaussian, the jaw opens by up to ~20°, and the eyes look around a little.
    Global pose stays zero: the rig provides the viewpoints.
    """
    background = torch.tensor(sample_background(rng), dtype=torch.float32)
    pose = torch.zeros(5, 3)
    if neutral:
        return FrameParams(shape, torch.zeros(n_expr), pose, torch.zeros(3), background)
    expr = torch.from_numpy(np.clip(rng.normal(0, EXPR_STD, n_expr), -COEFF_CLIP, COEFF_CLIP)).float()
    pose[1] = torch.from_numpy(rng.normal(0, 0.06, 3)).float()  # neck
    pose[2, 0] = float(rng.uniform(0.0, 0.35)) * float(rng.uniform() < 0.7)  # jaw opening (about x)
    pose[2, 1:] = torch.from_numpy(rng.normal(0, 0.02, 2)).float()
    gaze = torch.tensor([rng.uniform(-0.2, 0.2), rng.uniform(-0.3, 0.3), 0.0]).float()
    pose[3] = pose[4] = gaze  # both eyes look the same way
    return FrameParams(shape, expr, pose, torch.zeros(3), background)


@dataclass
class SurfaceSamples:
    """Where the surface Gaussians sit on the mesh (fixed per identity so expressions agree).

    Attributes:
        face: triangle index.  # [N] long
        bary: barycentric coordinates.  # [N, 3]
        uv: texture coordinate in [0, 1] (OBJ convention, v up).  # [N, 2]
        radius: in-plane Gaussian scale.  # [N]
    """

    face: Tensor
    bary: Tensor
    uv: Tensor
    radius: Tensor


def sample_surface(vertices: Tensor, faces: Tensor, uv_coords: Tensor, uv_faces: Tensor, n: int,
                   seed: int) -> SurfaceSamples:
    """About ``n`` stratified samples on the canonical mesh with their UVs and disc radii.

    Each triangle gets ``n · area / total`` samples, rounded up or down at random, placed at random
    barycentrics: close to a lattice, so discs tile the surface with few holes (purely random
    placement leaves e^-k of the surface uncovered at k-fold average coverage, and holes let the
    back of the head and the hair behind it shine through). A disc's radius follows the area per
    sample of its own triangle, so coarse and fine mesh regions are both closed.

    Args:
        vertices: canonical neutral vertices.  # [V, 3]
        faces: triangles.  # [F, 3]
        uv_coords: UV vertices.  # [Vt, 2]
        uv_faces: UV triangles.  # [F, 3]
        n: target number of samples N.
        seed: sampling seed.
    """
    gen = torch.Generator().manual_seed(seed)
    _, areas = face_frames(vertices, faces)
    expected = n * areas.double() / areas.double().sum()
    counts = (expected + torch.rand(len(areas), generator=gen, dtype=torch.float64)).floor().long()
    face = torch.repeat_interleave(torch.arange(len(areas)), counts)
    r1, r2 = torch.rand(len(face), generator=gen), torch.rand(len(face), generator=gen)
    s = r1.sqrt()
    bary = torch.stack([1 - s, s * (1 - r2), s * r2], dim=-1)
    uv = torch.einsum("nk,nkc->nc", bary, uv_coords[uv_faces[face]])
    # std ≈ 0.8 × sample spacing: the gap between neighbours still gets ~95% opacity.
    per_sample = (areas[face] / counts[face].clamp(min=1)).float()
    radius = 0.8 * per_sample.sqrt()
    return SurfaceSamples(face=face, bary=bary, uv=uv, radius=radius)


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear texture lookup.

    Args:
        texture: RGB texture.  # [3, h, w]
        uv: coordinates in [0, 1], v up (image row = (1 − v)·h).  # [N, 2]

    Returns:
        colours.  # [N, 3]
    """
    return sample_uv(texture[None], uv)[0].T


def shade(albedo: Tensor, normals: Tensor, light: Lighting) -> Tensor:
    """Lambert key light + ambient: ``albedo · (ambient + colour · max(0, n·l))``.  # [N, 3]"""
    direction = torch.nn.functional.normalize(torch.tensor(light.direction, dtype=albedo.dtype), dim=0)
    lambert = (torch.nn.functional.normalize(normals, dim=-1) @ direction).clamp(min=0)[:, None]
    ambient, key = (torch.tensor(c, dtype=albedo.dtype) for c in (light.ambient, light.colour))
    light_rgb = ambient + lambert * key
    return (albedo * light_rgb).clamp(0, 1)


def avatar_gaussians(vertices: Tensor, faces: Tensor, surface: SurfaceSamples, texture: Tensor, hair: HairProxy,
                     app: Appearance, flatness: float = 0.15) -> Gaussians:
    """The Gaussians of one posed avatar: surface discs + hair/beard proxy.

    Args:
        vertices: posed vertices.  # [V, 3]
        faces: triangles.  # [F, 3]
        surface: the identity's surface samples.
        texture: the identity's UV texture.  # [3, h, w]
        hair: the identity's bound proxy.
        app: appearance (lighting).
        flatness: normal-axis scale relative to the in-plane scale.

    Returns:
        Gaussians with SH degree 0 (N = surface + hair points).
    """
    frames, _ = face_frames(vertices, faces)
    tri = vertices[faces[surface.face]]
    means = torch.einsum("nk,nkc->nc", surface.bary, tri)
    frame = frames[surface.face]
    colour = shade(sample_texture(texture, surface.uv), frame[:, :, 2], app.lighting)
    r = surface.radius[:, None]
    skin = Gaussians(means=means, quats=rotmat_to_quat(frame), scales=torch.cat([r, r, r * flatness], -1),
                     opacities=torch.full_like(r[:, 0], 0.98), sh=rgb_to_sh(colour)[:, None])
    if len(hair) == 0:
        return skin
    h_means, h_normals = pose_proxy(hair, vertices, faces)
    h_colour = shade(hair.colour, h_normals, app.lighting)
    n = len(hair)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1
    hair_g = Gaussians(means=h_means, quats=quats, scales=hair.radius[:, None].expand(n, 3).contiguous(),
                       opacities=torch.full((n,), 0.9), sh=rgb_to_sh(h_colour)[:, None])
    return Gaussians.cat([skin, hair_g])
