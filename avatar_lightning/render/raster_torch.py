"""Tile-based, memory-bounded alpha compositing of projected Gaussians, with a hand-written backward.

Work is done on ``[G tiles, P pixels, L Gaussians]`` blocks. Tiles are sorted by how many
Gaussians they hold and grouped so that ``G·P·L`` stays under a fixed element budget; a tile's
front-to-back list is walked in segments of at most ``segment`` Gaussians, carrying each pixel's
transmittance, its "stopped" flag and its running sums from one segment to the next. Peak memory is
therefore set by the budget, not by the most crowded tile. A tile leaves its group as soon as all its
pixels have hit the transmittance stop (or its list ends), which is where most of the speed comes
from on opaque heads.

Speed trick: with tile-local pixel centres (u, v), the exponent ``log o − σ`` is a quadratic in
(u, v), so a whole block of exponents is one matmul ``[P, 6] @ [G, 6, L]`` of the features
``(1, u, v, u², uv, v²)`` with six per-(tile, Gaussian) coefficients; the backward pass gets the
coefficient gradients from the transposed matmul. The conic is positive definite by construction
(projection.py culls det ≤ 0), so the contract's ``σ ≥ 0`` test can never fail and is not repeated.

The backward pass walks the same blocks again front to back, recomputing α (nothing per pixel is
saved), with ``dL/dα_k = T_k·q_k − (Σ_{j>k} w_j q_j + T_N·g_T) / (1 − α_k)`` where ``q`` is a
Gaussian's value to the loss and the suffix sum is the saved total minus the running prefix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import einops
import torch
from torch import Tensor

from .tiles import ALPHA_MIN, TileBins, bin_gaussians

ALPHA_MAX = 0.99
T_MIN = 1e-4
TILE_SIZE = 4
DEFAULT_BUDGET = 1 << 18  # elements per [G, P, L] block: 1 MB in float32, so blocks stay in cache
DEFAULT_SEGMENT = 128
_TINY = 1e-30  # log(opacity) floor for padded slots (opacity 0)


@dataclass
class _Group:
    tiles: Tensor  # [G] global tile ids (view·T + t)
    counts: Tensor  # [G] run length of each tile
    segment: int  # Gaussians per block


def _schedule(bins: TileBins, budget: int, segment: int) -> list[_Group]:
    """Group non-empty tiles (most crowded first) so every block fits the element budget."""
    pixels = bins.tile_size**2
    nonempty = torch.nonzero(bins.count > 0).flatten()
    counts, order = torch.sort(bins.count[nonempty], descending=True, stable=True)  # deterministic grouping
    tiles, counts_l = nonempty[order], counts.tolist()
    groups, i = [], 0
    while i < len(counts_l):
        seg = min(counts_l[i], segment)
        g = max(1, budget // (pixels * seg))
        groups.append(_Group(tiles=tiles[i:i + g], counts=counts[i:i + g], segment=seg))
        i += g
    return groups


def _features(tile_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(1, u, v, u², uv, v²)`` at the tile-local pixel centres.  ``[P, 6]``"""
    p = torch.arange(tile_size * tile_size, device=device)
    u, v = (p % tile_size).to(dtype) + 0.5, (p // tile_size).to(dtype) + 0.5
    return torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v], -1)


def _origins(bins: TileBins, tiles: Tensor, dtype: torch.dtype) -> Tensor:
    """Pixel coordinates of the top-left corner of each tile.  ``[G, 2]``"""
    t = tiles % (bins.tiles_x * bins.tiles_y)
    return (torch.stack([t % bins.tiles_x, t // bins.tiles_x], -1) * bins.tile_size).to(dtype)


@dataclass
class _Block:
    ids: Tensor  # [G,L] flat Gaussian ids (0 where padded)
    mu: Tensor  # [G,L] tile-local mean x
    mv: Tensor  # [G,L] tile-local mean y
    conic: Tensor  # [G,L,3]
    opac: Tensor  # [G,L]
    col4: Tensor  # [G,L,4] colour and camera z


def _gather_block(bins: TileBins, data: Tensor, tiles: Tensor, counts: Tensor, s: int, seg: int) -> _Block:
    """Segment ``s`` of the given tiles' runs; ``data`` is the packed per-Gaussian table ``[V·N, 10]``."""
    pos = s * seg + torch.arange(seg, device=tiles.device)
    valid = pos[None] < counts[:, None]
    idx = (bins.start[tiles][:, None] + pos[None]).clamp(max=max(bins.gauss.numel() - 1, 0))
    ids = torch.where(valid, bins.gauss[idx], 0).long()  # int64: index_put_ is faster with it
    d = data.index_select(0, ids.flatten()).view(*ids.shape, data.shape[-1])  # [G,L,10]
    origin = _origins(bins, tiles, data.dtype)
    return _Block(ids=ids, mu=d[..., 0] - origin[:, None, 0], mv=d[..., 1] - origin[:, None, 1],
                  conic=d[..., 2:5], opac=torch.where(valid, d[..., 5], 0), col4=d[..., 6:10])


def _coefficients(blk: _Block) -> Tensor:
    """Coefficients of ``log o − σ`` on the features ``(1, u, v, u², uv, v²)``.  ``[G, 6, L]``"""
    a, b, c = blk.conic.unbind(-1)
    mu, mv = blk.mu, blk.mv
    k0 = torch.log(blk.opac.clamp_min(_TINY)) - (0.5 * a * mu * mu + b * mu * mv + 0.5 * c * mv * mv)
    return torch.stack([k0, a * mu + b * mv, b * mu + c * mv, -0.5 * a, -b, -0.5 * c], 1)


@dataclass
class _Alpha:
    alpha: Tensor  # [G,P,L] α after the 1/255, 0.99 and stop rules (0 = not counted)
    before: Tensor  # [G,P,L] transmittance in front of each Gaussian
    trans: Tensor  # [G,P] transmittance after the block
    done: Tensor  # [G,P] the stop has fired


def _composite_block(feat: Tensor, blk: _Block, trans: Tensor, done: Tensor) -> _Alpha:
    """α, transmittance and the 1e-4 stop for one block, given the carried per-pixel state."""
    alpha = torch.matmul(feat, _coefficients(blk)).exp_()  # o·exp(−σ)
    # threshold_ keeps x > t: with t the float just below 1/255 it keeps exactly α >= 1/255
    torch.nn.functional.threshold_(alpha, _below(ALPHA_MIN, alpha.dtype), 0.0).clamp_(max=ALPHA_MAX)
    g, p, n = alpha.shape
    # one cumprod over [T, 1−α_0, …, 1−α_{L−1}] yields both T before and T·(1−α) after each Gaussian
    prod = alpha.new_empty(g, p, n + 1)
    prod[..., 0] = torch.where(done, 0, trans)  # stopped pixels count nothing more
    torch.sub(1, alpha, out=prod[..., 1:])
    prod.cumprod_(-1)
    before, after = prod[..., :-1], prod[..., 1:]
    stop = after < T_MIN
    alpha.masked_fill_(stop, 0)
    n_keep = n - torch.count_nonzero(stop, -1)[..., None]  # kept Gaussians form a prefix
    last = after.gather(-1, (n_keep - 1).clamp_min(0))[..., 0]
    return _Alpha(alpha=alpha, before=before, trans=torch.where(n_keep[..., 0] > 0, last, trans),
                  done=stop[..., -1])


@functools.cache
def _below(x: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value smaller than ``x`` rounded to ``dtype``."""
    t = torch.tensor(x, dtype=dtype)
    return torch.nextafter(t, torch.zeros_like(t)).item()


def _active(counts: Tensor, s: int, seg: int, done: Tensor) -> Tensor:
    """Rows (tiles) that still have Gaussians after segment ``s`` and an unstopped pixel."""
    return torch.nonzero((counts > (s + 1) * seg) & ~done.all(-1)).flatten()


def _forward(bins: TileBins, groups: list[_Group], data: Tensor) -> tuple[Tensor, Tensor]:
    """Composite every group. Returns tile-major (rgb, depth) ``[V·T, P, 4]`` and T ``[V·T, P]``."""
    n_tiles, pixels = bins.count.numel(), bins.tile_size**2
    feat = _features(bins.tile_size, data.dtype, data.device)
    acc_out = data.new_zeros(n_tiles, pixels, 4)
    trans_out = data.new_ones(n_tiles, pixels)
    for grp in groups:
        g = grp.tiles.numel()
        trans, done = data.new_ones(g, pixels), torch.zeros(g, pixels, dtype=torch.bool, device=data.device)
        acc = data.new_zeros(g, pixels, 4)
        rows = torch.arange(g, device=data.device)
        for s in range(-(-int(grp.counts[0]) // grp.segment)):
            blk = _gather_block(bins, data, grp.tiles[rows], grp.counts[rows], s, grp.segment)
            res = _composite_block(feat, blk, trans[rows], done[rows])
            acc[rows] += torch.bmm(res.alpha * res.before, blk.col4)
            trans[rows], done[rows] = res.trans, res.done
            rows = rows[_active(grp.counts[rows], s, grp.segment, res.done)]
            if rows.numel() == 0:
                break
        acc_out[grp.tiles], trans_out[grp.tiles] = acc, trans
    return acc_out, trans_out


def _coefficient_grads(blk: _Block, g_k: Tensor) -> Tensor:
    """Chain rule from the six coefficients to (x, y, a, b, c, o) per Gaussian.  ``[G, L, 6]``"""
    a, b, c = blk.conic.unbind(-1)
    mu, mv = blk.mu, blk.mv
    g0, g1, g2, g3, g4, g5 = g_k.unbind(1)
    return torch.stack([
        g1 * a + g2 * b - g0 * (a * mu + b * mv),
        g1 * b + g2 * c - g0 * (b * mu + c * mv),
        g1 * mu - 0.5 * g3 - 0.5 * g0 * mu * mu,
        g1 * mv + g2 * mu - g4 - g0 * mu * mv,
        g2 * mv - 0.5 * g5 - 0.5 * g0 * mv * mv,
        g0 / blk.opac.clamp_min(_TINY),
    ], -1)


def _backward(bins: TileBins, groups: list[_Group], data: Tensor, saved: tuple[Tensor, Tensor],
              grads: tuple[Tensor, Tensor]) -> Tensor:
    """Gradient w.r.t. the packed per-Gaussian table ``[V·N, 10]``."""
    acc_all, trans_all = saved
    g4_all, g_trans_all = grads
    feat = _features(bins.tile_size, data.dtype, data.device)
    out = torch.zeros_like(data)
    pixels = bins.tile_size**2
    for grp in groups:
        tl, g = grp.tiles, grp.tiles.numel()
        g4 = g4_all[tl]
        # value to the loss of everything from position 0 on; suffix sums are total − prefix
        total = (g4 * acc_all[tl]).sum(-1) + g_trans_all[tl] * trans_all[tl]
        prefix = torch.zeros_like(total)
        trans, done = data.new_ones(g, pixels), torch.zeros(g, pixels, dtype=torch.bool, device=data.device)
        rows = torch.arange(g, device=data.device)
        for s in range(-(-int(grp.counts[0]) // grp.segment)):
            blk = _gather_block(bins, data, tl[rows], grp.counts[rows], s, grp.segment)
            res = _composite_block(feat, blk, trans[rows], done[rows])
            w = res.alpha * res.before
            q = torch.bmm(g4[rows], blk.col4.transpose(1, 2))  # [G,P,L]
            pre = torch.cumsum(w * q, -1).add_(prefix[rows][..., None])
            g_alpha = res.before * q - (total[rows][..., None] - pre).div_(1 - res.alpha)
            # dα/d(log o − σ) = α for counted Gaussians below the 0.99 cap, else 0 (α is 0 when not counted)
            g_s = g_alpha.mul_(torch.where(res.alpha < ALPHA_MAX, res.alpha, 0))
            g_k = torch.matmul(feat.T, g_s)  # [G,6,L]
            g_geo = _coefficient_grads(blk, g_k)
            g_col4 = torch.bmm(w.transpose(1, 2), g4[rows])  # [G,L,4]
            # padded slots (id 0) have α = 0, so their update is exactly zero
            upd = torch.cat([g_geo, g_col4], -1).flatten(0, 1)
            out.index_put_((blk.ids.flatten(),), upd, accumulate=True)
            prefix[rows], trans[rows], done[rows] = pre[..., -1], res.trans, res.done
            rows = rows[_active(grp.counts[rows], s, grp.segment, res.done)]
            if rows.numel() == 0:
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
    """Autograd wrapper over the packed table ``[x, y, a, b, c, o, r, g, b, z]`` per Gaussian.

    Outputs (rgb, depth) ``[V, 4, H, W]`` (no background) and T ``[V, 1, H, W]``.
    """

    @staticmethod
    def forward(ctx, data, bins, groups, height, width):
        acc, trans = _forward(bins, groups, data)
        ctx.save_for_backward(data, acc, trans)
        ctx.bins, ctx.groups = bins, groups
        return _to_image(acc, bins, height, width), _to_image(trans[..., None], bins, height, width)

    @staticmethod
    def backward(ctx, g_acc, g_trans):
        data, acc, trans = ctx.saved_tensors
        bins = ctx.bins
        # Upstream ops under autocast (a bf16 loss, a discriminator) can hand back half-precision
        # gradients, and a backward called inside an autocast region would run bmm/cumsum in bf16: the
        # compositing math ran, and must run backwards, in the forward's dtype.
        g_acc, g_trans = g_acc.to(acc.dtype), g_trans.to(trans.dtype)
        grads = (_to_tiles(g_acc, bins), _to_tiles(g_trans, bins)[..., 0])
        with torch.autocast(device_type=data.device.type, enabled=False):
            return _backward(bins, ctx.groups, data, (acc, trans), grads), None, None, None, None


def composite(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, depths: Tensor,
              width: int, height: int, tile_size: int | None = None, budget: int | None = None,
              segment: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of projected Gaussians (differentiable w.r.t. every input).

    Args:
        means2d: Tensor  # [V, N, 2]
        conics: Tensor  # [V, N, 3] positive definite (a, b, c).
        colors: Tensor  # [V, N, 3]
        opacities: Tensor  # [V, N] (0 = skip)
        depths: Tensor  # [V, N] camera z: the sort key and the depth value.
        width: W.
        height: H.
        tile_size: tile edge in pixels; default ``TILE_SIZE``.
        budget: max elements of one ``[G, P, L]`` block (bounds peak memory); default ``DEFAULT_BUDGET``.
        segment: max Gaussians per block; default ``DEFAULT_SEGMENT``.

    Returns:
        (rgb ``[V,3,H,W]`` without background, depth ``[V,1,H,W]`` = Σ αT·z, T ``[V,1,H,W]``).
    """
    v, n = opacities.shape
    bins = bin_gaussians(means2d.detach(), conics.detach(), opacities.detach(), depths.detach(),
                         width, height, TILE_SIZE if tile_size is None else tile_size)
    groups = _schedule(bins, DEFAULT_BUDGET if budget is None else budget,
                       DEFAULT_SEGMENT if segment is None else segment)
    data = torch.cat([means2d, conics, opacities[..., None], colors, depths[..., None]], -1).reshape(v * n, 10)
    acc, trans = _Composite.apply(data, bins, groups, height, width)
    return acc[:, :3], acc[:, 3:], trans
