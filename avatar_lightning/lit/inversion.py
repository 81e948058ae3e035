"""Few-shot inversion of the SynShot prior: two-stage pivotal tuning (SynShot §3.3).

Stage 1 optimises only the identity encoder E_id (everything else frozen) on the few input images,
starting from the texture back-projected from them: the identity code z_id it predicts is the
"pivot". Stage 2 freezes z_id (its decoded code is cached) and fine-tunes D_feat, D_id, D_expr and
every part's R_color / R_gauss; E_expr stays frozen because it must keep modelling expressions
independently of the subject. Stage 1 lasts ``stage1_steps_per_frame × n_input_frames`` steps;
stage 2 runs until :class:`callbacks.EMAEarlyStopping` stops the trainer (warm-up, then a plateau
of the loss's exponential moving average, or its step budget of ``max_steps_per_frame × frames``).

Loss: L = L_color (+ L_id + L_arc when an ArcFace checkpoint is given, Table 2) (+ the prior's
Gaussian regularisers, weighted by ``reg_weight``).

Frozen sub-networks stay in eval mode throughout: the VQ codebooks would otherwise keep updating
their EMA statistics and restarting "dead" codes from the few inputs. The stages meet the early
stopping through the contract of :mod:`avatar_lightning.lit.stopping`: the input-image count comes
from the DataModule, and :attr:`SynShotInversion.min_steps_before_stopping` holds stopping back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from avatar_lightning.batch import validate_batch
from avatar_lightning.head.gaussians import MeshBinding
from avatar_lightning.lit.assemble import Assembled
from avatar_lightning.lit.avatar_common import FewShotAvatar
from avatar_lightning.lit.base import Batch, Outputs
from avatar_lightning.lit.checkpoint import find_prior_checkpoint, refuse_other_shape
from avatar_lightning.lit.render_step import render_batch
from avatar_lightning.lit.synshot_prior import SynShotPrior
from avatar_lightning.losses import PhotometricLoss
from avatar_lightning.losses.identity import IdentityLoss, SFaceIdentityLoss
from avatar_lightning.models.synshot import SynShotNet
from avatar_lightning.render import Gaussians

#: the paper's components each stage trains (names of ``SynShotNet.paper_modules``).
STAGE1_MODULES = ("E_id",)
STAGE2_PREFIXES = ("D_feat", "D_id", "D_expr", "R_color/", "R_gauss/")


@dataclass
class InversionOutputs(Outputs):
    """One forward pass of the inversion.

    Attributes:
        render: the renders of every view of the batch (rgb [B, V, 3, H, W]).
        assembled: the subject's canonical Gaussians, their binding and regressed offsets.
    """

    assembled: Assembled


class SynShotInversion(FewShotAvatar):
    """Invert a trained SynShot prior onto a few images of one subject (pivotal tuning, §3.3).

    Args:
        prior_checkpoint: path of a ``SynShotPrior`` checkpoint, or ``"latest"`` (newest under ``runs_dir``).
            The CLI links it to the few-shot data, which takes its subject from this prior's dataset.
        runs_dir: where ``"latest"`` looks (linked to the data likewise).
        stage1_steps_per_frame: stage-1 (E_id) steps per input image. SynShot §3.3 has one factor
            (×10 steps per training frame, with EMA early stopping); here it is split into this
            stage-1 length and stage 2's cap (``EMAEarlyStopping.max_steps_per_frame``), which the
            EMA plateau normally ends first.
        lr_stage1: Adam lr of E_id in stage 1.
        lr_stage2: Adam lr of the decoders and regressors in stage 2.
        l1_weight: α of L_color (Eq. 5).
        ssim_weight: β of L_color.
        lpips_weight: γ of L_color (SynShot's "VGG" term); > 0 needs the ``lpips`` package and weights.
        id_weight: weight of L_id (face-embedding cosine, Table 2).
        arc_weight: weight of L_arc (face-network feature distance, Table 2).
        identity_net: network of L_id / L_arc: ``"sface"`` (OpenCV Zoo SFace, ships offline; the
            embedded default) or ``"arcface"`` (the paper's; needs ``arcface_checkpoint``).
        arcface_checkpoint: insightface ``arcface_torch`` ``backbone.pth`` (user-supplied).
        arcface_arch: its backbone (``iresnet50`` / ``iresnet100``).
        reg_weight: multiplier of the prior's §3.2 L2 regularisers (offsets, scale, opacity, SH l ≥ 1)
            during inversion; the paper gives no value for the inversion, 1.0 keeps the prior's.
        output_dir: where the avatar outputs go at the end of fit (None: not written).
        turntable_frames: frames of the 360° turntable video.
        expression_steps: video frames between consecutive held-out expressions.
        fps: frame rate of both videos.
        render_backend: rasteriser backend (``"auto"``, ``"torch"``, ``"gsplat"``).
        prior_hparams: the prior's hyper-parameters; recorded when the prior is loaded so that an
            inversion checkpoint rebuilds without the prior file. Leave unset.
        allow_untrained_prior: with ``prior_checkpoint: latest``, invert a prior that trained fewer
            than 100 steps anyway (otherwise refused, naming it).
    """

    def __init__(self, prior_checkpoint: str = "latest", runs_dir: str = "runs", stage1_steps_per_frame: int = 10,
                 lr_stage1: float = 1e-4, lr_stage2: float = 1e-4, l1_weight: float = 1.0, ssim_weight: float = 0.2,
                 lpips_weight: float = 0.0, id_weight: float = 0.0, arc_weight: float = 0.0,
                 identity_net: str = "sface", arcface_checkpoint: str | None = None,
                 arcface_arch: str = "iresnet100", reg_weight: float = 1.0,
                 output_dir: str | None = None, turntable_frames: int = 60, expression_steps: int = 12,
                 fps: float = 25.0, render_backend: str = "auto", prior_hparams: dict[str, Any] | None = None,
                 allow_untrained_prior: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.photometric = PhotometricLoss(l1_weight, ssim_weight, lpips_weight)
        self.identity_loss = None
        if identity_net not in ("sface", "arcface"):
            raise ValueError(f"SynShotInversion.identity_net must be 'sface' or 'arcface', got {identity_net!r}")
        if id_weight > 0 or arc_weight > 0:
            self.identity_loss = (SFaceIdentityLoss() if identity_net == "sface"
                                  else IdentityLoss(arcface_checkpoint, arch=arcface_arch))
        self.loss_history: list[tuple[int, int, float]] = []  # (step, stage, loss): SynShot Fig. 11
        self.net: SynShotNet | None = None
        if prior_hparams is not None:  # restoring an inversion checkpoint: its state dict holds the weights
            self._adopt(SynShotPrior(**prior_hparams))

    def configure_model(self) -> None:
        """Load the prior (Lightning calls this before fitting; the lookup needs a trained prior).

        Deferred from ``__init__`` so that configs build and ``--help`` works before any prior exists.
        """
        if self.net is not None:
            return
        path = find_prior_checkpoint(self.hparams.prior_checkpoint, self.hparams.runs_dir,  # logs which one
                                     allow_untrained=self.hparams.get("allow_untrained_prior", False))
        prior = SynShotPrior.load_from_checkpoint(path, map_location="cpu")
        self.hparams["prior_hparams"] = dict(prior.hparams)
        self._adopt(prior)

    def _adopt(self, prior: SynShotPrior) -> None:
        """Take the prior's network, head model and densification, and set up stage 1."""
        self.net, self.head, self.assembler = prior.net, prior.head, prior.assembler
        self.regularizer = prior.regularizer
        res = self.net.map_resolution
        dev = next(self.net.parameters()).device
        self.register_buffer("stage", torch.tensor(1, device=dev))
        self.register_buffer("x_tex", torch.zeros(1, 3, res, res, device=dev))
        self.register_buffer("x_verts", torch.zeros(1, 3, res, res, device=dev))
        self.register_buffer("identity_captured", torch.tensor(False, device=dev))
        self.net.eval()  # before any forward: a training-mode quantiser would update its codebook
        with torch.no_grad():
            code = self.net.encode_identity(self.x_tex, self.x_verts).code
        self.register_buffer("pivot", torch.zeros_like(code))  # the fixed identity code of stage 2
        self.apply_stage(1)

    # ---------------------------------------------------------------------------------- stages
    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """The parameters stage ``stage`` (1 or 2) optimises."""
        named = self.net.paper_modules()
        if stage == 1:
            keep = [m for name, m in named.items() if name in STAGE1_MODULES]
        elif stage == 2:
            keep = [m for name, m in named.items() if name.startswith(STAGE2_PREFIXES)]
        else:
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        return [p for m in keep for p in m.parameters()]

    def apply_stage(self, stage: int) -> None:
        """Freeze everything but the parameters of ``stage``."""
        self.requires_grad_(False)
        for p in self.stage_parameters(stage):
            p.requires_grad_(True)
        self.stage.fill_(stage)

    @property
    def stage1_steps(self) -> int:
        return self.hparams.stage1_steps_per_frame * max(self.n_input_frames, 1)

    @torch.no_grad()
    def switch_to_stage2(self) -> None:
        """Fix z_id (cache the code the decoders read) and hand the optimiser to the decoders."""
        self.pivot.copy_(self.net.encode_identity(self.x_tex, self.x_verts).code)
        self.apply_stage(2)
        rank_zero_info(f"SynShotInversion: stage 2 (decoders + regressors) from step {self.global_step}")

    def train(self, mode: bool = True) -> SynShotInversion:
        """Keep the prior network in eval mode (see the module docstring)."""
        super().train(mode)
        if self.net is not None:
            self.net.eval()
        return self

    # -------------------------------------------------------------------------------- forward
    def identity_code(self) -> Tensor:
        """The code D_* read for the subject, ``[1, n_id, h, w]``: E_id's in stage 1, the pivot in stage 2."""
        if int(self.stage) == 2:
            return self.pivot
        return self.net.encode_identity(self.x_tex, self.x_verts).code

    def assemble(self, batch: Batch) -> Assembled:
        """Decode the subject's code with each sample's expression map into canonical Gaussians."""
        expr_code = self.net.encode_expression(batch["uv_expression"]).code
        id_code = self.identity_code()
        maps = self.net.decode(id_code.expand(expr_code.shape[0], *id_code.shape[1:]), expr_code)
        return self.assembler(self.net, maps)

    def canonical(self, batch: Batch) -> tuple[Gaussians, MeshBinding]:
        assembled = self.assemble(batch)
        return assembled.gaussians, assembled.binding

    def forward(self, batch: Batch) -> InversionOutputs:
        assembled = self.assemble(batch)
        render = render_batch(batch, assembled.gaussians, assembled.binding, self.head, self.render_backend)
        return InversionOutputs(render=render, assembled=assembled)

    def compute_losses(self, batch: Batch, outputs: InversionOutputs) -> dict[str, Tensor]:
        """Named inversion loss terms and their total ``"loss"``."""
        hp, rgb, assembled = self.hparams, outputs.render.rgb, outputs.assembled
        photo = self.photometric(rgb.flatten(0, 1), batch["image"].flatten(0, 1))
        g = assembled.gaussians
        reg = self.regularizer(assembled.d_position, assembled.d_scale, assembled.d_opacity, g.sh.flatten(0, 1))
        terms = {"photometric": photo.total, "l1": photo.l1, "reg": reg.total}
        total = photo.total + hp.reg_weight * reg.total
        if self.identity_loss is not None:
            ident = self.identity_loss(rgb.flatten(0, 1), batch["image"].flatten(0, 1), batch["mask"].flatten(0, 1))
            terms.update(id=ident.id, arc=ident.arc)
            total = total + hp.id_weight * ident.id + hp.arc_weight * ident.arc
        terms["loss"] = total
        return terms

    @torch.no_grad()
    def capture_identity(self, batch: Batch) -> None:
        """Store the subject's UV inputs (texture back-projected from the inputs, neutral positions)."""
        self.x_tex.copy_(batch["uv_texture"][:1])
        self.x_verts.copy_(batch["uv_position"][:1])
        self.identity_captured.fill_(True)

    # ------------------------------------------------------------------------------ Lightning
    @property
    def min_steps_before_stopping(self) -> int:
        """Early stopping waits until stage 1 is over and stage 2 has run as long again: a plateau of
        the stage-1 loss must not end the run before stage 2 (:mod:`avatar_lightning.lit.stopping`)."""
        return 2 * self.stage1_steps

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        if not bool(self.identity_captured):
            validate_batch(batch, require_uv=True)
            self.capture_identity(batch)
        super().on_train_batch_start(batch, batch_idx)
        if int(self.stage) == 1 and self.global_step >= self.stage1_steps:
            self.switch_to_stage2()

    def track_training_step(self, batch: Batch, outputs: InversionOutputs, losses: dict[str, Tensor]
                            ) -> dict[str, Any]:
        """The stage, and the loss per stage (SynShot Fig. 11, kept in :attr:`loss_history` too)."""
        stage, loss = int(self.stage), losses["loss"].detach()
        self.loss_history.append((self.global_step, stage, float(loss)))
        return {"train/stage": float(stage), f"train/loss_stage{stage}": loss}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # One Adam, one group per stage: frozen parameters get no gradient, and Adam skips those.
        return torch.optim.Adam([{"params": self.stage_parameters(1), "lr": self.hparams.lr_stage1},
                                 {"params": self.stage_parameters(2), "lr": self.hparams.lr_stage2}])

    def output_metrics(self) -> dict[str, Any]:
        """Run facts written into ``metrics.json`` beside the held-out scores."""
        return {**super().output_metrics(), "stage1_steps": self.stage1_steps}

    # ---------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["inversion"] = {"loss_history": self.loss_history}

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse resuming on another prior's network."""
        saved_prior = (checkpoint.get("hyper_parameters") or {}).get("prior_hparams")
        if saved_prior and self.hparams.get("prior_hparams"):
            refuse_other_shape("SynShotInversion (its prior)", saved_prior, self.hparams.prior_hparams,
                               ("net", "part_samples", "head_model", "n_shape", "n_expr"))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("inversion", {})
        self.loss_history = list(state.get("loss_history", []))
        stage = int(checkpoint["state_dict"].get("stage", torch.tensor(1)))
        self.apply_stage(stage)
