"""The SynShot prior network (§3.2, Fig. 2) as one plain ``nn.Module``, with the Table 1 ablations.

Data flow (H = map resolution, h = latent resolution, F = feature channels)::

    x_tex, x_verts [B,3,H,W] ─E_id──► z_id [B,n_id,h,w] ─q─► transformer ─┬─► D_id ──► x̂_tex, x̂_verts
    x_exp          [B,3,H,W] ─E_expr► z_expr           ─q─► transformer ─┼─► D_expr ─► x̂_expr
                                                                        └─► D_feat ─► x̂_feat [B,F,H',W']
    φ = x̂_verts + x̂_expr;  per part r: s_r = B(x̂_feat, u_r, v_r) ─► R_color, R_gauss (``regress``)

Every paper component is its own submodule (``enc_id``, ``enc_expr``, ``quant_id``, ``quant_expr``,
``transformer_id``, ``transformer_expr``, ``dec_feat``, ``dec_id``, ``dec_expr``,
``regressors[part].color`` / ``.gauss``), and :meth:`SynShotNet.paper_modules` names them as the
paper does, so the inversion (§3.3) can freeze and fine-tune them separately.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from torch import Tensor, nn

from avatar_lightning.models.autoencoder import (
    ExpressionDecoder,
    ExpressionEncoder,
    FeatureDecoder,
    IdentityDecoder,
    IdentityEncoder,
)
from avatar_lightning.models.quantizer import PassThroughQuantizer, VectorQuantizer, VQOutput
from avatar_lightning.models.regressors import PartPrediction, PartRegressors
from avatar_lightning.models.transformer import LatentTransformer


@dataclass
class BranchCode:
    """One latent branch (identity or expression).

    Attributes:
        z: encoder output [B, n, h, w].
        vq: the quantiser's output (straight-through latents, indices, losses, usage).
        code: what the decoders read: the transformer applied to ``vq.quantized``, [B, n, h, w].
    """

    z: Tensor
    vq: VQOutput
    code: Tensor


@dataclass
class PriorMaps:
    """Decoded UV maps.

    Attributes:
        feat: x̂_feat [B, F, H', W'] (H' = H, or H/2 with ``tex_upsampling``).
        tex: x̂_tex [B, 3, H, W].
        verts: x̂_verts [B, 3, H, W], neutral positions.
        expr: x̂_expr [B, 3, H, W], expression offsets.
        position: φ = x̂_verts + x̂_expr [B, 3, H, W].
    """

    feat: Tensor
    tex: Tensor
    verts: Tensor
    expr: Tensor
    position: Tensor


@dataclass
class PriorOutput:
    """:meth:`SynShotNet.forward`'s result: both codes and the decoded maps."""

    identity: BranchCode
    expression: BranchCode
    maps: PriorMaps


@dataclass
class SynShotNetConfig:
    """Hyper-parameters of :class:`SynShotNet` (a dataclass, so stacked YAML configs merge field by field).

    Attributes:
        map_resolution: H = W of the UV maps (paper: 512).
        latent_resolution: h = w of the latent grids; H / h must be a power of two.
        feature_channels: F of x̂_feat (paper: 128; Table 1 ablations: 32, 64).
        id_code_dim: n_id, dimension of identity codes.
        expr_code_dim: n_expr, dimension of expression codes.
        id_codebook_size: K of the identity codebook.
        expr_codebook_size: K of the expression codebook.
        channels: encoder/decoder width at full resolution (doubles per level).
        max_channels: cap on encoder/decoder width.
        blocks_per_level: residual blocks per resolution level.
        vq_beta: commitment weight β.
        vq_update: ``"ema"`` or ``"loss"`` codebook learning.
        vq_restart_dead_codes: restart unused codes from encoder outputs.
        transformer_depth: blocks of each latent transformer; 0 disables the transformers.
        transformer_width: token width of the transformers.
        transformer_heads: attention heads.
        regressor_hidden: width of R_color / R_gauss.
        regressor_blocks: skip blocks per regressor (paper: 4).
        regressor_kernel: 3 for grid sample points, 1 for scattered points.
        sh_degree: SH degree of R_color (paper: 3 → 16 × 3).
        rotation_dim: 4 (quaternion offset) or 3 (axis-angle offset).
        parts: the regions with their own regressors and sample grids (paper: face, hair).
        single_layer: Table 1 "Single Layer": one joint part ``"all"`` instead of ``parts``.
        no_sampling: Table 1 "No Sampling": one joint part sampled at the map's own texel
            centres (see :func:`avatar_lightning.head.uv.texel_grid`), so the primitive count is tied to H × W.
        tex_upsampling: Table 1 "Tex. up-sampling": D_feat predicts x̂_feat at H/2; per-part
            bilinear sampling up-samples it.
        use_vq: False is Table 1 "w/o VQ": latents pass unquantised.
        color_from_texture: not in the paper, off by default: R_color predicts a residual on top of
            the decoded texture x̂_tex sampled at the part's points (SH DC = rgb_to_sh(x̂_tex) +
            residual, the residual starting at zero), so render colours are tied to the texture
            map. One 1,500-step CPU run with it scored within the run-to-run spread (README).
    """

    map_resolution: int = 512
    latent_resolution: int = 32
    feature_channels: int = 128
    id_code_dim: int = 16
    expr_code_dim: int = 16
    id_codebook_size: int = 1024
    expr_codebook_size: int = 1024
    channels: int = 64
    max_channels: int = 256
    blocks_per_level: int = 1
    vq_beta: float = 0.25
    vq_update: Literal["loss", "ema"] = "ema"
    vq_restart_dead_codes: bool = True
    transformer_depth: int = 2
    transformer_width: int = 128
    transformer_heads: int = 4
    regressor_hidden: int = 64
    regressor_blocks: int = 4
    regressor_kernel: int = 3
    sh_degree: int = 3
    rotation_dim: int = 4
    parts: tuple[str, ...] = ("face", "hair")
    single_layer: bool = False
    no_sampling: bool = False
    tex_upsampling: bool = False
    use_vq: bool = True
    color_from_texture: bool = False


class SynShotNet(nn.Module):
    """SynShot's VQ-VAE prior with per-part regressors.

    Args:
        config: the hyper-parameters (:class:`SynShotNetConfig`); defaults when None.
        **overrides: individual :class:`SynShotNetConfig` fields, applied on top of ``config``.
    """

    def __init__(self, config: SynShotNetConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = replace(config or SynShotNetConfig(), **overrides)
        self.config = cfg
        self.map_resolution, self.no_sampling = cfg.map_resolution, cfg.no_sampling
        self.feature_resolution = cfg.map_resolution // 2 if cfg.tex_upsampling else cfg.map_resolution
        self.parts = ("all",) if cfg.single_layer or cfg.no_sampling else tuple(cfg.parts)
        conv = {"channels": cfg.channels, "max_channels": cfg.max_channels, "blocks_per_level": cfg.blocks_per_level}
        self.enc_id = IdentityEncoder(cfg.id_code_dim, cfg.map_resolution, cfg.latent_resolution, **conv)
        self.enc_expr = ExpressionEncoder(cfg.expr_code_dim, cfg.map_resolution, cfg.latent_resolution, **conv)
        self.quant_id = self._quantizer(cfg, cfg.id_codebook_size, cfg.id_code_dim)
        self.quant_expr = self._quantizer(cfg, cfg.expr_codebook_size, cfg.expr_code_dim)
        tf = {"latent_resolution": cfg.latent_resolution, "width": cfg.transformer_width,
              "depth": cfg.transformer_depth, "heads": cfg.transformer_heads}
        self.transformer_id = LatentTransformer(cfg.id_code_dim, **tf) if cfg.transformer_depth else nn.Identity()
        self.transformer_expr = LatentTransformer(cfg.expr_code_dim, **tf) if cfg.transformer_depth else nn.Identity()
        self.dec_feat = FeatureDecoder(cfg.id_code_dim, cfg.expr_code_dim, cfg.feature_channels,
                                       self.feature_resolution, cfg.latent_resolution, **conv)
        self.dec_id = IdentityDecoder(cfg.id_code_dim, cfg.map_resolution, cfg.latent_resolution, **conv)
        self.dec_expr = ExpressionDecoder(cfg.expr_code_dim, cfg.map_resolution, cfg.latent_resolution, **conv)
        reg = {"hidden": cfg.regressor_hidden, "num_blocks": cfg.regressor_blocks,
               "kernel_size": cfg.regressor_kernel, "sh_degree": cfg.sh_degree, "rotation_dim": cfg.rotation_dim,
               "color_zero_init": cfg.color_from_texture}
        self.regressors = nn.ModuleDict({p: PartRegressors(cfg.feature_channels, **reg) for p in self.parts})

    @staticmethod
    def _quantizer(cfg: SynShotNetConfig, size: int, dim: int) -> nn.Module:
        if not cfg.use_vq:
            return PassThroughQuantizer(dim)
        return VectorQuantizer(size, dim, beta=cfg.vq_beta, update=cfg.vq_update,
                               restart_dead_codes=cfg.vq_restart_dead_codes)

    def encode_identity(self, x_tex: Tensor, x_verts: Tensor) -> BranchCode:
        """E_id, q, transformer: x_tex, x_verts [B, 3, H, W] → :class:`BranchCode`."""
        z = self.enc_id(x_tex, x_verts)
        vq = self.quant_id(z)
        return BranchCode(z=z, vq=vq, code=self.transformer_id(vq.quantized))

    def encode_expression(self, x_exp: Tensor) -> BranchCode:
        """E_expr, q, transformer: x_exp [B, 3, H, W] → :class:`BranchCode`."""
        z = self.enc_expr(x_exp)
        vq = self.quant_expr(z)
        return BranchCode(z=z, vq=vq, code=self.transformer_expr(vq.quantized))

    def decode(self, id_code: Tensor, expr_code: Tensor) -> PriorMaps:
        """D_feat, D_id, D_expr: codes [B, n, h, w] → :class:`PriorMaps` (φ = x̂_verts + x̂_expr)."""
        identity = self.dec_id(id_code)
        expr = self.dec_expr(expr_code)
        return PriorMaps(feat=self.dec_feat(id_code, expr_code), tex=identity.tex, verts=identity.verts,
                         expr=expr, position=identity.verts + expr)

    def forward(self, x_tex: Tensor, x_verts: Tensor, x_exp: Tensor) -> PriorOutput:
        """Encode, quantise and decode the three input maps, each [B, 3, H, W]."""
        for name, x in (("x_tex", x_tex), ("x_verts", x_verts), ("x_exp", x_exp)):
            if x.ndim != 4 or x.shape[1:] != (3, self.map_resolution, self.map_resolution):
                raise ValueError(f"SynShotNet: {name} must be [B, 3, {self.map_resolution}, "
                                 f"{self.map_resolution}], got {list(x.shape)}")
        identity = self.encode_identity(x_tex, x_verts)
        expression = self.encode_expression(x_exp)
        return PriorOutput(identity, expression, self.decode(identity.code, expression.code))

    def regress(self, part: str, features: Tensor) -> PartPrediction:
        """R_color and R_gauss of ``part`` on its sampled features s_r [B, F, h_r, w_r]."""
        if part not in self.regressors:
            raise KeyError(f"SynShotNet has regressors for parts {list(self.parts)}, not {part!r}")
        return self.regressors[part](features)

    def paper_modules(self) -> dict[str, nn.Module]:
        """The paper's components by name: E_id, E_expr, q_id, q_expr, T_id, T_expr, D_feat, D_id,
        D_expr, and R_color/<part>, R_gauss/<part> per part."""
        named: dict[str, nn.Module] = {
            "E_id": self.enc_id, "E_expr": self.enc_expr, "q_id": self.quant_id, "q_expr": self.quant_expr,
            "T_id": self.transformer_id, "T_expr": self.transformer_expr,
            "D_feat": self.dec_feat, "D_id": self.dec_id, "D_expr": self.dec_expr,
        }
        for part, reg in self.regressors.items():
            named[f"R_color/{part}"] = reg.color
            named[f"R_gauss/{part}"] = reg.gauss
        return named
