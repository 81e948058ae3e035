"""Look at a head model through the project's rasteriser: shaded surface Gaussians, contact sheets.

``python -m avatar_lightning.head.preview docs/head_contact_sheet.png`` renders random identities
and expressions of the built-in head (or ``--model path/to/generic_model.pkl``).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor

from avatar_lightning.head.model import HeadModel, load_head_model
from avatar_lightning.io import save_image
from avatar_lightning.render import (
    Cameras,
    Gaussians,
    intrinsics_from_fov,
    look_at,
    rasterize,
    rgb_to_sh,
    rotmat_to_quat,
)

SKIN, HAIR, LIPS, MOUTH, SCLERA = (0.86, 0.67, 0.56), (0.24, 0.16, 0.10), (0.72, 0.38, 0.36), (0.35, 0.08, 0.08), (
    0.95, 0.95, 0.93)
HAIR_PALETTE = torch.tensor([(0.08, 0.06, 0.05), (0.24, 0.16, 0.10), (0.45, 0.30, 0.16), (0.75, 0.60, 0.35),
                             (0.55, 0.25, 0.12), (0.5, 0.5, 0.5)])


def vertex_colours(head: HeadModel, skin: Tensor | None = None, hair: Tensor | None = None,
                   iris: Tensor | None = None) -> Tensor:
    """A simple painted look per vertex: skin, hair on the scalp, lips, mouth, eyes with iris. ``-> [V, 3]``."""
    V = head.num_vertices
    c = torch.tensor(SKIN).expand(V, 3).clone() if skin is None else skin.expand(V, 3).clone()
    r = head.regions
    c[r["scalp"]] = torch.tensor(HAIR) if hair is None else hair
    c[r["lips"]] = c[r["lips"]] * torch.tensor(LIPS) / torch.tensor(SKIN)
    if "mouth_interior" in r:
        c[r["mouth_interior"]] = torch.tensor(MOUTH)
    for name in ("left_eyeball", "right_eyeball"):
        idx = r[name]
        v = head.v_template[idx]
        front = F.normalize(v - v.mean(0), dim=-1)[:, 2]
        c[idx] = torch.tensor(SCLERA)
        c[idx[front > 0.87]] = torch.tensor((0.25, 0.35, 0.45)) if iris is None else iris
        c[idx[front > 0.95]] = torch.tensor((0.03, 0.03, 0.03))
    return c


def surface_gaussians(vertices: Tensor, faces: Tensor, colours: Tensor, light: Tensor, per_face: int = 3,
                      seed: int = 0) -> Gaussians:
    """Flat, opaque Gaussians tiling a mesh, coloured with Lambert shading baked in.

    Args:
        vertices: Tensor  # [V, 3] world space.
        faces: LongTensor  # [F, 3]
        colours: Tensor  # [V, 3] albedo.
        light: Tensor  # [3] direction towards the light.
        per_face: Gaussians per triangle.
    """
    g = torch.Generator().manual_seed(seed)
    tri = vertices[faces]  # [F, 3, 3]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    n = torch.cross(e1, e2, dim=-1)
    area = 0.5 * n.norm(dim=-1)
    n = F.normalize(n, dim=-1)
    t = F.normalize(e1, dim=-1)
    frame = torch.stack([t, torch.cross(n, t, dim=-1), n], -1)  # columns: tangent, bitangent, normal
    b = torch.rand(faces.shape[0], per_face, 2, generator=g)
    flip = b.sum(-1, keepdim=True) > 1
    b = torch.where(flip, 1 - b, b)
    bary = torch.cat([1 - b.sum(-1, keepdim=True), b], -1)  # [F, P, 3]
    means = torch.einsum("fpk,fkc->fpc", bary, tri).reshape(-1, 3)
    albedo = torch.einsum("fpk,fkc->fpc", bary, colours[faces]).reshape(-1, 3)
    shade = 0.3 + 0.7 * (n @ F.normalize(light, dim=0)).clamp_min(0)
    rgb = albedo * shade.repeat_interleave(per_face)[:, None]
    s = (area / per_face).sqrt().clamp_min(1e-5).repeat_interleave(per_face)
    N = means.shape[0]
    return Gaussians(means=means, quats=rotmat_to_quat(frame).repeat_interleave(per_face, 0),
                     scales=torch.stack([0.8 * s, 0.8 * s, 0.05 * s], -1), opacities=torch.full((N,), 0.99),
                     sh=rgb_to_sh(rgb)[:, None])


def contact_sheet(head: HeadModel, rows: int = 3, cols: int = 5, size: int = 160, seed: int = 0) -> Tensor:
    """Random identities (rows × cols), each with a random expression, jaw and view. ``-> [3, H, W]``."""
    g = torch.Generator().manual_seed(seed)
    K = intrinsics_from_fov(torch.tensor([20.0]), size, size)[0]
    tiles = []
    for i in range(rows * cols):
        shape = torch.randn(1, head.n_shape, generator=g)
        expr = torch.randn(1, head.n_expr, generator=g) * (0 if i < cols else 1.2)
        pose = torch.zeros(1, 5, 3)
        pose[0, 2, 0] = 0.0 if i < cols else float(torch.rand(1, generator=g)) * 0.3
        pose[0, 0, 1] = float(torch.rand(1, generator=g) - 0.5) * 1.4
        pose[0, 0, 0] = float(torch.rand(1, generator=g) - 0.5) * 0.4
        with torch.no_grad():
            verts = head(shape, expr, pose).vertices[0]
        skin = torch.tensor(SKIN) * (0.6 + 0.45 * torch.rand(1, generator=g))
        hair = HAIR_PALETTE[int(torch.randint(len(HAIR_PALETTE), (1,), generator=g))]
        colours = vertex_colours(head, skin.clamp(0, 1), hair)
        gs = surface_gaussians(verts, head.faces, colours, torch.tensor([0.4, 0.5, 1.0]))
        target = torch.tensor([0.0, -0.01, 0.0])
        w2c = look_at(target + torch.tensor([0.0, 0.02, 0.95]), target)
        out = rasterize(gs, Cameras(K=K[None], world_to_cam=w2c[None], width=size, height=size),
                        background=torch.ones(3))
        tiles.append(out.rgb[0])
    grid = torch.stack(tiles).reshape(rows, cols, 3, size, size)
    return grid.permute(2, 0, 3, 1, 4).reshape(3, rows * size, cols * size).clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="PNG to write")
    parser.add_argument("--model", default="builtin", help="'builtin' or a FLAME generic_model.pkl")
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--cols", type=int, default=5)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    head = load_head_model(args.model, n_shape=20, n_expr=15)
    save_image(args.output, contact_sheet(head, args.rows, args.cols, args.size, args.seed))


if __name__ == "__main__":
    main()
