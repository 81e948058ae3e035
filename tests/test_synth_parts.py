"""Synthetic generator parts that need no head model: rig geometry, appearance, texture, hair binding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar_lightning.synth.appearance import HAIR_STYLES, SKIN_TONES, Appearance, sample_appearance
from avatar_lightning.synth.config import ConfigMismatchError, GeneratorConfig, check_or_write_manifest
from avatar_lightning.synth.hair import HairProxy, face_frames, pose_proxy, sample_on_faces
from avatar_lightning.synth.texture import brow_weight, fourier_noise, iris_weights


def _angles(rig):
    rel = rig.centres() - rig.target
    az = torch.rad2deg(torch.atan2(rel[:, 0], rel[:, 2]))
    el = torch.rad2deg(torch.asin(rel[:, 1] / rel.norm(dim=-1)))
    return az, el


def test_rig_is_14_frontal_plus_14_upper_hemisphere_all_looking_at_the_head() -> None:
    from avatar_lightning.synth.rig import build_rig

    target = torch.tensor([0.01, 0.02, -0.03])
    rig = build_rig(28, 96, 64, target, distance=1.0)
    assert rig.n == 28 and int(rig.frontal.sum()) == 14
    az, el = _angles(rig)
    front, upper = rig.frontal, ~rig.frontal
    assert bool((az[front].abs() <= 61).all()) and bool((el[front].abs() <= 16).all())  # in front of the face
    assert bool((el[upper] >= 19).all()) and bool((el[upper] <= 71).all())  # upper hemisphere
    assert float(az[upper].max() - az[upper].min()) > 270  # all around, the back included
    assert torch.allclose((rig.centres() - target).norm(dim=-1), torch.ones(28), atol=1e-5)
    # The target projects onto the principal point of every camera, in front of it.
    cam = torch.einsum("cij,j->ci", rig.world_to_cam[:, :3, :3], target) + rig.world_to_cam[:, :3, 3]
    pix = torch.einsum("cij,cj->ci", rig.K, cam)
    assert bool((cam[:, 2] > 0).all())
    assert torch.allclose(pix[:, :2] / pix[:, 2:], torch.tensor([32.0, 48.0]).expand(28, 2), atol=1e-3)
    # Upright cameras: world up maps to image up (negative y) for every camera.
    up_cam = rig.world_to_cam[:, :3, :3] @ torch.tensor([0.0, 1.0, 0.0])
    assert bool((up_cam[:, 1] < 0).all())


def test_rig_serialises_and_handles_other_counts() -> None:
    from avatar_lightning.synth.rig import Rig, build_rig

    rig = build_rig(5, 32, 32, torch.zeros(3))
    assert int(rig.frontal.sum()) == 3 and rig.n == 5
    back = Rig.from_dict(rig.to_dict())
    assert torch.equal(back.world_to_cam, rig.world_to_cam) and torch.equal(back.frontal, rig.frontal)
    with pytest.raises(ValueError, match="n_cameras"):
        build_rig(0, 32, 32, torch.zeros(3))


def test_appearance_is_deterministic_varied_and_serialisable() -> None:
    apps = [sample_appearance(np.random.default_rng([0, i])) for i in range(200)]
    again = sample_appearance(np.random.default_rng([0, 7]))
    assert again == apps[7]
    assert Appearance.from_dict(apps[3].to_dict()) == apps[3]
    styles = {a.hair_style for a in apps}
    assert styles == set(HAIR_STYLES)
    assert {a.beard for a in apps} >= {"none", "full"}
    luminance = np.array([np.mean(a.skin) for a in apps])
    # Skin tones span (nearly) the whole palette, from very light to very dark.
    assert luminance.min() < SKIN_TONES[-2].mean() and luminance.max() > SKIN_TONES[1].mean()


def test_fourier_noise_is_smooth_seeded_and_normalised() -> None:
    pts = torch.rand(4000, 3, dtype=torch.float64)
    a, b = fourier_noise(pts, 1, 0.5), fourier_noise(pts, 2, 0.5)
    assert torch.equal(a, fourier_noise(pts, 1, 0.5)) and not torch.allclose(a, b)
    assert 0.5 < float(a.std()) < 1.5
    near = fourier_noise(pts + 1e-4, 1, 0.5)
    assert float((near - a).abs().max()) < 0.03  # continuous: tiny moves, tiny changes


def test_iris_and_brow_masks_sit_where_they_should() -> None:
    eye = torch.tensor([0.03, 0.0, 0.0])
    d = torch.nn.functional.normalize(torch.randn(3, 50, 50), dim=0)
    pos = eye.view(3, 1, 1) + 0.012 * d
    iris, pupil = iris_weights(pos, eye)
    front = d[2] > 0.95
    assert bool((iris[front] > 0.99).all()) and bool((iris[d[2] < 0.5] == 0).all())
    assert bool((pupil <= iris + 1e-6).all())
    # Brow: on the front of the head ~2 cm above the eye, nothing at eye height.
    grid = torch.stack(torch.meshgrid(torch.linspace(0.0, 0.07, 60), torch.linspace(-0.02, 0.05, 60), indexing="xy"))
    pos = torch.cat([grid, torch.full((1, 60, 60), 0.01)])
    w = brow_weight(pos, eye, 0.006)
    ys = pos[1][w > 0.5]
    assert ys.numel() > 0 and float(ys.min()) > 0.01 and float(ys.max()) < 0.035


def _tetra() -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    return v, f


def test_face_frames_are_proper_rotations_and_areas_match() -> None:
    v, f = _tetra()
    frames, areas = face_frames(v, f)
    eye = torch.eye(3).expand(4, 3, 3)
    assert torch.allclose(frames.transpose(1, 2) @ frames, eye, atol=1e-6)
    assert torch.allclose(torch.linalg.det(frames), torch.ones(4), atol=1e-6)
    assert torch.allclose(areas, torch.tensor([0.5, 0.5, 0.5, 3**0.5 / 2]), atol=1e-6)


def test_bound_proxy_follows_a_rigid_motion_of_the_mesh() -> None:
    v, f = _tetra()
    gen = torch.Generator().manual_seed(0)
    face, bary = sample_on_faces(torch.ones(4), 50, gen)
    assert torch.allclose(bary.sum(-1), torch.ones(50)) and bool((bary >= 0).all())
    proxy = HairProxy(face=face, bary=bary, offset=torch.randn(50, 3, generator=gen) * 0.1,
                      normal=torch.nn.functional.normalize(torch.randn(50, 3, generator=gen), dim=-1),
                      colour=torch.rand(50, 3, generator=gen), radius=torch.full((50,), 0.01))
    pos, nrm = pose_proxy(proxy, v, f)
    angle = torch.tensor(0.7)
    rot = torch.tensor([[torch.cos(angle), 0, torch.sin(angle)], [0, 1, 0], [-torch.sin(angle), 0, torch.cos(angle)]])
    shift = torch.tensor([0.3, -0.2, 0.5])
    pos2, nrm2 = pose_proxy(proxy, v @ rot.T + shift, f)
    assert torch.allclose(pos2, pos @ rot.T + shift, atol=1e-5)
    assert torch.allclose(nrm2, nrm @ rot.T, atol=1e-5)
    assert len(HairProxy.cat([proxy, proxy])) == 100


def test_manifest_refuses_another_config(tmp_path) -> None:
    cfg = GeneratorConfig(identities=2, expressions=1, height=16, width=16, cameras=2)
    check_or_write_manifest(tmp_path, cfg)
    assert check_or_write_manifest(tmp_path, cfg)["config_hash"] == cfg.hash()  # same config: continue
    other = GeneratorConfig(identities=3, expressions=1, height=16, width=16, cameras=2)
    with pytest.raises(ConfigMismatchError, match="identities"):
        check_or_write_manifest(tmp_path, other)
    assert cfg.hash() != other.hash()
    assert cfg.resolved().surface_points > 0 and cfg.resolved().hair_density > 0
