"""No-prior baseline: triangle frames, binding invariants, gradients and a tiny CPU fit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, Dataset

from avatar_lightning.batch import validate_batch
from avatar_lightning.lit.base import Outputs
from avatar_lightning.lit.baseline import GaussianAvatarBaseline, barycentric_samples, face_frames
from avatar_lightning.render import intrinsics_from_fov, orbit_cameras
from callbacks import EMAEarlyStopping
from tests.dummy import FewInputs


def random_rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.det(q))


def make_batch(head, views: int = 2, size: int = 24, frame: int = 0, expr_scale: float = 0.0,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """A schema batch (B = 1) looking at the built-in head from ``views`` orbit cameras (image = grey)."""
    g = torch.Generator().manual_seed(seed)
    w2c = orbit_cameras(views, 0.55, 0.0, (0.0, -0.02, 0.0), start_azimuth_deg=-30, arc_deg=60)
    batch = {
        "image": torch.full((1, views, 3, size, size), 0.5), "mask": torch.ones(1, views, 1, size, size),
        "K": intrinsics_from_fov(30.0, size, size).expand(1, views, 3, 3).clone(), "world_to_cam": w2c[None],
        "shape": torch.zeros(1, head.n_shape), "expr": expr_scale * torch.randn(1, head.n_expr, generator=g),
        "pose": torch.zeros(1, 5, 3), "translation": torch.zeros(1, 3), "identity": torch.zeros(1, dtype=torch.long),
        "frame": torch.full((1,), frame, dtype=torch.long), "background": torch.ones(1, 3),
    }
    validate_batch(batch)
    return batch


def losses(model: GaussianAvatarBaseline, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fit's loss terms on ``batch``, rendered as evaluation renders it (no densification tracking)."""
    return model.compute_losses(batch, Outputs(render=model.render(batch)))


@pytest.fixture(scope="module")
def model() -> GaussianAvatarBaseline:
    torch.manual_seed(0)
    return GaussianAvatarBaseline(regions=["nose"], gaussians_per_face=2, sh_degree=1, render_backend="torch")


def test_face_frames_are_rotations_and_follow_rigid_and_scale_motion() -> None:
    verts = torch.randn(1, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    faces = torch.tensor([[0, 1, 2], [3, 4, 5], [0, 2, 4]])
    fr = face_frames(verts, faces)
    eye = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    assert torch.allclose(fr.rotation[0].transpose(-1, -2) @ fr.rotation[0], eye, atol=1e-12)
    assert torch.allclose(torch.det(fr.rotation[0]), torch.ones(3, dtype=torch.float64))
    q, t, k = random_rotation(2), torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64), 1.7
    moved = face_frames(k * verts @ q.T + t, faces)
    assert torch.allclose(moved.rotation, q @ fr.rotation, atol=1e-10)
    assert torch.allclose(moved.center, k * fr.center @ q.T + t, atol=1e-10)
    assert torch.allclose(moved.scale, k * fr.scale, atol=1e-10)
    # scale = (|v1 - v0| + height of v2 over that edge) / 2 on a known right triangle
    tri = torch.tensor([[[0.0, 0, 0], [2, 0, 0], [0, 4, 0]]], dtype=torch.float64)
    assert torch.allclose(face_frames(tri, torch.tensor([[0, 1, 2]])).scale, torch.tensor([[3.0]], dtype=torch.float64))


def test_barycentric_samples_inside_triangle() -> None:
    b = barycentric_samples(7)
    assert b.shape == (7, 3) and torch.allclose(b.sum(1), torch.ones(7)) and (b > 0).all()
    assert len({tuple(r.tolist()) for r in b}) == 7
    with pytest.raises(ValueError):
        barycentric_samples(0)


def test_init_places_gaussians_on_their_barycentric_points(model: GaussianAvatarBaseline) -> None:
    batch = make_batch(model.head)
    g, binding = model.canonical(batch)
    corners = model.head.v_template[model.head.faces[binding.face]]
    points = (binding.bary[..., None] * corners).sum(1)
    assert torch.allclose(g.means[0], points, atol=1e-5)
    assert g.num_gaussians == model.num_gaussians == 2 * len(torch.unique(model.binding.face))
    assert torch.allclose(g.opacities, torch.full_like(g.opacities, 0.1))


def test_bound_gaussians_follow_an_expression(model: GaussianAvatarBaseline) -> None:
    with torch.no_grad():
        model.xyz.add_(0.3 * torch.randn_like(model.xyz))  # off-surface offsets must move rigidly with the triangle
    neutral, expressive = make_batch(model.head), make_batch(model.head, expr_scale=2.0)
    g0, _ = model.canonical(neutral)
    g1, _ = model.canonical(expressive)
    verts0 = model.head.canonical(neutral["shape"], neutral["expr"])
    verts1 = model.head.canonical(expressive["shape"], expressive["expr"])
    f0, f1 = face_frames(verts0, model.head.faces), face_frames(verts1, model.head.faces)
    b = model.binding.face
    assert (verts1 - verts0)[0, model.head.faces[b]].abs().max() > 1e-4, "expression must move the nose"
    local0 = torch.einsum("nji,nj->ni", f0.rotation[0, b], g0.means[0] - f0.center[0, b]) / f0.scale[0, b, None]
    local1 = torch.einsum("nji,nj->ni", f1.rotation[0, b], g1.means[0] - f1.center[0, b]) / f1.scale[0, b, None]
    assert torch.allclose(local0, local1, atol=1e-4)
    assert torch.allclose(g1.scales[0] / f1.scale[0, b, None], g0.scales[0] / f0.scale[0, b, None], atol=1e-5)


def test_colors_from_texture(model: GaussianAvatarBaseline) -> None:
    tex = torch.zeros(3, 16, 16)
    tex[0] = 1.0  # red everywhere
    model.init_colors_from_texture(tex)
    rgb = model.sh_dc[:, 0] * 0.28209479177387814 + 0.5
    assert torch.allclose(rgb[:, 0], torch.full_like(rgb[:, 0], 0.98), atol=1e-5)
    assert torch.allclose(rgb[:, 1:], torch.full_like(rgb[:, 1:], 0.02), atol=1e-5)
    assert bool(model.colors_initialised)


def test_training_step_reaches_every_parameter(model: GaussianAvatarBaseline) -> None:
    batch = make_batch(model.head)
    batch["image"] = torch.rand_like(batch["image"])
    model.zero_grad()
    losses(model, batch)["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.sh_dc.grad.abs().sum() > 0 and model.xyz.grad.abs().sum() > 0


class Repeat(Dataset):
    def __init__(self, sample: dict[str, torch.Tensor], n: int) -> None:
        self.sample, self.n = sample, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.sample


def teacher_sample(**kwargs: object) -> dict[str, torch.Tensor]:
    """One sample (no batch dim) whose images a random nose-only teacher baseline rendered (seed 0)."""
    torch.manual_seed(0)
    teacher = GaussianAvatarBaseline(regions=["nose"], render_backend="torch", **kwargs)
    with torch.no_grad():
        teacher.sh_dc.normal_(0, 1)
        teacher.opacity_logit.fill_(2.0)
    sample = {k: v[0] for k, v in make_batch(teacher.head, size=16).items()}
    with torch.no_grad():
        sample["image"] = teacher.render({k: v[None] for k, v in sample.items()}).rgb[0]
    return sample


def test_tiny_fit_lowers_the_loss_and_checkpoints_without_head(tmp_path: Path) -> None:
    sample = teacher_sample()
    student = GaussianAvatarBaseline(regions=["nose"], render_backend="torch", lr_color=0.1)
    data = FewInputs(sample, repeat=3)  # repeats: still 2 distinct input images
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        before = float(losses(student, batch)["photometric"])
    stopper = EMAEarlyStopping(warmup_steps=2, patience=100, max_steps_per_frame=4)
    trainer = Trainer(max_steps=50, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=[stopper])
    trainer.fit(student, datamodule=data)
    assert student.n_input_frames == 2  # one sample x two views
    assert trainer.global_step == 8, "the EMA callback's budget is 4 steps x 2 input images"
    with torch.no_grad():
        after = float(losses(student, batch)["photometric"])
    assert after < before
    ckpt = tmp_path / "b.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert not any(k.startswith("head.") for k in state) and "binding_face" in state
    restored = GaussianAvatarBaseline.load_from_checkpoint(ckpt)
    assert torch.equal(restored.sh_dc, student.sh_dc) and math.isfinite(after)


# ----------------------------------------------------------------------------- densification
def small_model(**kwargs) -> GaussianAvatarBaseline:
    torch.manual_seed(0)
    return GaussianAvatarBaseline(regions=["nose"], gaussians_per_face=2, render_backend="torch", **kwargs)


def stepped_adam(model: GaussianAvatarBaseline) -> torch.optim.Adam:
    """The model's Adam after one step on a random-image loss (non-zero moments in every row)."""
    opt = model.configure_optimizers()
    batch = make_batch(model.head, size=16)
    batch["image"] = torch.rand_like(batch["image"])
    losses(model, batch)["loss"].backward()
    opt.step()
    return opt


def moments(opt: torch.optim.Adam, p: torch.nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
    return opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]


def test_clone_appends_copies_with_parent_binding_and_zero_moments() -> None:
    model = small_model()
    opt = stepped_adam(model)
    n = model.num_gaussians
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[1, 4]] = True
    names = ("xyz", "log_scale", "sh_dc", "binding_face", "binding_bary")
    before = {k: getattr(model, k).detach().clone() for k in names}
    avg_before, sq_before = (t.clone() for t in moments(opt, model.xyz))
    model.clone_gaussians(mask, opt)
    assert model.num_gaussians == n + 2
    for k, v in before.items():
        assert torch.equal(getattr(model, k)[:n], v) and torch.equal(getattr(model, k)[n:], v[mask]), k
    avg, sq = moments(opt, model.xyz)
    assert torch.equal(avg[:n], avg_before) and torch.equal(sq[:n], sq_before)
    assert avg[n:].abs().sum() == 0 and sq[n:].abs().sum() == 0 and avg_before[mask].abs().sum() > 0
    params = [g["params"][0] for g in opt.param_groups]
    assert all(any(p is q for q in params) for p in model.parameters()), "Adam must optimise the new tensors"
    assert all(opt.state[p]["exp_avg"].shape == p.shape for p in params)


def test_split_replaces_parents_by_two_smaller_children_near_them() -> None:
    model = small_model()
    opt = stepped_adam(model)
    n = model.num_gaussians
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[0, 3, 5]] = True
    parent_xyz, parent_scale = model.xyz.detach()[mask].clone(), model.log_scale.detach()[mask].exp()
    parent_binding, parent_bary = model.binding.face[mask].clone(), model.binding.bary[mask].clone()
    kept_sq = moments(opt, model.log_scale)[1][~mask].clone()
    model.split_gaussians(mask, opt)
    assert model.num_gaussians == n - 3 + 6
    children = slice(n - 3, None)
    assert torch.equal(model.binding.face[children], parent_binding.repeat(2))
    assert torch.equal(model.binding.bary[children], parent_bary.repeat(2, 1))
    assert torch.allclose(model.log_scale[children].exp(), parent_scale.repeat(2, 1) / 1.6)
    offset = (model.xyz.detach()[children] - parent_xyz.repeat(2, 1)).norm(dim=-1)
    assert (offset > 0).all() and (offset < 6 * parent_scale.amax(-1).repeat(2)).all()
    avg, sq = moments(opt, model.log_scale)
    assert torch.equal(sq[: n - 3], kept_sq) and sq[children].abs().sum() == 0 and avg[children].abs().sum() == 0


def test_prune_never_empties_a_triangle_and_keeps_moments_aligned() -> None:
    model = small_model()
    opt = stepped_adam(model)
    n = model.num_gaussians
    face_a, face_b = model.binding.face[0], model.binding.face[2]
    mask = (model.binding.face == face_a) | (model.binding.face == face_b)
    mask[torch.nonzero(model.binding.face == face_b)[0]] = False  # face_b keeps one Gaussian: the other may go
    keep_rows = ~((model.binding.face == face_b) & mask)
    sh_sq = moments(opt, model.sh_dc)[1][keep_rows].clone()
    removed = model.prune_gaussians(mask, opt)
    assert int(removed.sum()) == 1 and model.num_gaussians == n - 1
    assert int((model.binding.face == face_a).sum()) == 2, "face_a would have been emptied: none of its Gaussians go"
    assert int((model.binding.face == face_b).sum()) == 1
    assert torch.equal(moments(opt, model.sh_dc)[1], sh_sq)
    faces = torch.unique(model.binding.face)
    assert len(faces) == n // 2


def test_densify_and_prune_selects_by_gradient_and_size_and_resets_statistics() -> None:
    model = small_model(densify=True, densify_grad_threshold=1e-3, prune_opacity=0.05)
    opt = stepped_adam(model)
    n = model.num_gaussians
    with torch.no_grad():
        model.grad_count.fill_(2.0)
        model.grad_accum[[0, 1]] = 0.01  # mean 5e-3 ≥ 1e-3: densify
        model.grad_accum[2] = 1e-3  # mean 5e-4: no
        tri = model.template_face_scale
        model.log_scale[1] = math.log(4 * tri.mean() / tri[model.binding.face[1]])  # 4 mean triangle scales: split
        model.opacity_logit[5] = -10.0  # pruned (its triangle keeps its other Gaussian)
    counts = model.densify_and_prune(opt)
    assert counts == {"cloned": 1, "split": 1, "pruned": 1, "gaussians": n + 1 + 1 - 1}
    assert model.grad_accum.abs().sum() == 0 and model.grad_count.abs().sum() == 0
    assert model.grad_accum.shape == (model.num_gaussians,)
    assert all(opt.state[p]["exp_avg"].shape == p.shape for p in model.parameters())


def test_screen_gradient_proxy_equals_the_projected_mean_gradient() -> None:
    """A loss that reads a Gaussian only through its projected pixel position: the proxy recovers
    ∂L/∂u exactly (× W/2 for NDC), through a non-rigid posing transform and a rotated camera."""
    from avatar_lightning.lit.density import screen_gradient_norm

    g = torch.Generator().manual_seed(0)
    K = intrinsics_from_fov(40.0, 32, 24).double()[None]
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3], w2c[:3, 3] = random_rotation(3), torch.tensor([0.0, 0.0, 0.6], dtype=torch.float64)
    A = (torch.eye(3, dtype=torch.float64) + 0.2 * torch.randn(5, 3, 3, generator=g, dtype=torch.float64))[None]
    t = 0.01 * torch.randn(5, 3, generator=g, dtype=torch.float64)
    canonical = (0.02 * torch.randn(1, 5, 3, generator=g, dtype=torch.float64)).requires_grad_()
    posed = (A @ canonical[..., None])[..., 0] + t
    cam = posed @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam[..., :2] / cam[..., 2:] * K[0].diagonal()[:2] + K[0, :2, 2]
    weights = torch.randn(1, 5, 2, generator=g, dtype=torch.float64)
    (uv * weights).sum().backward()  # ∂L/∂u = weights
    norm, visible = screen_gradient_norm(canonical.grad, A, posed.detach(), K, w2c[None], 32, 24)
    expected = (weights * torch.tensor([16.0, 12.0], dtype=torch.float64)).norm(dim=-1)
    assert torch.allclose(norm, expected, rtol=1e-9) and visible.all()
    behind = w2c.clone()
    behind[2, 3] = -0.6
    assert not screen_gradient_norm(canonical.grad, A, posed.detach(), K, behind[None], 32, 24)[1].any()


def test_densifying_fit_changes_n_lowers_the_loss_and_round_trips_a_checkpoint(tmp_path: Path) -> None:
    """A teacher-student fit (as in the tiny fit above) densifying at steps 4, 8 and 12; its checkpoint
    (N changed) loads into a fresh module and resumes training with matching Adam state."""
    sample = teacher_sample(gaussians_per_face=3)
    student = GaussianAvatarBaseline(regions=["nose"], render_backend="torch", lr_color=0.1, densify=True,
                                     densify_from=2, densify_interval=4, densify_until=14,
                                     densify_grad_threshold=1e-4)
    loader = DataLoader(Repeat(sample, 3), batch_size=1)
    batch = next(iter(loader))
    with torch.no_grad():
        before = float(losses(student, batch)["photometric"])
    n0 = student.num_gaussians

    def trainer(steps: int) -> Trainer:
        return Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                       enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False)

    fit = trainer(20)
    fit.fit(student, loader)
    with torch.no_grad():
        after = float(losses(student, batch)["photometric"])
    assert student.num_gaussians > n0 and after < 0.7 * before
    assert student.grad_accum.shape == student.binding.face.shape == (student.num_gaussians,)
    assert all(fit.optimizers[0].state[p]["exp_avg"].shape == p.shape for p in student.parameters())
    ckpt = tmp_path / "dense.ckpt"
    fit.save_checkpoint(ckpt)
    restored = GaussianAvatarBaseline.load_from_checkpoint(ckpt)
    assert restored.num_gaussians == student.num_gaussians
    for name, value in student.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name
    with torch.no_grad():
        assert torch.allclose(restored.render(batch).rgb, student.render(batch).rgb, atol=1e-6)
    fresh = GaussianAvatarBaseline(**student.hparams)  # the initial N: resuming must resize it first
    resumed = trainer(21)
    resumed.fit(fresh, loader, ckpt_path=ckpt)
    assert resumed.global_step == 21 and fresh.num_gaussians == student.num_gaussians
    adam = resumed.optimizers[0]
    assert all(adam.state[p]["exp_avg"].shape == p.shape for p in fresh.parameters())


def test_densification_is_off_by_default_and_delays_early_stopping_when_on() -> None:
    model = small_model()
    assert not model.tracking_gradients and model.min_steps_before_stopping == 0
    assert small_model(densify=True, densify_until=450, densify_interval=30).min_steps_before_stopping == 480
