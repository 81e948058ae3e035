"""Slow, obviously-correct dense reference renderer for the render tests (float64, autograd).

Every Gaussian is evaluated at every pixel and composited by a literal transcription of the CUDA
per-pixel loop (front to back by camera z; skip if σ < 0 or α < 1/255; stop before the Gaussian
that would bring T below 1e-4). Shares no code with the fast path except ``eval_sh`` (tested on
its own against the SH definition) — the quaternion, projection and compositing are re-derived here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avatar_lightning.render import Cameras, Gaussians, eval_sh


@dataclass
class ReferenceOutput:
    rgb: Tensor  # [C, 3, H, W]
    alpha: Tensor  # [C, 1, H, W]
    depth: Tensor  # [C, 1, H, W]
    stopped: int  # number of pixels where the transmittance stop fired


def _rotmat(q: Tensor) -> Tensor:
    """R = (w² − v·v) I + 2 v vᵀ + 2 w [v]×  for unit q = (w, v)."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, v = q[:, 0], q[:, 1:]
    eye = torch.eye(3, dtype=q.dtype).expand(len(q), 3, 3)
    cross = torch.zeros(len(q), 3, 3, dtype=q.dtype)
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    cross = cross - cross.transpose(1, 2)
    return ((w * w - (v * v).sum(-1))[:, None, None] * eye + 2 * v[:, :, None] * v[:, None, :]
            + 2 * w[:, None, None] * cross)


def _one_camera(g: Gaussians, K: Tensor, w2c: Tensor, cams: Cameras, bg: Tensor, deg: int):
    W, H = cams.width, cams.height
    Rw, t = w2c[:3, :3], w2c[:3, 3]
    mc = g.means @ Rw.T + t
    x, y, z = mc.unbind(-1)
    valid = (z >= cams.near) & (z <= cams.far)
    z_s = torch.where(valid, z, torch.ones_like(z))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    limx_p, limx_n = (W - cx) / fx + 0.15 * W / fx, cx / fx + 0.15 * W / fx
    limy_p, limy_n = (H - cy) / fy + 0.15 * H / fy, cy / fy + 0.15 * H / fy
    xc = z_s * torch.clamp(x / z_s, -limx_n, limx_p)
    yc = z_s * torch.clamp(y / z_s, -limy_n, limy_p)
    J = torch.zeros(len(z), 2, 3, dtype=z.dtype)
    J[:, 0, 0], J[:, 0, 2] = fx / z_s, -fx * xc / z_s**2
    J[:, 1, 1], J[:, 1, 2] = fy / z_s, -fy * yc / z_s**2
    RS = _rotmat(g.quats) * g.scales[:, None, :]
    T = J @ Rw
    cov = T @ RS @ RS.transpose(1, 2) @ T.transpose(1, 2) + 0.3 * torch.eye(2, dtype=z.dtype)
    conic = torch.linalg.inv(cov)  # [N,2,2]
    mean2d = torch.stack([fx * x / z_s + cx, fy * y / z_s + cy], -1)
    campos = -Rw.T @ t
    color = (eval_sh(deg, g.sh, g.means - campos) + 0.5).clamp_min(0)

    jj, ii = torch.meshgrid(torch.arange(W, dtype=z.dtype), torch.arange(H, dtype=z.dtype), indexing="xy")
    pix = torch.stack([jj.flatten() + 0.5, ii.flatten() + 0.5], -1)  # [P,2]
    d = mean2d[None] - pix[:, None]  # [P,N,2]
    sigma = 0.5 * torch.einsum("pni,nij,pnj->pn", d, conic, d)
    raw = g.opacities[None] * torch.exp(-sigma)
    alpha = torch.clamp(raw, max=0.99)
    alpha = torch.where((sigma >= 0) & (alpha >= 1 / 255) & valid[None], alpha, torch.zeros_like(alpha))

    P = pix.shape[0]
    Tr = torch.ones(P, dtype=z.dtype)
    done = torch.zeros(P, dtype=torch.bool)
    rgb, dep = torch.zeros(P, 3, dtype=z.dtype), torch.zeros(P, dtype=z.dtype)
    for k in torch.argsort(z, stable=True).tolist():  # the CUDA per-pixel loop, all pixels at once
        a = alpha[:, k]
        active = ~done & (a > 0)
        test = Tr * (1 - a)
        stop = active & (test < 1e-4)
        done = done | stop
        use = active & ~stop
        wgt = torch.where(use, a * Tr, torch.zeros_like(a))
        rgb = rgb + wgt[:, None] * color[k]
        dep = dep + wgt * z[k]
        Tr = torch.where(use, test, Tr)
    rgb = rgb + Tr[:, None] * bg
    img = lambda t: t.T.reshape(-1, H, W)  # noqa: E731
    return img(rgb), img((1 - Tr)[:, None]), img(dep[:, None]), int(done.sum())


def dense_render(g: Gaussians, cams: Cameras, background: Tensor | None = None,
                 sh_degree: int | None = None) -> ReferenceOutput:
    """Render unbatched Gaussians into unbatched cameras, pixel by Gaussian."""
    deg = g.sh_degree if sh_degree is None else sh_degree
    bg = torch.zeros(3, dtype=g.means.dtype) if background is None else background
    outs = [_one_camera(g, cams.K[c], cams.world_to_cam[c], cams, bg if bg.dim() == 1 else bg[c], deg)
            for c in range(cams.num_cameras)]
    return ReferenceOutput(rgb=torch.stack([o[0] for o in outs]), alpha=torch.stack([o[1] for o in outs]),
                           depth=torch.stack([o[2] for o in outs]), stopped=sum(o[3] for o in outs))
