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
their EMA statistics and restarting "dead" codes from the few inputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from avatar_lightning.batch import validate_batch
from avatar_lightning.lit.assemble import Assembled
from avatar_lightning.lit.avatar_common import (
    AvatarCheckpointMixin,
    AvatarEvalMixin,
    eval_metrics,
    refuse_other_shape,
)
from avatar_lightning.lit.render_step import MeshBinding, render_batch
from avatar_lightning.lit.synshot_prior import SynShotPrior
from avatar_lightning.losses import PhotometricLoss
from avatar_lightning.losses.identity import IdentityLoss, SFaceIdentityLoss
from avatar_lightning.models.synshot import SynShotNet
from avatar_lightning.render import Gaussians

log = logging.getLogger(__name__)

#: the paper's components each stage trains (names of ``SynShotNet.paper_modules``).
STAGE1_MODULES = ("E_id",)
STAGE2_PREFIXES = ("D_feat", "D_id", "D_expr", "R_color/", "R_gauss/")


def find_prior_checkpoint(spec: str | os.PathLike = "latest", runs_dir: str | os.PathLike = "runs",
                          min_steps: int = 100, allow_untrained: bool = False) -> Path:
    """Resolve the prior checkpoint to invert, and say which one it is (path, step, run config).

    Args:
        spec: a ``.ckpt`` path, or ``"latest"``: the newest checkpoint under ``runs_dir`` that holds
            a SynShot prior (its state dict has the identity encoder ``net.enc_id``).
        runs_dir: where ``lightning fit -c experiments/prior.yaml`` writes its runs.
        min_steps: ``"latest"`` refuses a prior trained for fewer optimiser steps than this (a shrunk
            or smoke-test run's checkpoint is newer than a real one and would otherwise be inverted
            silently). A checkpoint that records no step (not written by Lightning) is taken, with
            its step reported as unknown.
        allow_untrained: take an under-trained ``"latest"`` anyway. A path given as ``spec`` is the
            user's explicit choice and is never refused (only warned about).

    Raises:
        FileNotFoundError: naming the path, or ``runs_dir`` and what was looked for.
        ValueError: ``"latest"`` is an under-trained prior, naming it, its step and how to proceed.
    """
    def load(path: Path) -> dict[str, Any] | None:
        try:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except Exception as err:  # a half-copied or foreign file: skip it, say so
            log.warning("skipping unreadable checkpoint %s (%s)", path, err)
            return None

    def describe(path: Path, state: dict[str, Any]) -> str:
        step = state.get("global_step")
        config = next((d / "config.yaml" for d in (path.parent, path.parent.parent) if (d / "config.yaml").is_file()),
                      None)
        net = dict(state.get("hyper_parameters", {}).get("net") or {})
        size = {k: net[k] for k in ("map_resolution", "feature_channels") if k in net}
        return (f"{path} (global_step {'unknown' if step is None else step}, epoch {state.get('epoch', 'unknown')}, "
                f"net {size or 'unknown'}, config {config or 'not found beside it'})")

    if str(spec) != "latest":
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"prior checkpoint not found: {path}")
        state = load(path) or {}
        rank_zero_info(f"SynShotInversion: inverting the prior {describe(path, state)}")
        if state.get("global_step") is not None and state["global_step"] < min_steps:
            rank_zero_warn(f"the prior {path} was trained for {state['global_step']} steps only (< {min_steps})")
        return path
    root = Path(runs_dir)
    candidates = sorted(root.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    for path in candidates:
        state = load(path)
        if state is None or not any(k.startswith("net.enc_id.") for k in state.get("state_dict", {})) or (
                "prior_hparams" in state.get("hyper_parameters", {})):
            continue
        step = state.get("global_step")
        if step is not None and step < min_steps and not allow_untrained:
            raise ValueError(f"prior_checkpoint=latest found {describe(path, state)}: trained for {step} steps "
                             f"(< {min_steps}), which looks like a shrunk or interrupted run, not a trained prior. "
                             f"Train one (lightning fit -c experiments/prior.yaml), or pass the checkpoint you mean "
                             f"as prior_checkpoint=PATH (an explicit path is used as given).")
        rank_zero_info(f"SynShotInversion: prior_checkpoint=latest is {describe(path, state)}")
        return path
    raise FileNotFoundError(f"no SynShot prior checkpoint (*.ckpt with net.enc_id weights) under {root.resolve()}; "
                            "train one first: lightning fit -c experiments/prior.yaml, or pass prior_checkpoint=PATH")


class SynShotInversion(AvatarCheckpointMixin, AvatarEvalMixin, LightningModule):
    """Invert a trained SynShot prior onto a few images of one subject (pivotal tuning, §3.3).

    Args:
        prior_checkpoint: path of a ``SynShotPrior`` checkpoint, or ``"latest"`` (newest under ``runs_dir``).
        runs_dir: where ``"latest"`` looks.
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
        self.eval_scores = eval_metrics()
        self.n_input_frames = 0
        self.inputs: dict[str, Tensor] | None = None
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

    def assemble(self, batch: Mapping[str, Tensor]) -> Assembled:
        """Decode the subject's code with each sample's expression map into canonical Gaussians."""
        expr_code = self.net.encode_expression(batch["uv_expression"]).code
        id_code = self.identity_code()
        maps = self.net.decode(id_code.expand(expr_code.shape[0], *id_code.shape[1:]), expr_code)
        return self.assembler(self.net, maps)

    def canonical(self, batch: Mapping[str, Tensor]) -> tuple[Gaussians, MeshBinding]:
        assembled = self.assemble(batch)
        return assembled.gaussians, assembled.binding

    @torch.no_grad()
    def capture_identity(self, batch: Mapping[str, Tensor]) -> None:
        """Store the subject's UV inputs (texture back-projected from the inputs, neutral positions)."""
        self.x_tex.copy_(batch["uv_texture"][:1])
        self.x_verts.copy_(batch["uv_position"][:1])
        self.identity_captured.fill_(True)

    # ------------------------------------------------------------------------------ Lightning
    def on_train_start(self) -> None:
        self.n_input_frames = self.count_input_frames()

    @property
    def min_steps_before_stopping(self) -> int:
        """Early stopping (``callbacks.EMAEarlyStopping``) waits until stage 1 is over and stage 2 has
        run as long again: a plateau of the stage-1 loss must not end the run before stage 2."""
        return 2 * self.stage1_steps

    def on_train_batch_start(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        if not bool(self.identity_captured):
            validate_batch(batch, require_uv=True)
            self.capture_identity(batch)
        self.remember_inputs(batch)
        if int(self.stage) == 1 and self.global_step >= self.stage1_steps:
            self.switch_to_stage2()

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        assembled = self.assemble(batch)
        render = render_batch(batch, assembled.gaussians, assembled.binding, self.head, self.render_backend)
        terms = self.losses(batch, assembled, render.rgb)
        stage = int(self.stage)
        logs = {f"train/{k}": v.detach() for k, v in terms.items()} | {
            "train/stage": float(stage), f"train/loss_stage{stage}": terms["loss"].detach()}
        self.log_dict(logs, on_step=True, prog_bar=False, batch_size=batch["image"].shape[0])
        self.loss_history.append((self.global_step, stage, float(terms["loss"])))
        return terms["loss"]

    def losses(self, batch: Mapping[str, Tensor], assembled: Assembled, rgb: Tensor) -> dict[str, Tensor]:
        """Named inversion loss terms and their total ``"loss"``; rgb: ``[B, V, 3, H, W]``."""
        hp = self.hparams
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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved_prior = (checkpoint.get("hyper_parameters") or {}).get("prior_hparams")
        if saved_prior and self.hparams.get("prior_hparams"):  # resuming on another prior's network
            refuse_other_shape("SynShotInversion (its prior)", saved_prior, self.hparams.prior_hparams,
                               ("net", "part_samples", "head_model", "n_shape", "n_expr"))
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("inversion", {})
        self.loss_history = list(state.get("loss_history", []))
        stage = int(checkpoint["state_dict"].get("stage", torch.tensor(1)))
        self.apply_stage(stage)
