"""No-prior baseline: triangle frames, binding invariants, gradients and a tiny CPU fit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, Dataset

from avatar_lightning.batch import validate_batch
from avatar_lightning.lit.baseline import GaussianAvatarBaseline, barycentric_samples, face_frames
from avatar_lightning.render import intrinsics_from_fov, orbit_cameras
from callbacks import EMAEarlyStopping


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
    assert g.num_gaussians == model.num_gaussians == 2 * len(torch.unique(model.binding))
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
    assert (verts1 - verts0)[0, model.head.faces[model.binding]].abs().max() > 1e-4, "expression must move the nose"
    b = model.binding
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
    loss = model.photometric_loss(model.render(batch), batch)
    (loss + model.regularizers()).backward()
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


def test_tiny_fit_lowers_the_loss_and_checkpoints_without_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = GaussianAvatarBaseline(regions=["nose"], render_backend="torch")
    with torch.no_grad():
        teacher.sh_dc.normal_(0, 1)
        teacher.opacity_logit.fill_(2.0)
    sample = {k: v[0] for k, v in make_batch(teacher.head, size=16).items()}
    with torch.no_grad():
        sample["image"] = teacher.render({k: v[None] for k, v in sample.items()}).rgb[0]
    student = GaussianAvatarBaseline(regions=["nose"], render_backend="torch", lr_color=0.1)
    loader = DataLoader(Repeat(sample, 3), batch_size=1)  # repeats: still 2 distinct input images
    batch = next(iter(loader))
    with torch.no_grad():
        before = float(student.photometric_loss(student.render(batch), batch))
    stopper = EMAEarlyStopping(warmup_steps=2, patience=100, max_steps_per_frame=4)
    trainer = Trainer(max_steps=50, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=[stopper])
    trainer.fit(student, loader)
    assert student.n_input_frames == 2  # one sample x two views
    assert trainer.global_step == 8, "the EMA callback's budget is 4 steps x 2 input images"
    with torch.no_grad():
        after = float(student.photometric_loss(student.render(batch), batch))
    assert after < before
    ckpt = tmp_path / "b.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert not any(k.startswith("head.") for k in state) and "binding" in state
    restored = GaussianAvatarBaseline.load_from_checkpoint(ckpt)
    assert torch.equal(restored.sh_dc, student.sh_dc) and math.isfinite(after)
