"""3DRealHead enrollment (paper §IV-C1, appendix B): invert a trained prior onto 1–3 neutral images.

E_id reads the identity texture back-projected from the input views (frontal first) once; its L
skip maps then become free parameters. They are optimised together with the decoder's final 1×1
layer (``StyleUNet.to_maps``); every other weight of the prior stays frozen **and in eval mode**, so
the prior's knowledge in the decoder is kept. Loss (paper Eq. 7–8; weights chosen, REALHEAD.md):

    L = λ_pho·L1 + λ_ssim·(1 − SSIM) + λ_per·LPIPS  (on the input views, as the prior's Eq. 6)
        + λ_reg·mean_valid ‖raw − raw_init‖²       (the output maps stay near their initial values)

with ``raw_init`` the decoder's maps for the inputs at initialisation. Appendix B fine-tunes in two
phases of 3 of the 6 maps each, the final layer joining in the second; which 3 come first is
ambiguous, hence ``phase_order`` (``coarse_first`` default, chosen; with L levels the L − L//2 coarsest
maps vs the L//2 finest). Phase 1 lasts ``phase1_steps_per_frame × n_input_frames`` steps; phase 2
runs until ``callbacks.EMAEarlyStopping`` stops the trainer (the contract of
:mod:`avatar_lightning.lit.stopping`, as the SynShot inversion). An optional colour affine per input
image (3×3 + bias, identity-initialised) absorbs a colour shift of out-of-distribution photos
(appendix B); it applies to the training renders only, never to the avatar.

Outputs (end of fit, atomic, :class:`~avatar_lightning.lit.avatar_common.FewShotAvatar`): a small
checkpoint (identity maps, final layer, the prior's path; not the frozen prior), a PLY, turntable
and expression MP4s and ``metrics.json`` (head-region scores of held-out expressions and cameras,
per view bucket). Dimension letters: B batch, V views, L levels, R UV side.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from avatar_lightning.batch import validate_batch
from avatar_lightning.head.gaussians import MeshBinding
from avatar_lightning.lit.avatar_common import FewShotAvatar
from avatar_lightning.lit.base import Batch
from avatar_lightning.lit.checkpoint import dataset_config, refuse_other_shape
from avatar_lightning.lit.realhead_prior import RealHeadOutputs, RealHeadPrior
from avatar_lightning.lit.render_step import head_centre, render_batch
from avatar_lightning.lit.stopping import input_frames
from avatar_lightning.losses import PhotometricLoss
from avatar_lightning.models.style_unet import MAP_CHANNELS, GaussianMaps, activate_gaussian_maps
from avatar_lightning.realhead.enrollment import (
    apply_colour_affine,
    map_regulariser,
    phase_levels,
    prior_hyper_parameters,
    read_prior_checkpoint,
)
from avatar_lightning.realhead.views import require_frontal
from avatar_lightning.render import Gaussians

#: fields the data decides (linked by the CLI) that must equal the prior's.
DATA_FIELDS = ("head_model", "n_shape", "n_expr", "uv_size")
#: the prior's fields that shape the network an enrollment checkpoint's weights fit.
PRIOR_SHAPE = (*DATA_FIELDS, "levels", "c_base", "c_max", "style_dim", "mapping_layers", "use_mouth")


#: One forward pass of the enrolled avatar: the prior's outputs (render without the colour affine).
EnrollmentOutputs = RealHeadOutputs


class RealHeadEnrollment(FewShotAvatar):
    """Enroll a subject into a trained 3DRealHead prior (paper §IV-C1; module docstring).

    Args:
        prior_checkpoint: path of a ``RealHeadPrior`` checkpoint (required; the CLI links it to the
            few-shot data, whose default subject is a held-out identity of the prior's dataset).
        head_model: the data's head model (linked from the data; None: the prior's). Must equal the prior's.
        n_shape: the data's S (linked); must equal the prior's.
        n_expr: the data's E (linked); must equal the prior's.
        uv_size: the data's conditioning map side R (linked); must equal the prior's.
        phase_order: ``coarse_first`` (chosen default), ``fine_first`` or ``joint`` (appendix B).
        phase1_steps_per_frame: phase-1 steps per input image (chosen).
        lr_identity: Adam lr of the identity skip maps (chosen).
        lr_final: Adam lr of the final decoder layer (chosen).
        pho_weight: λ_pho of L1 (as the prior, chosen 1.0).
        ssim_weight: λ_ssim of 1 − SSIM (chosen 0.2).
        lpips_weight: λ_per of LPIPS-VGG (chosen 0.1).
        reg_weight: λ_reg of the map regulariser (Eq. 8; chosen).
        colour_affine: optimise a colour affine per input image (appendix B, out-of-distribution inputs).
        lr_colour: its Adam lr.
        output_dir: where the avatar files go at the end of fit (None: not written).
        turntable_frames: frames of the 360° turntable.
        expression_steps: video frames between consecutive held-out expressions.
        fps: frame rate of both videos.
        render_backend: rasteriser backend.
        prior_hparams: the prior's hyper-parameters, recorded when it is loaded so that an enrollment
            checkpoint rebuilds (with the prior file for the frozen weights). Leave unset.
    """

    def __init__(self, prior_checkpoint: str, head_model: str | None = None, n_shape: int | None = None,
                 n_expr: int | None = None, uv_size: int | None = None, phase_order: str = "coarse_first",
                 phase1_steps_per_frame: int = 20, lr_identity: float = 1e-2, lr_final: float = 1e-3,
                 pho_weight: float = 1.0, ssim_weight: float = 0.2, lpips_weight: float = 0.1,
                 reg_weight: float = 0.1, colour_affine: bool = False, lr_colour: float = 1e-3,
                 output_dir: str | None = None, turntable_frames: int = 60, expression_steps: int = 12,
                 fps: float = 25.0, render_backend: str = "auto", prior_hparams: dict[str, Any] | None = None) -> None:
        super().__init__()
        phase_levels(1, phase_order)  # validates the name before any prior is loaded
        self.save_hyperparameters()
        self.photo = PhotometricLoss(pho_weight, ssim_weight, lpips_weight)
        self.net = None
        self.enroll_seconds = 0.0
        if prior_hparams is not None:  # restoring an enrollment checkpoint: its state dict holds the weights
            self._adopt(prior_hparams)

    # ----------------------------------------------------------------------------- the prior
    def configure_model(self) -> None:
        """Load the prior and check it against the data (Lightning calls this before fitting)."""
        if self.net is None:
            if str(self.hparams.prior_checkpoint) == "latest":  # resolved once, so a later load reads the same file
                from avatar_lightning.lit.checkpoint import find_prior_checkpoint

                self.hparams["prior_checkpoint"] = str(find_prior_checkpoint("latest", kind="realhead"))
            state = read_prior_checkpoint(self.hparams.prior_checkpoint)
            prior = prior_hyper_parameters(state)
            ours = {k: self.hparams[k] for k in DATA_FIELDS if self.hparams.get(k) is not None}
            refuse_other_shape("RealHeadEnrollment (prior_checkpoint vs the data)", prior, ours, list(ours))
            self.hparams["prior_hparams"] = prior
            self._adopt(prior, {k[4:]: v for k, v in state["state_dict"].items() if k.startswith("net.")})
            rank_zero_info(f"RealHeadEnrollment: prior {self.hparams.prior_checkpoint} "
                           f"(global_step {state.get('global_step', 'unknown')})")
        if self.hparams.colour_affine and self._trainer is not None:
            self._resize_colour(max(input_frames(self.trainer), 1))

    def _adopt(self, prior_hparams: dict[str, Any], net_state: dict[str, Tensor] | None = None) -> None:
        """Build the prior's network, head and texel binding (frozen, eval) and the enrollment parameters."""
        prior = RealHeadPrior(**{**prior_hparams, "adv_weight": 0.0, "lpips_weight": 0.0})  # no D, no LPIPS
        if net_state is not None:
            prior.net.load_state_dict(net_state)
        self.net, self.head, self.texels = prior.net, prior.head, prior.texels
        self.use_mouth = bool(prior.hparams.use_mouth)
        self.identity = nn.ParameterList(nn.Parameter(torch.zeros(1, *s)) for s in self.net.skip_shapes())
        r = self.net.resolution
        self.register_buffer("raw_init", torch.zeros(1, MAP_CHANNELS, r, r))
        self.register_buffer("phase", torch.tensor(1))
        self.register_buffer("identity_captured", torch.tensor(False))
        self.colour = nn.Parameter(torch.eye(3, 4)[None]) if self.hparams.colour_affine else None
        self.net.eval()
        self.apply_phase(1)

    def _resize_colour(self, views: int) -> None:
        if self.colour is not None and self.colour.shape[0] != views:
            self.colour = nn.Parameter(torch.eye(3, 4, device=self.colour.device)[None].repeat(views, 1, 1))

    def train(self, mode: bool = True) -> RealHeadEnrollment:
        """Keep the whole prior network (final layer included) in eval mode."""
        super().train(mode)
        if self.net is not None:
            self.net.eval()
        return self

    # -------------------------------------------------------------------------------- phases
    @property
    def phases(self) -> list[list[int]]:
        """Identity maps per phase (:func:`phase_levels`)."""
        return phase_levels(self.net.levels, self.hparams.phase_order)

    def phase_parameters(self, phase: int) -> list[nn.Parameter]:
        """What phase ``phase`` (1-based) optimises: its identity maps; the final layer in the last phase
        (appendix B); the colour affine in every phase."""
        if not 1 <= phase <= len(self.phases):
            raise ValueError(f"phase must be in 1..{len(self.phases)}, got {phase}")
        params = [self.identity[i] for i in self.phases[phase - 1]]
        if phase == len(self.phases):
            params += list(self.net.to_maps.parameters())
        return params + ([self.colour] if self.colour is not None else [])

    def apply_phase(self, phase: int) -> None:
        """Freeze everything but :meth:`phase_parameters`."""
        self.requires_grad_(False)
        for p in self.phase_parameters(phase):
            p.requires_grad_(True)
        self.phase.fill_(phase)

    @property
    def phase1_steps(self) -> int:
        """Length of phase 1 (0 for ``joint``)."""
        if len(self.phases) == 1:
            return 0
        return self.hparams.phase1_steps_per_frame * max(self.n_input_frames, 1)

    @property
    def min_steps_before_stopping(self) -> int:
        """No plateau stop before phase 2 has run as long as phase 1 (:mod:`avatar_lightning.lit.stopping`)."""
        return 2 * self.phase1_steps

    # ------------------------------------------------------------------------------- forward
    def expression_input(self, batch: Batch) -> Tensor:
        """E_expr's input ``[B, 6, R, R]``: offsets (cm) and mouth features (zeros if the prior had none)."""
        mouth = batch["uv_mouth"] if self.use_mouth else torch.zeros_like(batch["uv_mouth"])
        return torch.cat([batch["uv_expr_offset"], mouth], 1)

    def decode_raw(self, batch: Batch) -> Tensor:
        """Raw maps ``[B, 59, R, R]`` of the enrolled identity maps with each sample's expression."""
        return self.net.decode(list(self.identity), self.net.encode_expression(self.expression_input(batch)))

    def gaussians_from_raw(self, raw: Tensor, batch: Batch) -> tuple[GaussianMaps, Gaussians]:
        """Activated maps and canonical Gaussians (as :meth:`RealHeadPrior.gaussians_from_raw`)."""
        maps = activate_gaussian_maps(raw.float(), self.texels.base_scale)
        return maps, self.texels(self.head.canonical(batch["shape"].float(), batch["expr"].float()), maps)

    def canonical(self, batch: Batch) -> tuple[Gaussians, MeshBinding]:
        """Canonical Gaussians ``[B, N, ...]`` of the enrolled avatar for each sample's expression, and
        their texel binding (what :class:`FewShotAvatar` poses, renders and exports)."""
        return self.gaussians_from_raw(self.decode_raw(batch), batch)[1], self.texels.binding

    def forward(self, batch: Batch) -> EnrollmentOutputs:
        """Decode, build the Gaussians and render every view of ``batch`` (``uv_identity`` is not read:
        the enrolled identity maps replace it)."""
        raw = self.decode_raw(batch)
        maps, gaussians = self.gaussians_from_raw(raw, batch)
        render = render_batch(batch, gaussians, self.texels.binding, self.head, self.render_backend)
        return EnrollmentOutputs(render=render, raw=raw, maps=maps, gaussians=gaussians)

    def compute_losses(self, batch: Batch, outputs: EnrollmentOutputs) -> dict[str, Tensor]:
        """Photometric terms on the input views (colour affine applied when on) and the map regulariser.

        ``raw_init`` holds the initial maps of the enrollment inputs, so the regulariser is meant for
        training batches (the inputs).
        """
        pred = outputs.render.rgb
        if self.colour is not None and pred.shape[1] == self.colour.shape[0]:
            pred = apply_colour_affine(pred, self.colour)
        photo = self.photo(pred.flatten(0, 1), batch["image"].flatten(0, 1))
        reg = map_regulariser(outputs.raw, self.raw_init, self.texels.valid)
        return {"photometric": photo.total, "l1": photo.l1, "ssim": photo.ssim, "lpips": photo.lpips,
                "reg_maps": reg, "loss": photo.total + self.hparams.reg_weight * reg}

    # ------------------------------------------------------------------------------ Lightning
    @torch.no_grad()
    def capture_identity(self, batch: Batch) -> None:
        """Initialise the identity maps from E_id of the inputs' texture and record ``raw_init``.

        Raises:
            ValueError: the batch lacks the 3DRealHead keys, or its first view is not frontal.
        """
        validate_batch(batch, require_realhead=True)
        one = {k: v[:1] for k, v in batch.items()}
        require_frontal(one["world_to_cam"], one["pose"], head_centre(one, self.head)[None], 0,
                        "RealHeadEnrollment inputs")
        for param, skip in zip(self.identity, self.net.encode_identity(one["uv_identity"]), strict=True):
            param.copy_(skip)
        self.raw_init.copy_(self.decode_raw(one))
        self.identity_captured.fill_(True)

    def on_train_start(self) -> None:
        super().on_train_start()
        self._started = time.perf_counter()

    def on_train_end(self) -> None:
        self.enroll_seconds += time.perf_counter() - getattr(self, "_started", time.perf_counter())

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        if not bool(self.identity_captured):
            self.capture_identity(batch)
        super().on_train_batch_start(batch, batch_idx)
        if int(self.phase) == 1 and len(self.phases) == 2 and self.global_step >= self.phase1_steps:
            self.apply_phase(2)
            rank_zero_info(f"RealHeadEnrollment: phase 2 (maps {self.phases[1]} + final layer) "
                           f"from step {self.global_step}")

    def track_training_step(self, batch: Batch, outputs: EnrollmentOutputs, losses: dict[str, Tensor]
                            ) -> dict[str, Any]:
        """Log the phase (1 or 2) of every step."""
        return {"train/phase": float(self.phase)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # one Adam over everything enrollment may train; frozen parameters get no gradient and are skipped
        groups = [{"params": list(self.identity), "lr": self.hparams.lr_identity},
                  {"params": list(self.net.to_maps.parameters()), "lr": self.hparams.lr_final}]
        if self.colour is not None:
            groups.append({"params": [self.colour], "lr": self.hparams.lr_colour})
        return torch.optim.Adam(groups)

    def output_metrics(self) -> dict[str, Any]:
        """Run facts for ``metrics.json``: the parent's (steps, stop reason) plus phases and wall time."""
        return {**super().output_metrics(), "phase_order": self.hparams.phase_order,
                "phase1_steps": self.phase1_steps, "enroll_seconds": round(self.enroll_seconds, 3)}

    # --------------------------------------------------------------------------------- export
    @staticmethod
    def _expression_keys(inputs: Batch) -> list[str]:
        return [k for k in ("expr", "pose", "uv_expr_offset", "uv_mouth") if k in inputs]

    @staticmethod
    def _neutral(sample: Batch) -> dict[str, Tensor]:
        """The sample with zero expression offsets (the neutral frame's mouth features are kept)."""
        return {**sample, "uv_expr_offset": torch.zeros_like(sample["uv_expr_offset"])}

    def neutral_gaussians(self, sample: Batch) -> Gaussians:
        """World-space Gaussians ``[N, ...]`` at the neutral expression and rest pose (the PLY)."""
        return super().neutral_gaussians(self._neutral(sample))

    def turntable_samples(self, sample: Batch, frames: int, elevation_deg: float, chunk: int) -> list[dict]:
        """The neutral avatar seen by a 360° orbit (see :meth:`FewShotAvatar.turntable_samples`)."""
        return super().turntable_samples(self._neutral(sample), frames, elevation_deg, chunk)

    # ---------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Small checkpoints: the frozen prior's weights stay in its own file (``prior_checkpoint``)."""
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("net.") and not k.startswith("net.to_maps.")]:
            del state[key]
        checkpoint["enrollment"] = self.subject_record()

    def subject_record(self) -> dict[str, Any]:
        """Who was enrolled: the subject's identity, its dataset config and input cameras (when the fit's
        DataModule serves a few-shot split), what the driver's data reads to find the subject."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        split, source = getattr(dm, "split", None), getattr(dm, "source", None)
        if split is None:
            return {}
        return {"identity": int(split.identity), "input_cameras": list(split.input_cameras),
                "dataset": dataset_config(source)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        missing = [k for k in self.state_dict() if k.startswith("net.") and k not in state]
        if missing:  # the frozen prior weights come from the prior's own file
            prior = read_prior_checkpoint(self.hparams.prior_checkpoint)["state_dict"]
            state.update({k: prior[k] for k in missing if k in prior})
        if "colour" in state:
            self._resize_colour(state["colour"].shape[0])
        self.apply_phase(int(state.get("phase", torch.tensor(1))))

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse an enrollment checkpoint written on another prior network."""
        saved = (checkpoint.get("hyper_parameters") or {}).get("prior_hparams")
        if saved and self.hparams.get("prior_hparams"):
            refuse_other_shape("RealHeadEnrollment (its prior)", saved, self.hparams.prior_hparams, PRIOR_SHAPE)
