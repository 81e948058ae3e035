"""No-prior baseline: per-subject Gaussians rigged to the head mesh (GaussianAvatars / FlashAvatar style).

Each Gaussian is bound to one mesh triangle by a ``binding`` tensor — the only link between mesh and
splats — and stores its position, rotation and log-scale in that triangle's local frame. Posing is
GaussianAvatars': rotate by the local rotation, scale by the triangle's scale, then apply the face
frame (orientation + centre) of the posed mesh. The same 3 input images that the SynShot inversion
sees are the only supervision, so ``make demo`` can measure the paper's central claim: a prior
generalises to novel views and expressions where per-subject optimisation does not.

Adaptive density control (``densify=True``; GaussianAvatars §3.3 "Binding inheritance", built on
3DGS §5): every ``densify_interval`` steps between ``densify_from`` and ``densify_until``, Gaussians
whose mean view-space positional gradient exceeds ``densify_grad_threshold`` are cloned (small) or
split in two (large); children keep the parent's triangle (``binding``) and barycentric point, and
their local parameters stay in that triangle's frame. Gaussians below ``prune_opacity`` are pruned
unless that would leave their triangle without any. The Adam moments follow every change of N
(kept rows keep theirs, new rows start at zero, as 3DGS's ``cat_tensors_to_optimizer`` /
``_prune_optimizer``), and a checkpoint of any N loads (:meth:`on_load_checkpoint` resizes first).

The view-space gradient is a proxy (the torch rasteriser exposes no 2D means): see
:func:`screen_gradient_norm`. Deviations from GaussianAvatars, stated so the comparison is read
correctly: split children are sampled from the parent's own Gaussian in local (triangle-scale)
units (GaussianAvatars adds a world-unit sample to the local position); no screen-size / world-size
pruning (GaussianAvatars enables it only after the first opacity reset, at 60k of 600k steps); a
fixed ``gaussians_per_face`` start instead of one Gaussian per triangle; colours start from the
back-projected texture when the batch carries ``uv_texture`` (the same initialisation the inversion
gets), grey otherwise. Densification changes parameter shapes, so it is single-process only (the
inversion configs use ``devices: 1``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from avatar_lightning.batch import SCHEMA
from avatar_lightning.head.gaussians import point_transforms
from avatar_lightning.head.model import HeadModel, load_head_model
from avatar_lightning.lit.avatar_common import AvatarCheckpointMixin, AvatarEvalMixin, eval_metrics
from avatar_lightning.lit.render_step import MeshBinding, render_batch
from avatar_lightning.losses.photometric import PhotometricLoss
from avatar_lightning.render import (
    Cameras,
    Gaussians,
    RenderOutput,
    num_sh_bases,
    quat_multiply,
    quat_to_rotmat,
    rgb_to_sh,
    rotmat_to_quat,
)

#: Per-Gaussian parameters ``[N, ...]`` (one Adam group each) and buffers; densification edits all rows alike.
GAUSSIAN_PARAMS = ("xyz", "rotation", "log_scale", "opacity_logit", "sh_dc", "sh_rest")
GAUSSIAN_BUFFERS = ("binding", "barycentric", "grad_accum", "grad_count")
#: Batch keys with a view axis ``[B, V, ...]``.
VIEW_KEYS = tuple(k for k, (pattern, _) in SCHEMA.items() if pattern[:2] == ("B", "V"))


@dataclass
class FaceFrames:
    """Per-triangle frames of a (posed) mesh, GaussianAvatars' ``compute_face_orientation``.

    Attributes:
        rotation: Tensor  # [B, F, 3, 3] columns: first edge, normal, in-plane binormal.
        center: Tensor  # [B, F, 3] triangle centroid.
        scale: Tensor  # [B, F] mean of the first edge length and the height over it.
    """

    rotation: Tensor
    center: Tensor
    scale: Tensor


def face_frames(vertices: Tensor, faces: Tensor, eps: float = 1e-12) -> FaceFrames:
    """Orthonormal frame, centroid and size of every triangle.

    Args:
        vertices: Tensor  # [B, V, 3]
        faces: Tensor  # [F, 3] long

    Returns:
        :class:`FaceFrames`. The frame moves rigidly with the triangle, and the scale grows linearly
        with a uniform scaling of it, so bound Gaussians follow the mesh.
    """
    v0, v1, v2 = (vertices[:, faces[:, i]] for i in range(3))  # [B, F, 3] each
    a0 = F.normalize(v1 - v0, dim=-1, eps=eps)
    a1 = F.normalize(torch.cross(a0, v2 - v0, dim=-1), dim=-1, eps=eps)
    a2 = -F.normalize(torch.cross(a1, a0, dim=-1), dim=-1, eps=eps)
    rotation = torch.stack([a0, a1, a2], dim=-1)
    s0 = (v1 - v0).norm(dim=-1)
    s1 = ((v2 - v0) * a2).sum(-1).abs()
    return FaceFrames(rotation=rotation, center=(v0 + v1 + v2) / 3, scale=(s0 + s1) / 2)


def region_faces(head: HeadModel, regions: list[str]) -> Tensor:
    """``[F]`` bool: triangles whose three vertices all lie in one of ``regions`` of ``head``."""
    member = torch.zeros(head.num_vertices, dtype=torch.bool)
    for name in regions:
        if name not in head.regions:
            raise KeyError(f"head model {head.source} has no region {name!r}; it has {sorted(head.regions)}")
        member[head.regions[name]] = True
    return member[head.faces.cpu()].all(dim=1)


def barycentric_samples(count: int) -> Tensor:
    """``count`` fixed barycentric points spread over a triangle (centroid first), ``[count, 3]``."""
    if count < 1:
        raise ValueError(f"gaussians_per_face must be >= 1, got {count}")
    points = [torch.tensor([1 / 3, 1 / 3, 1 / 3])]
    # Points halfway between the centroid and each vertex, then further rings: cover the triangle.
    ring = 0
    while len(points) < count:
        t = 0.5 ** (ring // 3 + 1)
        corner = torch.zeros(3)
        corner[ring % 3] = 1.0
        points.append((1 - t) * points[0] + t * corner)
        ring += 1
    return torch.stack(points[:count])


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


class GaussianAvatarBaseline(AvatarCheckpointMixin, AvatarEvalMixin, LightningModule):
    """Per-subject Gaussians bound to head-mesh triangles, optimised from the few-shot inputs alone.

    Args:
        head_model: ``"builtin"`` or a FLAME pickle path (must be the head the data was tracked with).
        n_shape: identity coefficients S of the data.
        n_expr: expression coefficients E of the data.
        gaussians_per_face: Gaussians bound to each triangle (spread at fixed barycentric points).
        sh_degree: SH degree of the colours (GaussianAvatars: 3).
        init_opacity: initial opacity (GaussianAvatars: 0.1).
        init_scale: initial scale relative to the triangle scale, before ``sqrt(gaussians_per_face)``.
        lr_position: Adam lr of local positions (GaussianAvatars: 5e-3 with its face-scale units).
        lr_rotation: Adam lr of local rotations (GaussianAvatars: 1e-3).
        lr_scale: Adam lr of log-scales (GaussianAvatars: 1.7e-2 over 600k steps; higher here).
        lr_opacity: Adam lr of opacity logits (GaussianAvatars: 5e-2).
        lr_color: Adam lr of SH DC (GaussianAvatars: 2.5e-3; higher for a few hundred steps).
        l1_weight: photometric L1 weight (GaussianAvatars: 0.8).
        ssim_weight: photometric D-SSIM weight (GaussianAvatars: 0.2).
        position_weight: GaussianAvatars' L_position: local offsets beyond ``position_threshold``.
        position_threshold: free local offset, in triangle scales (GaussianAvatars: 1).
        scale_weight: GaussianAvatars' L_scaling: local scales beyond ``scale_threshold``.
        scale_threshold: free local scale, in triangle scales (GaussianAvatars: 0.6).
        head_seed: built-in head generator seed (must match the data).
        regions: bind Gaussians only to triangles of these head regions (e.g. ``["face"]``,
            FlashAvatar-style); None binds to every triangle.
        output_dir: where the avatar outputs go at the end of fit (None: not written).
        turntable_frames: frames of the 360° turntable video.
        expression_steps: video frames between consecutive held-out expressions.
        fps: frame rate of both videos.
        render_backend: rasteriser backend (``"auto"``, ``"torch"``, ``"gsplat"``).
        densify: adaptive density control (GaussianAvatars §3.3 / 3DGS §5; see the module docstring).
            Its schedule is scaled from 3DGS's 30k single-image steps (GaussianAvatars: 600k) to fits
            of a few hundred 3-view steps (the demo's cap is 900) as stated per argument.
        densify_from: first densification after this step (3DGS 500 = 5 intervals, GaussianAvatars
            10k = 5 intervals; here 5 × 30).
        densify_until: no statistics or densification from this step on (3DGS: half of training,
            15k of 30k; here half the demo's 900-step cap). The EMA early stopping may not stop
            before one interval later (:attr:`min_steps_before_stopping`).
        densify_interval: steps between densifications (3DGS: 100 single-view steps; a step here
            sees 3 views, so ≈ 33 → 30).
        densify_grad_threshold: mean view-space gradient (NDC units, per-image loss) above which a
            Gaussian is densified (3DGS / GaussianAvatars: 2e-4; NDC units make it resolution-free).
        densify_split_scale: Gaussians whose largest world-space scale (local scale × triangle scale
            on the template) exceeds this many mean template triangle scales are split, the others
            cloned. GaussianAvatars: ``percent_dense`` 0.01 × the camera extent (≈ 1 m on NeRSemble)
            ≈ 1 cm ≈ 1.5 mean triangle scales of a FLAME-sized head (6.1 mm for the built-in head);
            an estimate, since the extent depends on the capture rig.
        prune_opacity: Gaussians less opaque than this are pruned (3DGS / GaussianAvatars: 0.005).
        opacity_reset_interval: every this many steps (while densifying) opacities are capped at 0.01
            (3DGS 3k of 30k, GaussianAvatars 60k of 600k: 30 intervals, past ``densify_until`` here,
            so 0 = off by default).
    """

    def __init__(self, head_model: str = "builtin", n_shape: int = 20, n_expr: int = 15,
                 gaussians_per_face: int = 1, sh_degree: int = 1, init_opacity: float = 0.1,
                 init_scale: float = 0.5, lr_position: float = 5e-3, lr_rotation: float = 1e-3,
                 lr_scale: float = 5e-2, lr_opacity: float = 5e-2, lr_color: float = 2.5e-2,
                 l1_weight: float = 0.8, ssim_weight: float = 0.2, position_weight: float = 1e-2,
                 position_threshold: float = 1.0, scale_weight: float = 1.0, scale_threshold: float = 0.6,
                 head_seed: int = 0, regions: list[str] | None = None, output_dir: str | None = None,
                 turntable_frames: int = 60, expression_steps: int = 12, fps: float = 25.0,
                 render_backend: str = "auto", densify: bool = False, densify_from: int = 150,
                 densify_until: int = 450, densify_interval: int = 30, densify_grad_threshold: float = 2e-4,
                 densify_split_scale: float = 1.5, prune_opacity: float = 0.005,
                 opacity_reset_interval: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.head = load_head_model(head_model, n_shape=n_shape, n_expr=n_expr, seed=head_seed)
        self.head.requires_grad_(False)
        faces = torch.arange(self.head.faces.shape[0])
        if regions is not None:
            faces = faces[region_faces(self.head, regions)]
            if faces.numel() == 0:
                raise ValueError(f"GaussianAvatarBaseline.regions {regions} contain no whole triangle")
        bary = barycentric_samples(gaussians_per_face)  # [G, 3]
        n_faces = faces.shape[0]
        self.register_buffer("binding", faces.repeat_interleave(gaussians_per_face))
        self.register_buffer("barycentric", bary.repeat(n_faces, 1))  # [N, 3]
        self.register_buffer("colors_initialised", torch.tensor(False))
        local_xyz = self._local_positions()
        n = local_xyz.shape[0]
        # densification statistics since the last densification: Σ of view-space gradient norms, and
        # the number of views each Gaussian was visible in (3DGS's xyz_gradient_accum / denom)
        self.register_buffer("grad_accum", torch.zeros(n))
        self.register_buffer("grad_count", torch.zeros(n))
        template = face_frames(self.head.v_template[None], self.head.faces).scale[0]
        self.register_buffer("template_face_scale", template, persistent=False)  # [F]
        self._tracked: dict[str, Tensor] | None = None
        self._density_step = -1
        s0 = math.log(init_scale / math.sqrt(gaussians_per_face))
        self.xyz = nn.Parameter(local_xyz)  # [N, 3] in triangle frame, units of triangle scale
        self.rotation = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1))  # [N, 4] wxyz
        self.log_scale = nn.Parameter(torch.full((n, 3), s0))
        self.opacity_logit = nn.Parameter(torch.full((n,), math.log(init_opacity / (1 - init_opacity))))
        sh = torch.zeros(n, num_sh_bases(sh_degree), 3)
        sh[:, 0] = rgb_to_sh(torch.full((3,), 0.5))
        self.sh_dc = nn.Parameter(sh[:, :1].contiguous())
        self.sh_rest = nn.Parameter(sh[:, 1:].contiguous())
        self.photometric = PhotometricLoss(l1_weight=l1_weight, ssim_weight=ssim_weight, lpips_weight=0.0)
        self.eval_scores = eval_metrics()
        self.n_input_frames = 0
        self.inputs: dict[str, Tensor] | None = None

    @torch.no_grad()
    def _local_positions(self) -> Tensor:
        """Local coordinates of the barycentric points on the template mesh, ``[N, 3]``."""
        verts = self.head.v_template[None]
        frames = face_frames(verts, self.head.faces)
        corners = verts[0, self.head.faces[self.binding]]  # [N, 3, 3]
        points = (self.barycentric[..., None] * corners).sum(1)
        rel = points - frames.center[0, self.binding]
        local = torch.einsum("nji,nj->ni", frames.rotation[0, self.binding], rel)
        return local / frames.scale[0, self.binding, None]

    @property
    def num_gaussians(self) -> int:
        return self.binding.shape[0]

    def uv_of_gaussians(self) -> Tensor:
        """UV coordinates of each Gaussian's barycentric point, ``[N, 2]`` (OBJ convention)."""
        corners = self.head.uv_coords[self.head.uv_faces[self.binding]]  # [N, 3, 2]
        return (self.barycentric[..., None] * corners).sum(1)

    @torch.no_grad()
    def init_colors_from_texture(self, uv_texture: Tensor) -> None:
        """Set SH DC from a back-projected texture ``[3, h, w]`` sampled at each Gaussian's UV."""
        uv = self.uv_of_gaussians()
        # OBJ UV: v grows upwards, image rows downwards.
        grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], dim=-1)[None, None].to(uv_texture)
        rgb = F.grid_sample(uv_texture[None], grid, mode="bilinear", align_corners=False)[0, :, 0].T  # [N, 3]
        self.sh_dc[:, 0] = rgb_to_sh(rgb.clamp(0.02, 0.98)).to(self.sh_dc)
        self.colors_initialised.fill_(True)

    def canonical(self, batch: Mapping[str, Tensor]) -> tuple[Gaussians, MeshBinding]:
        """Gaussians on the canonical (shape + expression, unposed) mesh of each sample.

        Posing is GaussianAvatars': local rotation, then the triangle's scale, then its frame
        (orientation + centroid), here on the canonical mesh so that expressions deform the splats;
        :func:`avatar_lightning.lit.render_step.render_batch` then applies the joints' skinning.

        Args:
            batch: schema batch (``shape`` [B, S] and ``expr`` [B, E] used).

        Returns:
            Batched :class:`Gaussians` ``[B, N, ...]`` and their :class:`MeshBinding`.
        """
        verts = self.head.canonical(batch["shape"], batch["expr"])
        frames = face_frames(verts, self.head.faces)
        rot = frames.rotation[:, self.binding]  # [B, N, 3, 3]
        s = frames.scale[:, self.binding, None]  # [B, N, 1]
        b = verts.shape[0]
        means = frames.center[:, self.binding] + torch.einsum("bnij,nj->bni", rot, self.xyz) * s
        quats = quat_multiply(rotmat_to_quat(rot), F.normalize(self.rotation, dim=-1).expand(b, -1, -1))
        sh = torch.cat([self.sh_dc, self.sh_rest], dim=1)
        gaussians = Gaussians(means=means, quats=quats, scales=self.log_scale.exp() * s,
                              opacities=torch.sigmoid(self.opacity_logit).expand(b, -1), sh=sh.expand(b, *sh.shape))
        return gaussians, MeshBinding(face=self.binding, bary=self.barycentric)

    def regularizers(self) -> Tensor:
        """GaussianAvatars' L_position and L_scaling (hinged at their thresholds)."""
        hp = self.hparams
        pos = F.relu(self.xyz.norm(dim=-1) - hp.position_threshold).mean()
        scale = F.relu(self.log_scale.exp() - hp.scale_threshold).mean()
        return hp.position_weight * pos + hp.scale_weight * scale

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self.remember_inputs(batch)
        if not bool(self.colors_initialised) and "uv_texture" in batch:
            self.init_colors_from_texture(batch["uv_texture"][0])
        b = batch["image"].shape[0]
        if self.tracking_gradients:
            batch = split_views(batch)
            rendered = self.render_tracked(batch)
        else:
            rendered = self.render(batch)
        photo = self.photometric_loss(rendered, batch)
        loss = photo + self.regularizers()
        self.log_dict({"train/loss": loss, "train/photometric": photo, "train/gaussians": float(self.num_gaussians)},
                      prog_bar=True, batch_size=b)
        return loss

    # ------------------------------------------------------------------------- densification
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
        total = torch.bincount(self.binding, minlength=faces)
        removed = torch.bincount(self.binding[mask], minlength=faces)
        mask = mask & (total > removed)[self.binding]
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
        size = self.log_scale.exp().amax(-1) * self.template_face_scale[self.binding]
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
        n = state["binding"].shape[0]
        for name in ("grad_accum", "grad_count"):  # checkpoints written before densification existed
            state.setdefault(name, torch.zeros(n))
        for name in GAUSSIAN_PARAMS + GAUSSIAN_BUFFERS:
            old = getattr(self, name)
            value = old.new_empty((n, *old.shape[1:]))
            setattr(self, name, nn.Parameter(value) if name in GAUSSIAN_PARAMS else value)

    def on_train_start(self) -> None:
        self.n_input_frames = self.count_input_frames()  # the train loader exists from here on

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        groups = [(self.xyz, hp.lr_position), (self.rotation, hp.lr_rotation), (self.log_scale, hp.lr_scale),
                  (self.opacity_logit, hp.lr_opacity), (self.sh_dc, hp.lr_color), (self.sh_rest, hp.lr_color / 20)]
        return torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in groups], eps=1e-15)
