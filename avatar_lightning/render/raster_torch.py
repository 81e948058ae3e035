"""Tile-based, memory-bounded alpha compositing of projected Gaussians, with a hand-written backward.

Work is done on a ``[G tiles, P pixels, L Gaussians]`` block at a time: tiles are sorted by how many
Gaussians they hold and grouped so that ``G·P·L`` stays under a fixed element budget, and a tile's
front-to-back list is walked in segments of at most ``segment`` Gaussians, carrying each pixel's
transmittance, its "stopped" flag and its running sums from one segment to the next. Peak memory is
therefore set by the budget, not by the most crowded tile. A group stops early once every pixel in
it has hit the transmittance stop, which is where most of the speed comes from on opaque heads.

The backward pass walks the same blocks again front to back, recomputing α (nothing per-pixel is
saved), and uses ``dL/dα_k = T_k·q_k − (Σ_{j>k} w_j q_j + T_N·g_T) / (1 − α_k)`` where ``q`` is a
Gaussian's value to the loss and the suffix sum is the saved total minus the running prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import torch
from torch import Tensor

from .tiles import ALPHA_MIN, TileBins, bin_gaussians

ALPHA_MAX = 0.99
T_MIN = 1e-4
DEFAULT_BUDGET = 1 << 21  # elements per [G, P, L] block (8 MB in float32)
DEFAULT_SEGMENT = 256


@dataclass
class _Group:
    tiles: Tensor  # [G] global tile ids (view·T + t)
    length: int  # longest run in the group
    segment: int  # Gaussians per block


def _schedule(bins: TileBins, budget: int, segment: int) -> list[_Group]:
    """Group non-empty tiles (most crowded first) so every block fits the element budget."""
    pixels = bins.tile_size**2
    nonempty = torch.nonzero(bins.count > 0).flatten()
    counts, order = torch.sort(bins.count[nonempty], descending=True)
    tiles, counts = nonempty[order], counts.tolist()
    groups, i = [], 0
    while i < len(counts):
        seg = min(counts[i], segment)
        g = max(1, budget // (pixels * seg))
        groups.append(_Group(tiles=tiles[i:i + g], length=counts[i], segment=seg))
        i += g
    return groups


def _pixel_centres(bins: TileBins, tiles: Tensor, dtype: torch.dtype) -> Tensor:
    """Pixel centres ``(j + 0.5, i + 0.5)`` of every pixel of the given tiles.  ``[G, P, 2]``"""
    ts = bins.tile_size
    t = tiles % (bins.tiles_x * bins.tiles_y)
    origin = torch.stack([t % bins.tiles_x, t // bins.tiles_x], -1) * ts  # [G,2]
    p = torch.arange(ts * ts, device=tiles.device)
    offs = torch.stack([p % ts, p // ts], -1)  # [P,2]
    return (origin[:, None] + offs[None]).to(dtype) + 0.5


def _block_ids(bins: TileBins, group: _Group, s: int) -> tuple[Tensor, Tensor]:
    """Flat Gaussian ids ``[G, L]`` of segment ``s`` of a group and their validity mask."""
    pos = s * group.segment + torch.arange(group.segment, device=group.tiles.device)  # [L]
    valid = pos[None] < bins.count[group.tiles][:, None]  # [G,L]
    idx = (bins.start[group.tiles][:, None] + pos[None]).clamp(max=max(bins.gauss.numel() - 1, 0))
    return bins.gauss[idx] * valid, valid


@dataclass
class _Block:
    alpha: Tensor  # [G,P,L] clamped, gated by σ ≥ 0 and α ≥ 1/255 (before the stop mask)
    dx: Tensor  # [G,P,L] mean − pixel centre
    dy: Tensor
    vis: Tensor  # [G,P,L] o·exp(−σ) (unclamped) where gated in, else 0


def _block_alpha(pix: Tensor, mean: Tensor, conic: Tensor, opac: Tensor) -> _Block:
    """α of every (pixel, Gaussian) pair of a block; pix ``[G,P,2]``, Gaussian data ``[G,L,·]``."""
    dx = mean[:, None, :, 0] - pix[:, :, None, 0]
    dy = mean[:, None, :, 1] - pix[:, :, None, 1]
    a, b, c = (conic[:, None, :, i] for i in range(3))
    sigma = dx * (0.5 * a * dx + b * dy) + 0.5 * c * dy * dy
    vis = opac[:, None, :] * torch.exp(-sigma.clamp_min(0))
    gate = (sigma >= 0) & (vis >= ALPHA_MIN)
    vis = vis * gate
    return _Block(alpha=vis.clamp(max=ALPHA_MAX), dx=dx, dy=dy, vis=vis)


def _transmit(alpha: Tensor, trans: Tensor, done: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Apply the 1e-4 transmittance stop to a block.

    Returns the stop-masked α ``[G,P,L]``, the transmittance in front of each Gaussian ``[G,P,L]``,
    and the carried transmittance and stopped flags after the block ``[G,P]``.
    """
    after = torch.cumprod(1 - alpha, -1) * trans[..., None]  # T·(1−α) after each Gaussian
    keep = (after >= T_MIN) & ~done[..., None]
    alpha = alpha * keep
    before = torch.cat([trans[..., None], after[..., :-1]], -1)
    trans_next = torch.where(keep, after, torch.full_like(after, float("inf"))).amin(-1).minimum(trans)
    return alpha, before, trans_next, done | (after[..., -1] < T_MIN)


def _gather(flat: list[Tensor], ids: Tensor, valid: Tensor) -> list[Tensor]:
    out = [t[ids] for t in flat]
    out[3] = out[3] * valid  # padded slots get opacity 0, so they never count
    return out


def _forward(bins: TileBins, groups: list[_Group], flat: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Composite every group; returns tile-major rgb ``[V·T,P,3]``, depth and T ``[V·T,P]``."""
    means2d, _, colors, _, depths = flat
    n_tiles, pixels = bins.count.numel(), bins.tile_size**2
    rgb = means2d.new_zeros(n_tiles, pixels, 3)
    depth = means2d.new_zeros(n_tiles, pixels)
    trans_out = means2d.new_ones(n_tiles, pixels)
    for group in groups:
        pix = _pixel_centres(bins, group.tiles, means2d.dtype)
        g = group.tiles.numel()
        trans = means2d.new_ones(g, pixels)
        done = torch.zeros(g, pixels, dtype=torch.bool, device=means2d.device)
        acc, acc_d = means2d.new_zeros(g, pixels, 3), means2d.new_zeros(g, pixels)
        for s in range(-(-group.length // group.segment)):
            ids, valid = _block_ids(bins, group, s)
            mean, conic, col, opac, z = _gather(flat, ids, valid)
            blk = _block_alpha(pix, mean, conic, opac)
            alpha, before, trans, done = _transmit(blk.alpha, trans, done)
            w = alpha * before
            acc += torch.bmm(w, col)
            acc_d += torch.bmm(w, z[..., None]).squeeze(-1)
            if bool(done.all()):
                break
        rgb[group.tiles], depth[group.tiles], trans_out[group.tiles] = acc, acc_d, trans
    return rgb, depth, trans_out


def _backward(bins: TileBins, groups: list[_Group], flat: list[Tensor], saved: tuple[Tensor, Tensor, Tensor],
              grads: tuple[Tensor, Tensor, Tensor]) -> list[Tensor]:
    """Gradients w.r.t. (means2d, conics, colors, opacities, depths), all flat ``[V·N, ·]``."""
    means2d, conics, colors, opacs, depths = flat
    out = [torch.zeros_like(t) for t in flat]
    rgb_all, depth_all, trans_all = saved
    g_rgb_all, g_depth_all, g_trans_all = grads
    pixels = bins.tile_size**2
    for group in groups:
        tl = group.tiles
        pix = _pixel_centres(bins, tl, means2d.dtype)
        g_rgb, g_d, g_t = g_rgb_all[tl], g_depth_all[tl], g_trans_all[tl]
        # total value of everything behind position 0; the suffix sums are total − prefix
        total = (g_rgb * rgb_all[tl]).sum(-1) + g_d * depth_all[tl] + g_t * trans_all[tl]
        prefix = torch.zeros_like(total)
        trans = means2d.new_ones(tl.numel(), pixels)
        done = torch.zeros(tl.numel(), pixels, dtype=torch.bool, device=means2d.device)
        for s in range(-(-group.length // group.segment)):
            ids, valid = _block_ids(bins, group, s)
            mean, conic, col, opac, z = _gather(flat, ids, valid)
            blk = _block_alpha(pix, mean, conic, opac)
            alpha, before, trans, done_next = _transmit(blk.alpha, trans, done)
            w = alpha * before
            q = torch.bmm(g_rgb, col.transpose(1, 2)) + g_d[..., None] * z[:, None, :]  # [G,P,L]
            wq = w * q
            prefix_incl = prefix[..., None] + torch.cumsum(wq, -1)
            prefix = prefix_incl[..., -1]
            g_alpha = (before * q - (total[..., None] - prefix_incl) / (1 - alpha)) * (alpha > 0)
            g_vis = g_alpha * (blk.vis <= ALPHA_MAX)  # the 0.99 clamp blocks the gradient
            g_sigma = -g_vis * blk.vis
            t1, t2 = g_sigma * blk.dx, g_sigma * blk.dy
            s1, s2 = t1.sum(1), t2.sum(1)
            s11, s12, s22 = (t1 * blk.dx).sum(1), (t1 * blk.dy).sum(1), (t2 * blk.dy).sum(1)
            a, b, c = conic.unbind(-1)
            g_mean = torch.stack([a * s1 + b * s2, c * s2 + b * s1], -1)
            g_conic = torch.stack([0.5 * s11, s12, 0.5 * s22], -1)
            g_col = torch.bmm(w.transpose(1, 2), g_rgb)
            g_z = torch.bmm(w.transpose(1, 2), g_d[..., None]).squeeze(-1)
            vis_o = torch.where(opac[:, None, :] > 0, blk.vis / opac[:, None, :].clamp_min(1e-30), 0)
            g_opac = (g_vis * vis_o).sum(1)
            ids, valid_f = ids.flatten(), valid.flatten()[:, None].to(means2d.dtype)
            for o, gt in zip(out, (g_mean, g_conic, g_col, g_opac[..., None], g_z[..., None]), strict=True):
                o.index_add_(0, ids, (gt.flatten(0, 1) * valid_f).reshape(-1, *o.shape[1:]))
            done = done_next
            if bool(done.all()):
                break
    return out


def _to_tiles(img: Tensor, bins: TileBins) -> Tensor:
    """``[V, ch, H, W]`` image → tile-major ``[V·T, P, ch]`` (zero padded to whole tiles)."""
    ts = bins.tile_size
    h, w = img.shape[-2:]
    img = torch.nn.functional.pad(img, (0, bins.tiles_x * ts - w, 0, bins.tiles_y * ts - h))
    return einops.rearrange(img, "v ch (ty py) (tx px) -> (v ty tx) (py px) ch", py=ts, px=ts)


def _to_image(tiles: Tensor, bins: TileBins, height: int, width: int) -> Tensor:
    """Tile-major ``[V·T, P, ch]`` → ``[V, ch, H, W]``."""
    ts = bins.tile_size
    img = einops.rearrange(tiles, "(v ty tx) (py px) ch -> v ch (ty py) (tx px)",
                           ty=bins.tiles_y, tx=bins.tiles_x, py=ts, px=ts)
    return img[..., :height, :width]


class _Composite(torch.autograd.Function):
    """Autograd wrapper; forward outputs rgb ``[V,3,H,W]``, depth and T ``[V,1,H,W]`` (no background)."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, bins, groups, height, width):
        flat = [means2d, conics, colors, opacities, depths]
        rgb, depth, trans = _forward(bins, groups, flat)
        ctx.save_for_backward(*flat, rgb, depth, trans)
        ctx.bins, ctx.groups = bins, groups
        return (_to_image(rgb, bins, height, width), _to_image(depth[..., None], bins, height, width),
                _to_image(trans[..., None], bins, height, width))

    @staticmethod
    def backward(ctx, g_rgb, g_depth, g_trans):
        *flat, rgb, depth, trans = ctx.saved_tensors
        bins = ctx.bins
        grads = (_to_tiles(g_rgb, bins), _to_tiles(g_depth, bins)[..., 0], _to_tiles(g_trans, bins)[..., 0])
        out = _backward(bins, ctx.groups, flat, (rgb, depth, trans), grads)
        return (*out, None, None, None, None)


def composite(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, depths: Tensor,
              width: int, height: int, tile_size: int = 16, budget: int | None = None,
              segment: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of projected Gaussians (differentiable).

    Args:
        means2d: Tensor  # [V, N, 2]
        conics: Tensor  # [V, N, 3]
        colors: Tensor  # [V, N, 3]
        opacities: Tensor  # [V, N]
        depths: Tensor  # [V, N]
        width: W.
        height: H.
        tile_size: tile edge in pixels.
        budget: max elements of one ``[G, P, L]`` block (bounds peak memory); default
            ``DEFAULT_BUDGET``.
        segment: max Gaussians per block; default ``DEFAULT_SEGMENT``.

    Returns:
        (rgb ``[V,3,H,W]`` without background, depth ``[V,1,H,W]`` = Σ αT·z, T ``[V,1,H,W]``).
    """
    v, n = opacities.shape
    bins = bin_gaussians(means2d.detach(), conics.detach(), opacities.detach(), depths.detach(),
                         width, height, tile_size)
    groups = _schedule(bins, DEFAULT_BUDGET if budget is None else budget,
                       DEFAULT_SEGMENT if segment is None else segment)
    return _Composite.apply(means2d.reshape(v * n, 2), conics.reshape(v * n, 3), colors.reshape(v * n, 3),
                            opacities.reshape(v * n), depths.reshape(v * n), bins, groups, height, width)
