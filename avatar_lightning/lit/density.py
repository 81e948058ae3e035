"""GaussianAvatars' adaptive density control for mesh-bound Gaussians (3DGS §5, GaussianAvatars §3.3).

Clone small / split large Gaussians whose view-space positional gradient exceeds a threshold, prune
transparent ones (never emptying a triangle), optionally reset opacities; children keep their
parent's binding (triangle and barycentric point), and Adam's moments follow the rows they belong to.
:class:`DensityControlMixin` adds it to a LightningModule that stores its Gaussians as the
per-row tensors named in :data:`GAUSSIAN_PARAMS` / :data:`GAUSSIAN_BUFFERS` (the no-prior baseline,
:class:`avatar_lightning.lit.baseline.GaussianAvatarBaseline`, whose ``densify_*`` arguments
document the schedule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from avatar_lightning.batch import SCHEMA
from avatar_lightning.head.gaussians import point_transforms
from avatar_lightning.lit.render_step import render_batch
from avatar_lightning.render import Cameras, RenderOutput, quat_to_rotmat

#: Per-Gaussian parameters ``[N, ...]`` (one Adam group each) and buffers; densification edits all rows alike.
GAUSSIAN_PARAMS = ("xyz", "rotation", "log_scale", "opacity_logit", "sh_dc", "sh_rest")
GAUSSIAN_BUFFERS = ("binding_face", "binding_bary", "grad_accum", "grad_count")
#: Batch keys with a view axis ``[B, V, ...]``.
VIEW_KEYS = tuple(k for k, (pattern, _) in SCHEMA.items() if pattern[:2] == ("B", "V"))


def split_views(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``[B, V]`` samples as ``B·V`` single-view samples ``[B·V, 1]`` (same images, same order), so
    that every view poses its own copy of the Gaussians and gets its own positional gradient."""
    v = batch["image"].shape[1]
    return {k: t.flatten(0, 1)[:, None] if k in VIEW_KEYS else t.repeat_interleave(v, 0) for k, t in batch.items()}


def screen_gradient_norm(grad: Tensor, linear: Tensor, posed: Tensor, K: Tensor, world_to_cam: Tensor,
                         width: int, height: int) -> tuple[Tensor, Tensor]:
    """Proxy of 3DGS's view-space positional gradient ``‖∂L/∂μ₂D‖`` (NDC units), per view and Gaussian.

    3DGS §5 (and GaussianAvatars) accumulate the gradient of the loss w.r.t. the projected 2D means,
    in NDC units (Inria's ``dL_dmean2D``, i.e. pixel gradient × W/2, as gsplat normalises it). The
    torch rasteriser exposes no 2D means, so this uses the exact gradient of each view's loss w.r.t.
    the Gaussian's *canonical* mean, mapped back through the LBS transform (posed = A μ + t, so
    ``∂L/∂μ_world = A⁻ᵀ ∂L/∂μ``) and the camera rotation, and keeps its image-plane part scaled by
    depth / focal: ``∂L/∂u ≈ z/fx · ∂L/∂x_cam``. It equals the 2D-mean gradient when the mean reaches
    the loss only through its projection; it omits the (small) paths through the projection Jacobian
    of the 2D covariance and through the SH view direction.

    Args:
        grad: Tensor  # [V, N, 3] ∂L/∂μ of each view's own copy of the canonical means.
        linear: Tensor  # [V, N, 3, 3] linear part A of each Gaussian's posing transform.
        posed: Tensor  # [V, N, 3] posed world-space means.
        K: Tensor  # [V, 3, 3]
        world_to_cam: Tensor  # [V, 4, 4] OpenCV.
        width: image width W.
        height: image height H.

    Returns:
        ``(norm [V, N], visible [V, N] bool)``; visible stands in for 3DGS's ``radii > 0``: in front
        of the near plane and projected within the rasteriser's clamp margin (15 % of the image).
    """
    g_world = torch.linalg.solve(linear.transpose(-1, -2), grad[..., None])  # [V, N, 3, 1]
    rot = world_to_cam[:, None, :3, :3]
    g_cam = (rot @ g_world)[..., 0]
    cam = (rot @ posed[..., None])[..., 0] + world_to_cam[:, None, :3, 3]
    z = cam[..., 2]
    fx, fy, cx, cy = K[:, None, 0, 0], K[:, None, 1, 1], K[:, None, 0, 2], K[:, None, 1, 2]
    ndc = torch.stack([g_cam[..., 0] * z / fx * width / 2, g_cam[..., 1] * z / fy * height / 2], -1)
    z_safe = z.clamp_min(Cameras.near)
    u, v = fx * cam[..., 0] / z_safe + cx, fy * cam[..., 1] / z_safe + cy
    inside = (u > -0.15 * width) & (u < 1.15 * width) & (v > -0.15 * height) & (v < 1.15 * height)
    return ndc.norm(dim=-1), (z > Cameras.near) & inside


def swap_adam_rows(optimizer: torch.optim.Optimizer, old: Tensor, new: Tensor, keep: Tensor, added: int) -> None:
    """Point ``optimizer`` at ``new`` instead of ``old``: moments of the ``keep`` rows are carried,
    the ``added`` rows appended after them start at zero (3DGS's ``_prune_optimizer`` then
    ``cat_tensors_to_optimizer``). ``keep``: ``[N_old]`` bool; ``new``: ``[keep.sum() + added, ...]``."""
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is None:
        return

    def rows(t: Tensor) -> Tensor:
        return torch.cat([t[keep], t.new_zeros((added, *t.shape[1:]))])

    optimizer.state[new] = {k: rows(v) if torch.is_tensor(v) and v.dim() and v.shape[0] == keep.shape[0] else v
                            for k, v in state.items()}


class DensityControlMixin:
    """Adaptive density control for a LightningModule with per-row Gaussian tensors (module docstring).

    The host provides ``hparams.densify*`` / ``prune_opacity`` / ``opacity_reset_interval``,
    ``template_face_scale``, ``canonical``, ``head``, ``render_backend`` and the tensors of
    :data:`GAUSSIAN_PARAMS` / :data:`GAUSSIAN_BUFFERS`, and sets ``_tracked = None`` and
    ``_density_step = -1`` in ``__init__``.
    """

    @property
    def tracking_gradients(self) -> bool:
        """Whether this step accumulates densification statistics (3DGS: until ``densify_until``)."""
        return bool(self.hparams.densify) and self.training and self.global_step < self.hparams.densify_until

    @property
    def min_steps_before_stopping(self) -> int:
        """Read by ``callbacks.EMAEarlyStopping``: no plateau stop before densification has ended and
        the last round has had one interval to settle (each round briefly raises the loss: clones
        double the opacity where they sit, so the EMA's best would otherwise predate the last one)."""
        hp = self.hparams
        return int(hp.densify_until + hp.densify_interval) if hp.densify else 0

    def render_tracked(self, views: Mapping[str, Tensor]) -> RenderOutput:
        """:meth:`render` of single-view samples (:func:`split_views`), keeping what
        :meth:`on_after_backward` needs to turn each view's positional gradient into
        :func:`screen_gradient_norm`."""
        gaussians, binding = self.canonical(views)
        gaussians.means.retain_grad()
        with torch.no_grad():
            mesh = self.head(views["shape"].float(), views["expr"].float(), views["pose"].float(),
                             views["translation"].float())
            transforms = point_transforms(mesh.vertex_transforms, self.head.faces, binding)  # [V, N, 4, 4]
        self._tracked = {"means": gaussians.means, "transforms": transforms, "K": views["K"][:, 0],
                         "world_to_cam": views["world_to_cam"][:, 0], "image": views["image"]}
        return render_batch(views, gaussians, binding, self.head, self.render_backend)

    def on_after_backward(self) -> None:
        tracked, self._tracked = self._tracked, None
        if tracked is None or tracked["means"].grad is None:
            return
        means, transforms = tracked["means"], tracked["transforms"]
        height, width = tracked["image"].shape[-2:]
        with torch.no_grad():
            posed = (transforms[..., :3, :3] @ means.float()[..., None])[..., 0] + transforms[..., :3, 3]
            norm, visible = screen_gradient_norm(means.grad.float(), transforms[..., :3, :3], posed, tracked["K"],
                                                 tracked["world_to_cam"], int(width), int(height))
            # the loss averages its V images; 3DGS's statistics are gradients of a one-image loss
            norm = torch.nan_to_num(norm) * means.shape[0]
            self.grad_accum += (norm * visible).sum(0)
            self.grad_count += visible.sum(0)

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        hp, step = self.hparams, self.global_step
        if not hp.densify or step >= hp.densify_until or step == self._density_step:
            return  # (the same step again: a micro-batch of gradient accumulation, no optimiser step)
        self._density_step = step
        if step > hp.densify_from and step % hp.densify_interval == 0:
            self.log_dict({f"densify/{k}": float(v) for k, v in self.densify_and_prune().items()})
        if hp.opacity_reset_interval > 0 and step % hp.opacity_reset_interval == 0:
            self.reset_opacity()

    def _optimizer(self, optimizer: torch.optim.Optimizer | None) -> torch.optim.Optimizer | None:
        """The given optimiser, else the attached trainer's (None outside a fit)."""
        if optimizer is not None or self._trainer is None or not self._trainer.optimizers:
            return optimizer
        return self._trainer.optimizers[0]

    def _set_gaussians(self, keep: Tensor, new: Mapping[str, Tensor], optimizer: torch.optim.Optimizer | None) -> None:
        """Keep rows ``keep`` (``[N]`` bool) of every per-Gaussian tensor, then append ``new`` rows."""
        opt = self._optimizer(optimizer)
        for name in GAUSSIAN_PARAMS + GAUSSIAN_BUFFERS:
            old = getattr(self, name)
            value = torch.cat([old.detach()[keep], new[name].to(old)])
            if name in GAUSSIAN_PARAMS:
                value = nn.Parameter(value)
                if opt is not None:
                    swap_adam_rows(opt, old, value, keep, new[name].shape[0])
            setattr(self, name, value)

    def _rows(self, mask: Tensor) -> dict[str, Tensor]:
        """Copies of the ``mask`` rows of every per-Gaussian tensor (statistics zeroed)."""
        rows = {name: getattr(self, name).detach()[mask] for name in GAUSSIAN_PARAMS + GAUSSIAN_BUFFERS}
        return {**rows, "grad_accum": torch.zeros_like(rows["grad_accum"]),
                "grad_count": torch.zeros_like(rows["grad_count"])}

    @torch.no_grad()
    def clone_gaussians(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """3DGS §5 clone: append a copy of each ``mask`` Gaussian (``[N]`` bool), on the same triangle."""
        self._set_gaussians(torch.ones_like(mask), self._rows(mask), optimizer)

    @torch.no_grad()
    def split_gaussians(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None, children: int = 2) -> None:
        """3DGS §5 split: replace each ``mask`` Gaussian by ``children`` Gaussians whose local positions
        are sampled from the parent's Gaussian and whose scales are the parent's / (0.8 · children),
        i.e. / 1.6 for two; they inherit its triangle, barycentric point, rotation, colour, opacity."""
        rows = {k: v.repeat(children, *([1] * (v.dim() - 1))) for k, v in self._rows(mask).items()}
        scale = rows["log_scale"].exp()
        rot = quat_to_rotmat(rows["rotation"])
        rows["xyz"] = rows["xyz"] + (rot @ (scale * torch.randn_like(scale))[..., None])[..., 0]
        rows["log_scale"] = torch.log(scale / (0.8 * children))
        self._set_gaussians(~mask, rows, optimizer)

    @torch.no_grad()
    def prune_gaussians(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None) -> Tensor:
        """Remove the ``mask`` Gaussians, except those of a triangle that would be left with none
        (GaussianAvatars' ``prune_points``). Returns the ``[N]`` bool mask actually removed."""
        faces = self.template_face_scale.shape[0]
        face = self.binding_face
        total = torch.bincount(face, minlength=faces)
        removed = torch.bincount(face[mask], minlength=faces)
        mask = mask & (total > removed)[face]
        self._set_gaussians(~mask, self._rows(torch.zeros_like(mask)), optimizer)
        return mask

    @torch.no_grad()
    def reset_opacity(self, optimizer: torch.optim.Optimizer | None = None, ceiling: float = 0.01) -> None:
        """3DGS §5: cap opacities at ``ceiling`` and zero their Adam moments."""
        self.opacity_logit.clamp_(max=math.log(ceiling / (1 - ceiling)))
        opt = self._optimizer(optimizer)
        for value in (opt.state.get(self.opacity_logit, {}) if opt is not None else {}).values():
            if torch.is_tensor(value) and value.shape == self.opacity_logit.shape:
                value.zero_()

    @torch.no_grad()
    def densify_and_prune(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
        """One round of adaptive density control from the statistics since the last one (3DGS's
        ``densify_and_prune``: clone, then split, then prune); the statistics restart at zero.

        Returns:
            How many Gaussians were cloned, split and pruned, and how many there are now.
        """
        hp = self.hparams
        grads = self.grad_accum / self.grad_count.clamp_min(1)
        size = self.log_scale.exp().amax(-1) * self.template_face_scale[self.binding_face]
        large = size > hp.densify_split_scale * self.template_face_scale.mean()
        clone, split = (grads >= hp.densify_grad_threshold) & ~large, (grads >= hp.densify_grad_threshold) & large
        self.clone_gaussians(clone, optimizer)
        self.split_gaussians(torch.cat([split, split.new_zeros(int(clone.sum()))]), optimizer)
        pruned = self.prune_gaussians(torch.sigmoid(self.opacity_logit) < hp.prune_opacity, optimizer)
        self.grad_accum.zero_()
        self.grad_count.zero_()
        return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int(pruned.sum()),
                "gaussians": self.num_gaussians}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resize every per-Gaussian tensor to the checkpoint's N before its state dict is loaded."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for before, now in (("binding", "binding_face"), ("barycentric", "binding_bary")):  # older checkpoints
            if before in state:
                state[now] = state.pop(before)
        n = state["binding_face"].shape[0]
        for name in ("grad_accum", "grad_count"):  # checkpoints written before densification existed
            state.setdefault(name, torch.zeros(n))
        for name in GAUSSIAN_PARAMS + GAUSSIAN_BUFFERS:
            old = getattr(self, name)
            value = old.new_empty((n, *old.shape[1:]))
            setattr(self, name, nn.Parameter(value) if name in GAUSSIAN_PARAMS else value)
