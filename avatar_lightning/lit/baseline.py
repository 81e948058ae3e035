"""No-prior baseline: per-subject Gaussians rigged to the head mesh (GaussianAvatars / FlashAvatar style).

Each Gaussian is bound to a point of one mesh triangle by its :class:`MeshBinding` (triangle and
barycentric point, the representation every module uses) — the only link between mesh and splats —
and stores its position, rotation and log-scale in that triangle's local frame. Posing is
GaussianAvatars': rotate by the local rotation, scale by the triangle's scale, then apply the face
frame (orientation + centre) of the posed mesh. The same 3 input images that the SynShot inversion
sees are the only supervision, so ``make demo`` can measure the paper's central claim: a prior
generalises to novel views and expressions where per-subject optimisation does not.

Adaptive density control (``densify=True``; GaussianAvatars §3.3 "Binding inheritance", built on
3DGS §5): every ``densify_interval`` steps between ``densify_from`` and ``densify_until``, Gaussians
whose mean view-space positional gradient exceeds ``densify_grad_threshold`` are cloned (small) or
split in two (large); children keep the parent's binding (triangle and barycentric point), and
their local parameters stay in that triangle's frame. Gaussians below ``prune_opacity`` are pruned
unless that would leave their triangle without any. The Adam moments follow every change of N
(kept rows keep theirs, new rows start at zero, as 3DGS's ``cat_tensors_to_optimizer`` /
``_prune_optimizer``), and a checkpoint of any N loads (:meth:`on_load_checkpoint` resizes first).

The density control lives in :mod:`avatar_lightning.lit.density`. The view-space gradient is a
proxy (the torch rasteriser exposes no 2D means): see
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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar_lightning.head.gaussians import MeshBinding
from avatar_lightning.head.model import HeadModel, load_head_model
from avatar_lightning.head.uv import sample_uv
from avatar_lightning.lit.avatar_common import FewShotAvatar
from avatar_lightning.lit.base import Batch, Outputs
from avatar_lightning.lit.density import DensityControlMixin, split_views
from avatar_lightning.losses.photometric import PhotometricLoss
from avatar_lightning.render import (
    Gaussians,
    num_sh_bases,
    quat_multiply,
    rgb_to_sh,
    rotmat_to_quat,
)


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


class GaussianAvatarBaseline(DensityControlMixin, FewShotAvatar):
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

    SHAPING_HPARAMS = ("head_model", "n_shape", "n_expr", "head_seed", "sh_degree", "regions")

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
        self.register_buffer("binding_face", faces.repeat_interleave(gaussians_per_face))  # [N]
        self.register_buffer("binding_bary", bary.repeat(n_faces, 1))  # [N, 3]
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

    @torch.no_grad()
    def _local_positions(self) -> Tensor:
        """Local coordinates of the barycentric points on the template mesh, ``[N, 3]``."""
        verts = self.head.v_template[None]
        frames = face_frames(verts, self.head.faces)
        face = self.binding_face
        corners = verts[0, self.head.faces[face]]  # [N, 3, 3]
        points = (self.binding_bary[..., None] * corners).sum(1)
        rel = points - frames.center[0, face]
        local = torch.einsum("nji,nj->ni", frames.rotation[0, face], rel)
        return local / frames.scale[0, face, None]

    @property
    def binding(self) -> MeshBinding:
        """The mesh point each Gaussian is bound to (its rows follow densification)."""
        return MeshBinding(face=self.binding_face, bary=self.binding_bary)

    @property
    def num_gaussians(self) -> int:
        return self.binding_face.shape[0]

    def uv_of_gaussians(self) -> Tensor:
        """UV coordinates of each Gaussian's barycentric point, ``[N, 2]`` (OBJ convention)."""
        corners = self.head.uv_coords[self.head.uv_faces[self.binding_face]]  # [N, 3, 2]
        return (self.binding_bary[..., None] * corners).sum(1)

    @torch.no_grad()
    def init_colors_from_texture(self, uv_texture: Tensor) -> None:
        """Set SH DC from a back-projected texture ``[3, h, w]`` sampled at each Gaussian's UV."""
        # zeros padding: beyond the square's edge counts as black (the setting the baseline was tuned with)
        rgb = sample_uv(uv_texture[None], self.uv_of_gaussians().to(uv_texture), padding_mode="zeros")[0].T  # [N, 3]
        self.sh_dc[:, 0] = rgb_to_sh(rgb.clamp(0.02, 0.98)).to(self.sh_dc)
        self.colors_initialised.fill_(True)

    def canonical(self, batch: Batch) -> tuple[Gaussians, MeshBinding]:
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
        face = self.binding_face
        rot = frames.rotation[:, face]  # [B, N, 3, 3]
        s = frames.scale[:, face, None]  # [B, N, 1]
        b = verts.shape[0]
        means = frames.center[:, face] + torch.einsum("bnij,nj->bni", rot, self.xyz) * s
        quats = quat_multiply(rotmat_to_quat(rot), F.normalize(self.rotation, dim=-1).expand(b, -1, -1))
        sh = torch.cat([self.sh_dc, self.sh_rest], dim=1)
        gaussians = Gaussians(means=means, quats=quats, scales=self.log_scale.exp() * s,
                              opacities=torch.sigmoid(self.opacity_logit).expand(b, -1), sh=sh.expand(b, *sh.shape))
        return gaussians, self.binding

    def forward(self, batch: Batch) -> Outputs:
        """Renders of ``batch``; while densifying, each view separately (``[B·V, 1, ...]``, same image
        order), so that every view's positional gradient can be read (:mod:`avatar_lightning.lit.density`)."""
        return Outputs(render=self.render_tracked(split_views(batch)) if self.tracking_gradients
                       else self.render(batch))

    def compute_losses(self, batch: Batch, outputs: Outputs) -> dict[str, Tensor]:
        """L_color on all images, GaussianAvatars' L_position and L_scaling (hinged at their
        thresholds), and their sum ``"loss"``."""
        hp = self.hparams
        photo = self.photometric(outputs.render.rgb.flatten(0, 1), batch["image"].flatten(0, 1)).total
        pos = F.relu(self.xyz.norm(dim=-1) - hp.position_threshold).mean()
        scale = F.relu(self.log_scale.exp() - hp.scale_threshold).mean()
        reg = hp.position_weight * pos + hp.scale_weight * scale
        return {"photometric": photo, "reg": reg, "loss": photo + reg}

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if not bool(self.colors_initialised) and "uv_texture" in batch:
            self.init_colors_from_texture(batch["uv_texture"][0])

    def track_training_step(self, batch: Batch, outputs: Outputs, losses: dict[str, Tensor]) -> dict[str, float]:
        return {"train/gaussians": float(self.num_gaussians)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        groups = [(self.xyz, hp.lr_position), (self.rotation, hp.lr_rotation), (self.log_scale, hp.lr_scale),
                  (self.opacity_logit, hp.lr_opacity), (self.sh_dc, hp.lr_color), (self.sh_rest, hp.lr_color / 20)]
        return torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in groups], eps=1e-15)
