"""Style U-Net of 3DRealHead (paper §IV-A, appendix A; StyleAvatar / StyleGAN2 anchors).

Two encoders of the same shape read UV-space conditioning — E_id the identity texture (3 ch), E_expr the
expression offsets plus mouth features (3 + 3 ch) — and emit one skip map per level. A decoder climbs back
from the bottleneck with StyleGAN2 modulated / demodulated 3×3 convolutions; at every level it concatenates
that level's identity and expression skip maps and fuses them with a 3×3 conv. A final plain 1×1 conv
(``StyleUNet.to_maps``, fine-tuned at enrollment, paper §IV-C1) emits 59 channels per texel: one 3D Gaussian
(:data:`MAP_LAYOUT`). :func:`activate_gaussian_maps` turns them into bounded, named parameters.

Shapes: B batch, C channels, R the UV map size, h w a level's spatial size (R / 2^l at level l = 1..L).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# Channel layout of the 59-channel output (paper §IV-A): offset 3, opacity 1, quaternion 4 (wxyz), scale 3,
# SH degree 3 48 = 16 coefficients × RGB, stored coefficient-major ("(k c)").
MAP_LAYOUT = {"offset": slice(0, 3), "opacity": slice(3, 4), "quat": slice(4, 8), "scale": slice(8, 11),
              "sh": slice(11, 59)}
MAP_CHANNELS = 59
SH_COEFFS = 16

_LRELU = 0.2  # StyleGAN2's leaky-ReLU slope


def _act(x: Tensor) -> Tensor:
    """LeakyReLU 0.2 times √2 (StyleGAN2's gain): with unit-variance weights activations keep their scale."""
    return F.leaky_relu(x, _LRELU) * math.sqrt(2.0)


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    """Plain conv initialised N(0, 1/fan_in), zero bias: with :func:`_act`, deep stacks neither vanish nor blow up."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
    nn.init.normal_(conv.weight, std=1.0 / math.sqrt(in_channels * kernel_size**2))
    nn.init.zeros_(conv.bias)
    return conv


def _fir_kernel(taps: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)) -> Tensor:
    """Separable 2-D FIR low-pass ``[k, k]`` normalised to sum 1 (StyleGAN2's ``[1, 3, 3, 1]`` blur)."""
    k = torch.tensor(taps)
    k2 = torch.outer(k, k)
    return k2 / k2.sum()


class Blur(nn.Module):
    """Depthwise FIR blur with zero padding ``pad`` per side (StyleGAN2 anchor, before a stride-2 conv).

    Args:
        pad: zeros added on every side; output size is ``h + 2·pad − 3``.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad
        self.register_buffer("kernel", _fir_kernel()[None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, h, w]
        """x: ``[B, C, h, w]`` → ``[B, C, h + 2·pad − 3, w + 2·pad − 3]``."""
        weight = self.kernel.to(x.dtype).expand(x.shape[1], 1, -1, -1)
        return F.conv2d(F.pad(x, [self.pad] * 4), weight, groups=x.shape[1])


def upsample2x(x: Tensor) -> Tensor:  # [B, C, h, w]
    """×2 FIR up-sampling (zero insertion + ``[1, 3, 3, 1]`` filter, StyleGAN2 anchor) → ``[B, C, 2h, 2w]``.

    Borders are replicated first, so a constant map stays constant (zero padding would darken UV edges).
    """
    weight = (_fir_kernel() * 4).to(x)[None, None].expand(x.shape[1], 1, -1, -1)
    return F.conv_transpose2d(F.pad(x, [1] * 4, mode="replicate"), weight, stride=2, padding=3, groups=x.shape[1])


class ModulatedConv2d(nn.Module):
    """Style-modulated, demodulated convolution (StyleGAN2 anchor, Karras et al. 2020 §2.2), no bias.

    Per sample b: ``w'_{oik} = g·w_{oik}·s_{bi}`` with ``s_b = affine(style_b)`` and ``g = 1/√(C_in·k²)``
    (equalised learning rate); demodulated ``w'' = w' / √(Σ_{ik} w'² + 1e-8)``. Evaluated as one grouped
    convolution over the batch.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        style_dim: length S of the style vector.
        kernel_size: odd k; "same" zero padding.
        demodulate: divide each output channel's weights by their norm.
    """

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, kernel_size: int = 3,
                 demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.affine = nn.Linear(style_dim, in_channels)
        nn.init.ones_(self.affine.bias)  # styles start at 1: the layer starts as a plain conv
        self.demodulate = demodulate

    def forward(self, x: Tensor, style: Tensor) -> Tensor:  # x [B, C_in, h, w], style [B, S]
        """Returns ``[B, C_out, h, w]``.

        Raises:
            ValueError: ``x`` and ``style`` disagree on the batch size.
        """
        if style.shape[0] != x.shape[0]:
            raise ValueError(f"ModulatedConv2d: x batch {x.shape[0]} != style batch {style.shape[0]}")
        s = self.affine(style)  # [B, C_in]
        w = self.gain * self.weight[None] * s[:, None, :, None, None]  # [B, C_out, C_in, k, k]
        if self.demodulate:
            w = w * torch.rsqrt(w.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        batch = x.shape[0]
        y = F.conv2d(rearrange(x, "b c h w -> 1 (b c) h w"), rearrange(w, "b o i kh kw -> (b o) i kh kw"),
                     padding=self.weight.shape[-1] // 2, groups=batch)
        return rearrange(y, "1 (b o) h w -> b o h w", b=batch)


class DownBlock(nn.Module):
    """Encoder level: 3×3 conv, blurred stride-2 3×3 conv, each with LeakyReLU 0.2 (StyleGAN2 D anchor)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _conv(in_channels, in_channels, 3, padding=1)
        self.blur = Blur(pad=2)
        self.down = _conv(in_channels, out_channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:  # [B, C_in, h, w]
        """x: ``[B, C_in, h, w]`` → ``[B, C_out, h/2, w/2]``."""
        return _act(self.down(self.blur(_act(self.conv(x)))))


class UVEncoder(nn.Module):
    """E_id / E_expr of paper §IV-A: a 1×1 stem, then one :class:`DownBlock` per level.

    Args:
        in_channels: channels of the UV conditioning (3 identity texture; 6 expression offsets + mouth).
        channels: ``[c_0, c_1, ..., c_L]``, c_l the width at resolution R / 2^l.
    """

    def __init__(self, in_channels: int, channels: list[int]) -> None:
        super().__init__()
        self.stem = _conv(in_channels, channels[0], 1)
        self.blocks = nn.ModuleList(DownBlock(a, b) for a, b in zip(channels[:-1], channels[1:], strict=True))

    def forward(self, x: Tensor) -> list[Tensor]:  # [B, C_in, R, R]
        """Returns the L skip maps, finest first: level l is ``[B, c_l, R/2^l, R/2^l]``, l = 1..L."""
        x = _act(self.stem(x))
        skips = []
        for block in self.blocks:
            x = block(x)
            skips.append(x)
        return skips


class UpBlock(nn.Module):
    """Decoder level l: fuse ``[x, id_l, expr_l]`` (3×3 conv), then ×2 up and two modulated 3×3 convs.

    Args:
        prev_channels: channels of the incoming decoder features (0 at the bottleneck: no input).
        skip_channels: c_l, the width of each of the two skip maps of this level.
        out_channels: c_{l−1}, the width at the doubled resolution.
        style_dim: length of the style vector.
    """

    def __init__(self, prev_channels: int, skip_channels: int, out_channels: int, style_dim: int) -> None:
        super().__init__()
        self.fuse = _conv(prev_channels + 2 * skip_channels, skip_channels, 3, padding=1)
        self.conv_up = ModulatedConv2d(skip_channels, out_channels, style_dim)
        self.conv = ModulatedConv2d(out_channels, out_channels, style_dim)
        self.bias_up = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor | None, id_skip: Tensor, expr_skip: Tensor, style: Tensor) -> Tensor:
        """x ``[B, C_prev, h, w]`` or None, skips ``[B, c_l, h, w]``, style ``[B, S]`` → ``[B, c_{l−1}, 2h, 2w]``."""
        h = torch.cat([id_skip, expr_skip] if x is None else [x, id_skip, expr_skip], dim=1)
        h = _act(self.conv_up(upsample2x(_act(self.fuse(h))), style) + self.bias_up)
        return _act(self.conv(h, style) + self.bias)


class StyleUNet(nn.Module):
    """The 3DRealHead prior network (paper §IV-A, appendix A): UV conditioning → 59-channel Gaussian maps.

    Width at resolution r is ``min(c_max, c_base // r)`` (StyleGAN2's schedule: narrower at finer levels,
    as the paper's appendix says). The style vector is a learned constant through a small mapping MLP —
    no latent sampling and no noise injection, so driving is deterministic (chosen, REALHEAD.md).

    CPU default: ``resolution=64, levels=4, c_base=1024, c_max=128, style_dim=128``.
    Paper scale (§V-A, appendix A: 6 encoder blocks, 256² maps; widths chosen after StyleGAN2):
    ``resolution=256, levels=6, c_base=16384, c_max=512, style_dim=512``.

    Args:
        resolution: R, the UV map size of inputs and outputs; a multiple of 2^levels.
        levels: L, number of down-blocks per encoder = number of skip maps = number of up-blocks.
        id_channels: channels of the identity texture (3, RGB).
        expr_channels: channels of the expression input (3 offsets + 3 mouth features).
        c_base: numerator of the width schedule.
        c_max: largest width.
        style_dim: length of the style vector.
        mapping_layers: linear + LeakyReLU layers of the mapping MLP.

    Raises:
        ValueError: ``resolution`` is not a multiple of ``2**levels``, or ``levels < 1``.
    """

    def __init__(self, resolution: int = 64, levels: int = 4, id_channels: int = 3, expr_channels: int = 6,
                 c_base: int = 1024, c_max: int = 128, style_dim: int = 128, mapping_layers: int = 2) -> None:
        super().__init__()
        if levels < 1 or resolution % 2**levels:
            raise ValueError(f"StyleUNet: resolution {resolution} must be a multiple of 2**levels = {2**levels}")
        self.resolution, self.levels = resolution, levels
        self.id_channels, self.expr_channels = id_channels, expr_channels
        self.channels = [max(1, min(c_max, c_base // (resolution >> lvl))) for lvl in range(levels + 1)]
        self.encoder_id = UVEncoder(id_channels, self.channels)
        self.encoder_expr = UVEncoder(expr_channels, self.channels)
        self.style_const = nn.Parameter(torch.randn(1, style_dim))
        self.mapping = nn.Sequential(*(m for _ in range(mapping_layers)
                                       for m in (nn.Linear(style_dim, style_dim), nn.LeakyReLU(_LRELU))))
        c = self.channels
        self.up_blocks = nn.ModuleList(UpBlock(0 if lvl == levels else c[lvl], c[lvl], c[lvl - 1], style_dim)
                                       for lvl in range(levels, 0, -1))  # coarsest first
        self.to_maps = nn.Conv2d(c[0], MAP_CHANNELS, 1)
        with torch.no_grad():  # start near the template: small raw maps (see activate_gaussian_maps)
            self.to_maps.weight.mul_(0.1)
            self.to_maps.bias.zero_()

    def _check(self, x: Tensor, channels: int, name: str) -> None:
        expected = (channels, self.resolution, self.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"StyleUNet: {name} must be [B, {', '.join(map(str, expected))}], got {list(x.shape)}")

    def skip_shapes(self) -> list[tuple[int, int, int]]:
        """``(c_l, R/2^l, R/2^l)`` of each skip map, finest (l = 1) first."""
        return [(self.channels[lvl], self.resolution >> lvl, self.resolution >> lvl)
                for lvl in range(1, self.levels + 1)]

    def encode_identity(self, uv_identity: Tensor) -> list[Tensor]:  # [B, id_channels, R, R]
        """E_id: the identity skip maps that enrollment optimises (paper §IV-C1), finest first.

        Returns:
            L tensors, level l ``[B, c_l, R/2^l, R/2^l]``.

        Raises:
            ValueError: wrong input shape.
        """
        self._check(uv_identity, self.id_channels, "uv_identity")
        return self.encoder_id(uv_identity)

    def encode_expression(self, uv_expr: Tensor) -> list[Tensor]:  # [B, expr_channels, R, R]
        """E_expr on expression offsets (cm) concatenated with mouth features (paper §IV-A), finest first.

        Raises:
            ValueError: wrong input shape.
        """
        self._check(uv_expr, self.expr_channels, "uv_expr")
        return self.encoder_expr(uv_expr)

    def style(self, batch: int) -> Tensor:
        """The mapped constant style, ``[batch, S]``."""
        return self.mapping(self.style_const).expand(batch, -1)

    def decode(self, id_skips: list[Tensor], expr_skips: list[Tensor]) -> Tensor:
        """Decoder: skip maps (finest first, shapes of :meth:`skip_shapes`) → raw maps ``[B, 59, R, R]``.

        The identity skips may have batch 1 against a larger expression batch (one enrolled identity,
        many driving frames); they are broadcast.

        Raises:
            ValueError: wrong number of skip maps, a map's shape does not match its level, or the two
                batch sizes differ and neither is 1.
        """
        shapes = self.skip_shapes()
        if len(id_skips) != self.levels or len(expr_skips) != self.levels:
            raise ValueError(f"StyleUNet.decode: expected {self.levels} skip maps per encoder, "
                             f"got {len(id_skips)} identity and {len(expr_skips)} expression maps")
        batch = max(id_skips[0].shape[0], expr_skips[0].shape[0])
        for lvl, (a, b, shape) in enumerate(zip(id_skips, expr_skips, shapes, strict=True), start=1):
            if tuple(a.shape[1:]) != shape or tuple(b.shape[1:]) != shape or {a.shape[0], b.shape[0]} - {1, batch}:
                raise ValueError(f"StyleUNet.decode: level {lvl} skip maps must be [B or 1, {shape}], "
                                 f"got {list(a.shape)} and {list(b.shape)}")
        style = self.style(batch)
        x = None
        for block, id_skip, expr_skip in zip(self.up_blocks, id_skips[::-1], expr_skips[::-1], strict=True):
            x = block(x, id_skip.expand(batch, -1, -1, -1), expr_skip.expand(batch, -1, -1, -1), style)
        return self.to_maps(x)

    def forward(self, uv_identity: Tensor, uv_expr: Tensor) -> Tensor:
        """uv_identity ``[B, id_channels, R, R]``, uv_expr ``[B, expr_channels, R, R]`` → ``[B, 59, R, R]`` raw."""
        return self.decode(self.encode_identity(uv_identity), self.encode_expression(uv_expr))


@dataclass
class GaussianMaps:
    """Activated per-texel Gaussian parameters (paper §IV-A output, REALHEAD.md bounded activations).

    Attributes:
        offset: ``[B, 3, R, R]`` position offset from the canonical surface point, metres.
        opacity: ``[B, 1, R, R]`` in (0, 1).
        quat: ``[B, 4, R, R]`` unit rotation quaternion, wxyz.
        scale: ``[B, 3, R, R]`` per-axis standard deviation, metres, positive.
        sh: ``[B, 16, 3, R, R]`` degree-3 spherical-harmonic coefficients (coefficient, RGB).
    """

    offset: Tensor
    opacity: Tensor
    quat: Tensor
    scale: Tensor
    sh: Tensor


def activate_gaussian_maps(raw: Tensor, base_scale: Tensor | float, offset_scale: float = 0.01,
                           init_opacity: float = 0.7, scale_cap: float = 10.0) -> GaussianMaps:
    """Split the decoder's 59 raw channels into bounded Gaussian parameters (paper §IV-A; activations chosen).

    - offset = ``offset_scale · raw`` (metres; 1 raw unit = 1 cm).
    - opacity = ``sigmoid(raw + logit(init_opacity))`` — 0.7 for a zero raw map.
    - quat = ``normalise(raw + (1, 0, 0, 0))`` — identity rotation for a zero raw map.
    - scale = ``base · exp(log(cap) · tanh(raw / log(cap)))``: ``base · exp(raw)`` near zero, softly capped
      to ``[base / cap, base · cap]`` so a few bad texels cannot grow huge splats.

    Args:
        raw: ``[B, 59, R, R]`` output of :class:`StyleUNet`.
        base_scale: texel spacing of the neutral template in metres: a float or ``[B or 1, 1, R, R]``.
        offset_scale: metres per raw unit of the offset channels.
        init_opacity: opacity of a zero raw channel, in (0, 1).
        scale_cap: ratio ``cap > 1`` bounding the scale around ``base_scale``.

    Returns:
        :class:`GaussianMaps`.

    Raises:
        ValueError: ``raw`` is not ``[B, 59, R, R]``, or ``init_opacity`` / ``scale_cap`` out of range.
    """
    if raw.ndim != 4 or raw.shape[1] != MAP_CHANNELS:
        raise ValueError(f"activate_gaussian_maps: raw must be [B, {MAP_CHANNELS}, R, R], got {list(raw.shape)}")
    if not 0.0 < init_opacity < 1.0 or scale_cap <= 1.0:
        raise ValueError(f"activate_gaussian_maps: need 0 < init_opacity < 1 and scale_cap > 1, "
                         f"got {init_opacity}, {scale_cap}")
    part = {name: raw[:, sl] for name, sl in MAP_LAYOUT.items()}
    identity = raw.new_tensor([1.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1)
    log_cap = math.log(scale_cap)
    return GaussianMaps(
        offset=offset_scale * part["offset"],
        opacity=torch.sigmoid(part["opacity"] + math.log(init_opacity / (1.0 - init_opacity))),
        quat=F.normalize(part["quat"] + identity, dim=1, eps=1e-8),
        scale=base_scale * torch.exp(log_cap * torch.tanh(part["scale"] / log_cap)),
        sh=rearrange(part["sh"], "b (k c) h w -> b k c h w", k=SH_COEFFS),
    )
