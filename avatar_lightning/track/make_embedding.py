"""Derive the built-in head's MediaPipe landmark embedding from renders of it (``python -m
avatar_lightning.track.make_embedding [--out PATH]``).

FLAME users take MICA's hand-made ``mediapipe_landmark_embedding.npz``; the built-in head has no
such file, so it is measured: synthetic identities (``avatar_lightning.synth``: textured skin,
brows, lips, irises, hair) are rendered neutral through the project's rasteriser from a grid of
near-frontal views; MediaPipe Face Mesh runs on every render; each landmark's pixel is cast back
onto the posed mesh through the face-id buffer of ``head.raster.mesh_depth`` (exact ray-triangle
barycentrics); the hits are carried to the mean template by their (triangle, barycentric) and
reduced to the hit nearest their coordinate-wise median. The scatter of the hits (``spread_mm``)
becomes the landmark's fitting weight. The face-oval landmarks are left out (silhouette points
slide with the view, see ``embedding.FACE_OVAL``), as in MICA's embedding.

Also stored: ``mirror`` [478], the MediaPipe landmark each one becomes in a mirrored face (measured
by detecting on horizontally flipped renders), which the tests use to check the embedding's symmetry.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from avatar_lightning.head.raster import mesh_depth
from avatar_lightning.track.detect import N_MEDIAPIPE, FaceMeshDetector, NoFaceError
from avatar_lightning.track.embedding import BUILTIN_EMBEDDING, FACE_OVAL, LandmarkEmbedding, save_embedding

log = logging.getLogger(__name__)


@dataclass
class RenderedView:
    """One render of a synthetic identity and the geometry it shows.

    Attributes:
        image: np.ndarray  # [H, W, 3] uint8
        K: Tensor  # [3, 3] intrinsics, pixels
        world_to_cam: Tensor  # [4, 4] OpenCV extrinsics
        vertices: Tensor  # [V, 3] posed world vertices
    """

    image: np.ndarray
    K: Tensor
    world_to_cam: Tensor
    vertices: Tensor


def view_grid(yaws: tuple[float, ...], pitches: tuple[float, ...], target: Tensor, distance: float) -> list[Tensor]:
    """OpenCV world-to-camera matrices on a sphere of radius ``distance`` (metres) around ``target``
    [3] (yaw about +y, pitch up, radians), made with the project's ``render.look_at``.

    Returns:
        list of Tensor  # [4, 4]
    """
    from avatar_lightning.render import look_at

    out = []
    for yaw in yaws:
        for pitch in pitches:
            d = torch.tensor([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
            out.append(look_at((target + distance * d).float(), target.float()))
    return out


def render_identities(head, n_identities: int, views: list[Tensor], size: int, fov_deg: float,
                      seed: int) -> Iterator[RenderedView]:
    """Neutral synthetic identities (SynShot-style generator) rendered from ``views``.

    Args:
        head: the built-in head model (its regions and UV layout paint the textures).
        n_identities: identities drawn from the generator with ``seed``.
        views: world-to-camera matrices [4, 4].
        size: square image side in pixels.
        fov_deg: horizontal field of view.
        seed: the generator's seed.
    """
    from avatar_lightning.render import Cameras, intrinsics_from_fov, rasterize
    from avatar_lightning.synth.avatar import avatar_gaussians
    from avatar_lightning.synth.config import GeneratorConfig
    from avatar_lightning.synth.identity import build_identity

    cfg = GeneratorConfig(seed=seed, height=size, width=size, n_shape=head.n_shape, n_expr=head.n_expr)
    K = intrinsics_from_fov(torch.tensor([fov_deg]), size, size)[0]
    for i in range(n_identities):
        assets = build_identity(head, cfg, i)
        with torch.no_grad():
            verts = head(assets.shape[None], torch.zeros(1, head.n_expr)).vertices[0]
            gaussians = avatar_gaussians(verts, head.faces, assets.surface, assets.texture, assets.hair,
                                         assets.appearance)
            cams = Cameras(K=K.expand(len(views), 3, 3), world_to_cam=torch.stack(views), width=size, height=size)
            rgb = rasterize(gaussians, cams, background=torch.full((3,), 0.5)).rgb
        for c, w2c in enumerate(views):
            image = (rgb[c].clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy()
            yield RenderedView(image, K, w2c, verts)


def ray_triangle(direction: Tensor, tri: Tensor) -> tuple[Tensor, Tensor]:
    """Möller–Trumbore (1997) intersection of rays from the origin with triangles.

    Args:
        direction: Tensor  # [N, 3] ray directions (camera space).
        tri: Tensor  # [N, 3, 3] triangle corners (camera space).

    Returns:
        (t  # [N] distance along the ray (inf where parallel), bary  # [N, 3] barycentrics of the hit)
    """
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    p = torch.linalg.cross(direction, e2, dim=-1)
    det = (e1 * p).sum(-1)
    det = torch.where(det.abs() < 1e-15, torch.full_like(det, float("nan")), det)
    s = -tri[:, 0]
    b1 = (s * p).sum(-1) / det
    q = torch.linalg.cross(s, e1, dim=-1)
    b2 = (direction * q).sum(-1) / det
    t = (e2 * q).sum(-1) / det
    return torch.nan_to_num(t, nan=float("inf")), torch.stack([1 - b1 - b2, b1, b2], -1).nan_to_num(-1.0)


def backproject(points: np.ndarray, view: RenderedView, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cast pixels back onto the visible surface of the view's mesh.

    The rasteriser's face-id buffer gives the candidate triangles under the four pixels around each
    point; the exact hit is the nearest candidate that the ray crosses inside.

    Args:
        points: np.ndarray  # [L, 2] pixel coordinates (x right, y down).
        view: the render.
        faces: LongTensor  # [F, 3]

    Returns:
        (face  # [L] long, bary  # [L, 3], valid  # [L] bool: a surface was hit)
    """
    h, w = view.image.shape[:2]
    w2c = view.world_to_cam.double()
    cam = view.vertices.double() @ w2c[:3, :3].T + w2c[:3, 3]
    buffer = mesh_depth(cam, faces, view.K.double(), h, w)
    uv = torch.from_numpy(points).double()
    base = (uv - 0.5).floor().long()  # the pixel centres around each point
    offsets = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]])
    ij = (base[:, None] + offsets).clamp(torch.zeros(2, dtype=torch.long), torch.tensor([w - 1, h - 1]))
    cand = buffer.face[ij[..., 1], ij[..., 0]]  # [L, 4]
    direction = torch.cat([uv, torch.ones(len(uv), 1, dtype=uv.dtype)], 1) @ torch.linalg.inv(view.K.double()).T
    L = len(uv)
    t, bary = ray_triangle(direction.repeat_interleave(4, 0), cam[faces[cand.clamp_min(0).reshape(-1)]])
    t, bary = t.view(L, 4), bary.view(L, 4, 3)
    inside = (cand >= 0) & (bary >= -1e-6).all(-1) & (t > 0)
    best = torch.where(inside, t, torch.full_like(t, float("inf"))).argmin(1)
    rows = torch.arange(L)
    valid = inside[rows, best]
    return cand[rows, best], bary[rows, best].float(), valid


def mirror_map(detections: list[tuple[np.ndarray, np.ndarray]], width: int) -> np.ndarray:
    """Which landmark each landmark becomes when the face is mirrored, by majority over images
    (Hungarian assignment of one image's landmarks to its flip's, mapped back).

    Args:
        detections: (landmarks [478, 2] of an image, landmarks [478, 2] of its horizontal flip) pairs.
        width: image width (the flip maps x to width − x).

    Returns:
        np.ndarray  # [478] int: ``mirror[i]`` is the landmark at the mirror image of landmark i.
    """
    votes = np.zeros((N_MEDIAPIPE, N_MEDIAPIPE), np.int64)
    for original, flipped in detections:
        back = flipped * [-1, 1] + [width, 0]  # flipped landmark i, seen in the original image
        cost = np.linalg.norm(back[:, None] - original[None], axis=-1)
        rows, cols = linear_sum_assignment(cost)
        votes[rows, cols] += 1
    return votes.argmax(1)


def aggregate(face: Tensor, bary: Tensor, head) -> tuple[Tensor, Tensor, Tensor]:
    """Reduce one landmark's hits to one surface point on the mean template (FLAME's
    ``v_template``): the hit nearest the coordinate-wise median.

    Args:
        face: LongTensor  # [N] hit triangles (over renders).
        bary: Tensor  # [N, 3] hit barycentrics.
        head: the head model (its ``v_template`` and ``faces``).

    Returns:
        (face  # [] long, bary  # [3], spread  # [] median distance of the hits to their median, metres)
    """
    points = (head.v_template[head.faces[face]] * bary[:, :, None]).sum(1)  # [N, 3]
    centre = points.median(0).values
    dist = (points - centre).norm(dim=-1)
    k = int(dist.argmin())
    return face[k], bary[k], dist.median()


def build_embedding(head, n_identities: int = 12, size: int = 320, fov_deg: float = 20.0,
                    seed: int = 7) -> tuple[LandmarkEmbedding, np.ndarray, np.ndarray]:
    """Measure the embedding (module docstring).

    Args:
        head: the built-in head model.
        n_identities: synthetic identities rendered.
        size: render side, pixels.
        fov_deg: horizontal field of view of the renders.
        seed: the synthetic generator's seed.

    Returns:
        (embedding of every non-oval landmark hit in at least half the renders, spread_mm [L],
        mirror [478])

    Raises:
        RuntimeError: MediaPipe found a face in fewer than half of the renders.
    """
    from avatar_lightning.synth.identity import rig_target

    target = rig_target(head) + torch.tensor([0.0, -0.01, 0.04])  # the face, not the cranium centre
    views = view_grid((-0.35, -0.17, 0.0, 0.17, 0.35), (-0.12, 0.0, 0.12), target, distance=0.75)
    hits: list[tuple[Tensor, Tensor, Tensor]] = []
    flips: list[tuple[np.ndarray, np.ndarray]] = []
    n_renders = 0
    with FaceMeshDetector(video=False, max_faces=1) as det:
        for k, view in enumerate(render_identities(head, n_identities, views, size, fov_deg, seed)):
            n_renders += 1
            try:
                marks = det.detect(view.image, f"render {k}")
            except NoFaceError:
                log.warning("MediaPipe found no face in render %d", k)
                continue
            hits.append(backproject(marks.points, view, head.faces))
            if k % len(views) == len(views) // 2:  # the frontal view of each identity
                flipped = det.detect(np.ascontiguousarray(view.image[:, ::-1]), f"flipped render {k}")
                flips.append((marks.points, flipped.points))
    if len(hits) < n_renders / 2:
        raise RuntimeError(f"MediaPipe found a face in only {len(hits)} of {n_renders} renders of the built-in head")
    face, bary, valid = (torch.stack(x) for x in zip(*hits, strict=True))  # [R, 478, ...]
    rows, spread = [], []
    for i in range(N_MEDIAPIPE):
        ok = valid[:, i]
        if i in FACE_OVAL or ok.sum() < len(hits) / 2:
            continue
        f, b, s = aggregate(face[ok, i], bary[ok, i], head)
        rows.append((f, b, i))
        spread.append(float(s) * 1000)
    f, b, idx = zip(*rows, strict=True)
    emb = LandmarkEmbedding(torch.stack(f), torch.stack(b), torch.tensor(idx), torch.ones(len(idx)), "measured")
    return emb, np.asarray(spread), mirror_map(flips, size)


def main(argv: list[str] | None = None) -> None:
    """Command line: regenerate the built-in head's embedding asset (about 70 s on 2 CPU cores)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(BUILTIN_EMBEDDING), help="npz to write (default: the shipped asset)")
    parser.add_argument("--identities", type=int, default=12, help="synthetic identities to render")
    parser.add_argument("--size", type=int, default=320, help="render side in pixels")
    parser.add_argument("--seed", type=int, default=7, help="synthetic generator seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from avatar_lightning.head import load_head_model

    head = load_head_model("builtin", n_shape=20, n_expr=15)
    emb, spread, mirror = build_embedding(head, args.identities, args.size, seed=args.seed)
    save_embedding(args.out, emb, head, spread_mm=spread.astype(np.float32), mirror=mirror.astype(np.int64))
    log.info("wrote %s: %d landmarks, spread median %.2f mm, 90th percentile %.2f mm", args.out, len(emb),
             np.median(spread), np.percentile(spread, 90))


if __name__ == "__main__":
    main()
