"""Hair and beard proxies: Gaussian point clouds bound to the head mesh.

SynShot §3.4 voxelises hair strands into a proxy fitted to the scalp region (and the same for
beards). We have no strand assets, so each style is generated directly as a volume of points over
the scalp: a shell whose thickness is the style's volume (buzz, short, afro), a curtain hanging
from the sides and back (long), or a shell plus a sphere at the back of the crown (bun). Beards
are a shell over the lower face.

Every point is bound like GaussianAvatars' splats: to one mesh triangle (``face``) at barycentric
coordinates, with an offset expressed in that triangle's local frame. Posing the mesh therefore
moves the proxy with it (hair with the head, a beard with the jaw) with no extra rig.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from avatar_lightning.synth.appearance import Appearance
from avatar_lightning.synth.texture import Landmarks, beard_weight


@dataclass
class HairProxy:
    """A bound Gaussian hair/beard proxy of one identity.

    Attributes:
        face: triangle each point is bound to.  # [N] long
        bary: barycentric coordinates on that triangle.  # [N, 3]
        offset: offset from the surface point in the triangle frame (tangent, bitangent, normal).  # [N, 3]
        normal: shading normal in the triangle frame.  # [N, 3]
        colour: albedo RGB.  # [N, 3]
        radius: Gaussian scale (isotropic) in head units.  # [N]
    """

    face: Tensor
    bary: Tensor
    offset: Tensor
    normal: Tensor
    colour: Tensor
    radius: Tensor

    def __len__(self) -> int:
        return int(self.face.shape[0])

    def to_dict(self) -> dict[str, Tensor]:
        """Tensors by field name (what the dataset stores in ``hair.pt``)."""
        return {k: getattr(self, k) for k in ("face", "bary", "offset", "normal", "colour", "radius")}

    @classmethod
    def cat(cls, proxies: list[HairProxy]) -> HairProxy:
        """Concatenate proxies (hair + beard)."""
        return cls(**{k: torch.cat([p.to_dict()[k] for p in proxies]) for k in proxies[0].to_dict()})


def face_frames(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """Orthonormal frame and area of every triangle.

    Args:
        vertices: mesh vertices.  # [V, 3]
        faces: triangles.  # [F, 3]

    Returns:
        (frames, areas): columns (tangent along edge 0→1, bitangent, normal)  # [F, 3, 3], and  # [F]
    """
    v0, v1, v2 = vertices[faces].unbind(-2)
    cross = torch.cross(v1 - v0, v2 - v0, dim=-1)
    normal = torch.nn.functional.normalize(cross, dim=-1)
    tangent = torch.nn.functional.normalize(v1 - v0, dim=-1)
    bitangent = torch.cross(normal, tangent, dim=-1)
    return torch.stack([tangent, bitangent, normal], dim=-1), 0.5 * cross.norm(dim=-1)


def sample_on_faces(weights: Tensor, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` uniform surface samples over triangles chosen with probability ∝ ``weights`` (areas).

    Returns:
        (face  # [n] long, bary  # [n, 3])
    """
    face = torch.multinomial(weights.double(), n, replacement=True, generator=gen)
    r1, r2 = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    s = r1.sqrt()  # the square-root warp makes the samples uniform over each triangle
    bary = torch.stack([1 - s, s * (1 - r2), s * r2], dim=-1)
    return face, bary


def hair_coverage(centroids: Tensor, head_centre: Tensor, marks: Landmarks) -> Tensor:
    """Soft-free hairline test per triangle: above a line that is high on the forehead and low at the nape.

    Args:
        centroids: triangle centroids.  # [F, 3]
        head_centre: centre of the cranium.  # [3]
        marks: anchor points (the hairline is placed relative to the eyes).

    Returns:
        bool mask.  # [F]
    """
    eyes_y = 0.5 * (marks.left_eye[1] + marks.right_eye[1])
    rel = centroids - head_centre
    cos_az = rel[:, 2] / rel[:, [0, 2]].norm(dim=-1).clamp_min(1e-9)  # 1 in front, -1 at the back
    hairline = eyes_y + 0.0 + 0.047 * cos_az + 0.01 * cos_az.clamp(min=0) ** 4  # forehead ≈ 6 cm above eyes
    return centroids[:, 1] > hairline


def _shell(faces_mask: Tensor, areas: Tensor, n: int, depth: tuple[float, float], gen: torch.Generator,
           up_boost: float, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    face, bary = sample_on_faces(areas * faces_mask, n, gen)
    t = torch.rand(n, generator=gen)
    up = frames[face, 1, 2].clamp(min=0)  # world-y of the normal: volume grows on top of the head
    height = depth[0] + (depth[1] - depth[0]) * t * (1 + up_boost * up)
    offset = torch.zeros(n, 3)
    offset[:, 2] = height
    offset[:, :2] = 0.15 * height[:, None] * torch.randn(n, 2, generator=gen)  # fuzz, not a flat layer
    return face, bary, offset


def _curtain(cover: Tensor, centroids: Tensor, frames: Tensor, head_centre: Tensor, length: float,
             volume: float, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Long hair: strands falling from the sides and back of the covered scalp down to ``length``."""
    rel = centroids - head_centre
    az = torch.atan2(rel[:, 0], rel[:, 2])
    side_back = cover & (az.abs() > math.radians(55)) & (rel[:, 1] > -0.01)
    face, bary = sample_on_faces(side_back.double() * frames.new_ones(len(cover)), n, gen)
    t = torch.rand(n, generator=gen)
    drop = length * t  # how far below the root this point hangs
    radial = torch.nn.functional.normalize(rel[face] * torch.tensor([1.0, 0.0, 1.0]), dim=-1)
    world = radial * (volume + 0.02 * t[:, None] + 0.004 * torch.randn(n, 1, generator=gen))
    world[:, 1] = -drop
    local = torch.einsum("nji,nj->ni", frames[face], world)  # world offset → triangle frame
    return face, bary, local


def _bun(cover: Tensor, centroids: Tensor, frames: Tensor, head_centre: Tensor, n: int,
         gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """A ball of hair behind the crown, bound to the covered triangle nearest to its centre."""
    rel = torch.nn.functional.normalize(centroids - head_centre, dim=-1)
    target = torch.nn.functional.normalize(torch.tensor([0.0, 0.8, -1.0]), dim=0)
    score = torch.where(cover, rel @ target, torch.full_like(rel[:, 0], -2.0))
    anchor = int(score.argmax())
    radius = 0.035
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    world = target * radius * 0.8 + d * radius * torch.rand(n, 1, generator=gen) ** (1 / 3)
    face = torch.full((n,), anchor, dtype=torch.long)
    bary = torch.full((n, 3), 1 / 3)
    return face, bary, torch.einsum("nji,nj->ni", frames[face], world)


def build_hair_proxy(app: Appearance, vertices: Tensor, faces: Tensor, regions: dict[str, Tensor],
                     marks: Landmarks, density: float = 1.0, point_radius: float = 0.0035) -> HairProxy:
    """Build an identity's hair (+ beard) proxy on its canonical neutral mesh.

    Args:
        app: appearance (style, colour, length, volume, beard).
        vertices: canonical neutral vertices of the identity.  # [V, 3]
        faces: triangles.  # [F, 3]
        regions: vertex-index regions of the head model (``face``, ``scalp``, ``lips``, ...).
        marks: anchor points.
        density: multiplies every point count (image size decides how many are needed).
        point_radius: Gaussian radius of hair points.

    Returns:
        The proxy (empty for a bald, beardless identity).
    """
    gen = torch.Generator().manual_seed(app.seed + 7)
    frames, areas = face_frames(vertices, faces)
    centroids = vertices[faces].mean(1)
    excluded = torch.zeros(len(vertices), dtype=torch.bool)
    for name in ("left_eyeball", "right_eyeball", "lips", "left_ear", "right_ear", "nose", "eye_region", "teeth"):
        if name in regions:
            excluded[regions[name]] = True
    scalp = vertices[regions["scalp"]]
    head_centre = torch.stack([scalp[:, 0].mean(), 0.5 * (marks.left_eye[1] + marks.right_eye[1]) + 0.02,
                               scalp[:, 2].mean()])
    cover = hair_coverage(centroids, head_centre, marks) & ~excluded[faces].any(-1)
    parts = []
    count = lambda k: max(int(k * density), 1)  # noqa: E731
    style, vol = app.hair_style, app.hair_volume
    if style != "bald":
        depth = {"buzz": (0.0005, 0.003), "afro": (0.01, 0.02 + 2.5 * vol)}.get(style, (0.001, vol))
        n_shell = count({"buzz": 5000, "afro": 16000}.get(style, 9000))
        parts.append((*_shell(cover.double(), areas, n_shell, depth, gen, 0.8, frames), 1.0))
    if style == "long":
        parts.append((*_curtain(cover, centroids, frames, head_centre, app.hair_length, vol, count(8000), gen), 1.0))
    if style == "bun":
        parts.append((*_bun(cover, centroids, frames, head_centre, count(2500), gen), 1.0))
    if app.beard in ("full", "goatee"):
        w = beard_weight(centroids.T[:, :, None], app.beard, marks)[:, 0]
        w = (w > 0.5) & ~excluded[faces].any(-1)
        parts.append((*_shell(w.double(), areas, count(3000), (0.0008, 0.006), gen, 0.0, frames), 0.8))
    if not parts:
        return _empty()
    proxies = [_colourise(f, b, o, app, scale, gen, point_radius) for f, b, o, scale in parts]
    return HairProxy.cat(proxies)


def _colourise(face: Tensor, bary: Tensor, offset: Tensor, app: Appearance, darken: float,
               gen: torch.Generator, radius: float) -> HairProxy:
    n = len(face)
    depth = offset[:, 2].abs() / offset[:, 2].abs().max().clamp_min(1e-6)
    shade = (0.65 + 0.35 * depth) * (1 + 0.12 * torch.randn(n, generator=gen))  # inner layers darker
    colour = (torch.tensor(app.hair) * darken)[None] * shade[:, None]
    normal = torch.nn.functional.normalize(offset + torch.tensor([0.0, 0.0, 1e-3]), dim=-1)
    return HairProxy(face=face, bary=bary, offset=offset, normal=normal, colour=colour.clamp(0, 1),
                     radius=torch.full((n,), radius))


def _empty() -> HairProxy:
    z3 = torch.zeros(0, 3)
    return HairProxy(face=torch.zeros(0, dtype=torch.long), bary=z3, offset=z3, normal=z3, colour=z3,
                     radius=torch.zeros(0))


def pose_proxy(proxy: HairProxy, vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """World positions and shading normals of a proxy on a posed mesh.

    Args:
        proxy: the bound proxy.
        vertices: posed vertices.  # [V, 3]
        faces: triangles.  # [F, 3]

    Returns:
        (positions  # [N, 3], normals  # [N, 3])
    """
    frames, _ = face_frames(vertices, faces)
    tri = vertices[faces[proxy.face]]  # [N, 3, 3]
    anchor = torch.einsum("nk,nkc->nc", proxy.bary.to(vertices.dtype), tri)
    frame = frames[proxy.face]
    return anchor + torch.einsum("nij,nj->ni", frame, proxy.offset), torch.einsum("nij,nj->ni", frame, proxy.normal)
