"""``SynShotPrior``: training the SynShot generative prior (§3.2) as a LightningModule.

One step: encode the batch's UV maps (x_tex, x_verts, x_exp), quantise, decode; densify per part
into canonical Gaussians; pose and render every view through :func:`render_batch`; and minimise

    L = α·L1(tex) + β·L_SSIM(tex) + γ·LPIPS(tex) + δ·L1(x_verts, x_exp in cm) + L_color(images) + L_VQ + L_reg

with the weights as constructor arguments (YAML). The UV-map terms count only texels inside the
head model's UV layout (the rest of the square holds no surface). Geometry maps (metres in the
data) are compared in centimetres with L1 alone (SSIM's constants assume [0, 1] intensities; on
millimetre-scale offsets it is ≈ 1 whatever the prediction): in metres, predicting zeros cost
≈ 1e-4, nearly free. Automatic optimisation; gradient clipping, precision (bf16/AMP) and DDP come
from the Trainer config. It speaks the vocabulary of :mod:`avatar_lightning.lit.base`; its
checkpoint records the dataset it trained on, from which the inversion takes a held-out subject.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from avatar_lightning.batch import validate_batch
from avatar_lightning.head.model import load_head_model
from avatar_lightning.lit.assemble import Assembled, GaussianAssembler
from avatar_lightning.lit.base import AvatarModule, Batch, Outputs, view_rows
from avatar_lightning.lit.checkpoint import shape_differences
from avatar_lightning.lit.render_step import render_batch, turntable_batch
from avatar_lightning.losses import GaussianRegularizer, PhotometricLoss, geometry_l1
from avatar_lightning.losses.photometric import l1_loss, ssim
from avatar_lightning.metrics import CodebookUsage
from avatar_lightning.models.quantizer import VectorQuantizer
from avatar_lightning.models.synshot import PriorOutput, SynShotNet, SynShotNetConfig

#: Geometry maps are in metres; L_geom compares them in centimetres, so δ weighs a 1 cm mean error as 1.
CM_PER_METRE = 100.0
#: the network of ``SynShotPrior()`` without arguments: SynShot's paper scale (never mutated)
PAPER_NET = SynShotNetConfig()


@dataclass
class PriorOutputs(Outputs):
    """One forward pass of the prior.

    Attributes:
        render: the renders of every view of the batch (rgb [B, V, 3, H, W]).
        net: the network's codes and decoded maps (:class:`~avatar_lightning.models.synshot.PriorOutput`).
        assembled: the canonical Gaussians of all parts, their binding and regressed offsets.
    """

    net: PriorOutput
    assembled: Assembled


class SynShotPrior(AvatarModule):
    """The SynShot prior: VQ-VAE over UV maps + per-part Gaussian regressors, rendered end to end.

    Args:
        net: the network's hyper-parameters (:class:`avatar_lightning.models.SynShotNetConfig`:
            map resolution, F, codebooks, Table 1 ablation switches, ...); a plain dict of its
            fields is accepted too. YAML configs stacked with ``-c`` merge it field by field. Its
            ``map_resolution`` is the data's ``uv_size`` (linked by the CLI).
        head_model: ``"builtin"`` or the path of a FLAME pickle; the data's (linked by the CLI).
        n_shape: identity coefficients of the head model, the data's S (linked by the CLI).
        n_expr: expression coefficients of the head model, the data's E (linked by the CLI).
        part_samples: UV sample-grid side S_r per part (SynShot's per-part densification):
            part r has at most S_r² Gaussians (the texels of its region).
        l1_weight: α of L_color (Eq. 5).
        ssim_weight: β of L_color.
        lpips_weight: γ of L_color; > 0 needs the ``lpips`` package and its backbone weights.
        image_weight: weight of L_color on rendered vs target images.
        map_weight: weight of L_color on the (input, decoded) texture maps (in-layout texels).
        geometry_weight: δ of L_geom, the L1 in centimetres of the position and expression maps
            over the texels inside the UV layout (summed over the two maps).
        vq_weight: weight of the codebook + commitment losses.
        reg_position: L2 weight on position offsets δφ.
        reg_scale: L2 weight on scale offsets δσ.
        reg_opacity: L2 weight on opacity offsets δα.
        reg_sh_rest: L2 weight on SH coefficients of bands l ≥ 1.
        lr: Adam learning rate (SynShot: 1.3e-5).
        lr_milestones: steps at which the learning rate is multiplied by ``lr_gamma``.
        lr_gamma: multi-step decay factor (SynShot: 0.66).
        render_backend: rasteriser backend (``"auto"``, ``"torch"``, ``"gsplat"``).
    """

    log_eval_losses = True  # val/test log every loss term beside the head-region scores

    def __init__(
        self,
        net: SynShotNetConfig = PAPER_NET,
        head_model: str = "builtin",
        n_shape: int = 20,
        n_expr: int = 15,
        part_samples: dict[str, int] | None = None,
        l1_weight: float = 1.0,
        ssim_weight: float = 0.2,
        lpips_weight: float = 0.0,
        image_weight: float = 1.0,
        map_weight: float = 1.0,
        geometry_weight: float = 1.0,
        vq_weight: float = 1.0,
        reg_position: float = 0.01,
        reg_scale: float = 0.001,
        reg_opacity: float = 0.001,
        reg_sh_rest: float = 0.01,
        lr: float = 1.3e-5,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.66,
        render_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        config = SynShotNetConfig(**net) if isinstance(net, Mapping) else net
        self.net = SynShotNet(config)
        self.head = load_head_model(head_model, n_shape=n_shape, n_expr=n_expr)
        self.assembler = GaussianAssembler(self.head, self.net.parts, part_samples or {"face": 64, "hair": 48},
                                           self.net.map_resolution, no_sampling=self.net.no_sampling)
        self.photo = PhotometricLoss(l1_weight, ssim_weight, lpips_weight)
        self.map_photo = PhotometricLoss(l1_weight, ssim_weight, 0.0)  # weights and window for the texture map
        # Texels of the UV square that lie on the mesh; the map losses count only these.
        layout = self.head.uv_raster(self.net.map_resolution).valid
        self.register_buffer("uv_layout", layout[None, None].float(), persistent=False)  # [1, 1, H, W]
        self.regularizer = GaussianRegularizer(reg_position, reg_scale, reg_opacity, reg_sh_rest)
        quantizers = {"id": self.net.quant_id, "expr": self.net.quant_expr}
        self.usage = torch.nn.ModuleDict({
            branch: CodebookUsage(q.num_codes) for branch, q in quantizers.items() if isinstance(q, VectorQuantizer)})
        if lpips_weight <= 0:
            rank_zero_info("SynShotPrior: LPIPS is off (lpips_weight=0); L_color = α·L1 + β·SSIM.")

    # ------------------------------------------------------------------------------ vocabulary
    def forward(self, batch: Batch) -> PriorOutputs:
        """Network, densification and rendering for a schema batch with ``uv_*`` keys."""
        validate_batch(batch, require_uv=True)
        out = self.net(batch["uv_texture"], batch["uv_position"], batch["uv_expression"])
        assembled = self.assembler(self.net, out.maps)
        render = render_batch(batch, assembled.gaussians, assembled.binding, self.head, self.hparams.render_backend)
        return PriorOutputs(render=render, net=out, assembled=assembled)

    def compute_losses(self, batch: Batch, outputs: PriorOutputs) -> dict[str, Tensor]:
        """Every named loss term and ``"loss"``, their weighted sum."""
        hp, maps, assembled = self.hparams, outputs.net.maps, outputs.assembled
        terms: dict[str, Tensor] = {"map_tex": self.texture_loss(maps.tex, batch["uv_texture"])}
        tex_lpips = self.photo.perceptual(maps.tex.clamp(0, 1), batch["uv_texture"]) if hp.lpips_weight > 0 else 0.0
        layout = self.uv_layout.to(maps.verts.dtype)
        for name, pred, target in (("verts", maps.verts, batch["uv_position"]),
                                   ("expr", maps.expr, batch["uv_expression"])):
            terms[f"geometry_{name}"] = geometry_l1(CM_PER_METRE * pred, CM_PER_METRE * target, layout)
        geometry = terms["geometry_verts"] + terms["geometry_expr"]
        map_total = terms["map_tex"]
        image = self.photo(outputs.render.rgb.flatten(0, 1), batch["image"].flatten(0, 1))
        vq = outputs.net.identity.vq.loss + outputs.net.expression.vq.loss
        g = assembled.gaussians
        reg = self.regularizer(assembled.d_position, assembled.d_scale, assembled.d_opacity, g.sh.flatten(0, 1))
        terms.update(geometry=geometry, image=image.total, image_l1=image.l1, image_ssim=image.ssim, vq=vq,
                     reg=reg.total)
        terms["loss"] = (hp.map_weight * (map_total + hp.lpips_weight * tex_lpips) + hp.geometry_weight * geometry
                         + hp.image_weight * image.total + hp.vq_weight * vq + reg.total)
        return terms

    def texture_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """α·L1 + β·(1 − SSIM) between texture maps [B, 3, H, W], over the UV layout only: L1 over its
        texels, SSIM averaged over the windows centred on them, with texels outside the layout set to
        zero in both maps (so whatever lies there counts nowhere)."""
        photo, layout = self.map_photo, self.uv_layout.to(pred.dtype)
        total = photo.l1_weight * l1_loss(pred, target, layout)
        if photo.ssim_weight:
            r = photo.ssim_window // 2
            h, w = pred.shape[-2:]
            centres = layout[..., r:h - r, r:w - r].expand(pred.shape[0], pred.shape[1], -1, -1)
            ssim_map = ssim(pred * layout, target * layout, window_size=photo.ssim_window, reduce=False)
            total = total + photo.ssim_weight * (1 - (ssim_map * centres).sum() / centres.sum().clamp_min(1))
        return total

    # ------------------------------------------------------------------------------- Lightning
    def track_training_step(self, batch: Batch, outputs: PriorOutputs, losses: dict[str, Tensor]) -> dict[str, Any]:
        """Codebook usage (per epoch) and each step's Gaussian count and code perplexities."""
        logs: dict[str, Any] = {"train/num_gaussians": float(outputs.assembled.gaussians.num_gaussians)}
        for branch, code in (("id", outputs.net.identity), ("expr", outputs.net.expression)):
            logs[f"train/perplexity_{branch}"] = code.vq.perplexity.detach()
            if branch in self.usage:
                self.usage[branch].update(code.vq.indices)
        return logs

    def on_train_epoch_end(self) -> None:
        for branch, metric in self.usage.items():
            values = metric.compute()
            self.log_dict({f"train/codebook_usage_{branch}": values["usage"].float(),
                           f"train/codebook_perplexity_{branch}": values["perplexity"].float()}, sync_dist=False)
            metric.reset()  # compute() already all-reduced the histogram across ranks

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, self.hparams.lr_milestones or [],
                                                         gamma=self.hparams.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------- checkpoints
    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse weights trained with another network config (``lightning test -c other.yaml
        --ckpt_path X`` would otherwise load them into a model that uses them differently, e.g.
        ``color_from_texture``, and report wrong figures without any error)."""
        hparams = checkpoint.get("hyper_parameters") or {}
        saved = hparams.get("net")
        if saved is None:
            return
        if not isinstance(saved, SynShotNetConfig):
            unknown = sorted(set(dict(saved)) - {f.name for f in fields(SynShotNetConfig)})
            if unknown:
                raise ValueError(f"SynShotPrior: the checkpoint's net config has fields this version does not know: "
                                 f"{unknown}; it was written by another version of avatar-lightning")
            saved = SynShotNetConfig(**dict(saved))
        ours = self.net.config

        def value(config: SynShotNetConfig, name: str) -> Any:  # YAML gives lists where defaults are tuples
            v = getattr(config, name)
            return tuple(v) if isinstance(v, list) else v

        training_only = {"vq_beta", "vq_restart_dead_codes"}  # change how it learns, not what it computes
        diff = [f"net.{f.name}: checkpoint {value(saved, f.name)!r}, config {value(ours, f.name)!r}"
                for f in fields(SynShotNetConfig)
                if f.name not in training_only and value(saved, f.name) != value(ours, f.name)]
        saved_parts = hparams.get("part_samples")
        if saved_parts is not None and dict(saved_parts) != dict(self.hparams.part_samples or {}):
            diff.append(f"part_samples: checkpoint {dict(saved_parts)}, config {dict(self.hparams.part_samples or {})}")
        diff += shape_differences(hparams, self.hparams, ("head_model", "n_shape", "n_expr"))  # the maps' head
        if diff:
            raise ValueError("SynShotPrior: the checkpoint was trained with another network config ("
                             + "; ".join(diff) + "). Use the run's own config.yaml (in its log folder) "
                             "or set these fields to the checkpoint's values.")

    # --------------------------------------------------------------------------------- images
    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Images for the ImageLogger callback, each [N, 3, H, W] in [0, 1].

        ``views``: the first sample's V views as rows target | render | error; ``maps``: input and
        decoded texture, position and expression maps (geometry normalised for display).
        """
        sample = {k: v[:1] for k, v in batch.items()}
        outputs = self(sample)

        def show(x: Tensor) -> Tensor:  # geometry → [0, 1] per map for display
            lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
            return (x - lo) / (hi - lo).clamp_min(1e-8)

        maps = outputs.net.maps
        tiles = [sample["uv_texture"][0], maps.tex[0].clamp(0, 1), show(sample["uv_position"][0]),
                 show(maps.verts[0]), show(sample["uv_expression"][0]), show(maps.expr[0])]
        return {"views": view_rows(sample, outputs), "maps": torch.stack(tiles)}

    @torch.no_grad()
    def turntable(self, batch: Mapping[str, Tensor], frames: int = 24, elevation_deg: float = 10.0) -> Tensor:
        """A 360° orbit around the first sample of ``batch``, upright, at its expression.

        The head's global and neck rotations are zeroed (jaw and eyes kept), so the orbit circles an
        upright head facing +z whatever the sample's head pose was. The orbit is centred on the
        posed head mesh's centroid at the distance of the sample's first camera, with that camera's
        intrinsics; rendering goes through :func:`render_batch`.

        Returns:
            [frames, 3, H, W] in [0, 1].
        """
        one, orbit = turntable_batch(batch, self.head, frames, elevation_deg)
        out = self.net(one["uv_texture"], one["uv_position"], one["uv_expression"])
        assembled = self.assembler(self.net, out.maps)
        return render_batch(orbit, assembled.gaussians, assembled.binding, self.head,
                            self.hparams.render_backend).rgb[0].clamp(0, 1)
