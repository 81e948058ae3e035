"""The tracker's parts that need no MediaPipe: embedding files, the landmark head, the fitter, crops, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar_lightning.head import load_head_model
from avatar_lightning.track.cli import main
from avatar_lightning.track.embedding import (
    BUILTIN_EMBEDDING,
    LandmarkEmbedding,
    default_embedding,
    load_embedding,
    save_embedding,
)
from avatar_lightning.track.fit import FitConfig, fit_landmarks, focal_from_fov, project
from avatar_lightning.track.inputs import Crop, expand_inputs, face_crop
from avatar_lightning.track.landmark_head import LandmarkHead
from tests.real_fixtures import fixture_flame_path, fixture_head


@pytest.fixture(scope="module")
def builtin():
    return load_head_model("builtin", n_shape=20, n_expr=15)


def surface_transfer(points: torch.Tensor, head, samples: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest point of ``head``'s template surface to each of ``points`` [L, 3], by dense barycentric
    sampling of every triangle: (face [L], bary [L, 3])."""
    a, b = torch.meshgrid(torch.arange(samples + 1), torch.arange(samples + 1), indexing="ij")
    keep = (a + b) <= samples
    bary = torch.stack([a[keep], b[keep], samples - a[keep] - b[keep]], -1).float() / samples  # [K, 3]
    tri = head.v_template[head.faces]  # [F, 3, 3]
    cand = torch.einsum("kc,fcd->fkd", bary, tri).reshape(-1, 3)
    best = torch.cdist(points, cand).argmin(1)
    return best // len(bary), bary[best % len(bary)]


def flame_fixture_embedding(tmp_path, builtin) -> str:
    """A MICA-format embedding for the small FLAME fixture (the built-in head, coarsely meshed):
    the built-in embedding's template points moved onto the fixture's surface."""
    head = fixture_head()
    emb = load_embedding(BUILTIN_EMBEDDING, builtin)
    face, bary = surface_transfer(emb.points(builtin.v_template[None], builtin.faces)[0], head)
    path = tmp_path / "mediapipe_landmark_embedding.npz"
    np.savez(path, lmk_face_idx=face.numpy(), lmk_b_coords=bary.double().numpy(),
             landmark_indices=emb.landmark_indices.numpy())
    return str(path)


def test_landmark_head_equals_the_full_model(builtin):
    emb = load_embedding(BUILTIN_EMBEDDING, builtin)
    g = torch.Generator().manual_seed(0)
    shape, expr = torch.randn(3, 20, generator=g), torch.randn(3, 15, generator=g)
    pose = torch.randn(3, 5, 3, generator=g) * 0.3
    full = emb.points(builtin(shape, expr, pose).vertices, builtin.faces)
    torch.testing.assert_close(LandmarkHead(builtin, emb)(shape, expr, pose), full, atol=1e-6, rtol=0)
    assert LandmarkHead(builtin, emb).template.shape[0] < builtin.num_vertices / 4  # the point of the subset


def test_fit_recovers_noise_free_landmarks_of_a_flame_file(tmp_path, builtin):
    """A user's FLAME file + its MICA-format embedding: landmarks projected from known parameters of two
    images (one shape) are fitted back to a fraction of a pixel, with the rigid pose and the jaw
    recovered; with the landmark rows shuffled (a wrong embedding) the fit fails visibly."""
    head = load_head_model(fixture_flame_path(), n_shape=10, n_expr=8)
    emb = default_embedding(head, str(fixture_flame_path()), flame_fixture_embedding(tmp_path, builtin))
    g = torch.Generator().manual_seed(1)
    shape, expr = torch.randn(1, 10, generator=g) * 0.5, torch.randn(2, 8, generator=g) * 0.5
    pose = torch.zeros(2, 5, 3)
    pose[:, 2, 0] = torch.tensor([0.05, 0.15])
    R = torch.tensor([[0.98, 0.0, -0.2], [0.0, -1.0, 0.0], [-0.2, 0.0, -0.98]])
    R = torch.linalg.svd(R).U @ torch.linalg.svd(R).Vh  # nearest rotation: a head turned ~12°
    K = torch.tensor([[600.0, 0, 128], [0, 600, 128], [0, 0, 1]])
    lmk = emb.points(head(shape.expand(2, -1), expr, pose).vertices, head.faces)
    target = project(lmk @ R.T + torch.tensor([0.01, -0.02, 0.9]), K)  # face ≈ 100 px
    fit = fit_landmarks(head, emb, target, (256, 256), focal=600.0, config=FitConfig(fit_focal=False))
    assert fit.error_px.max() < 0.5, fit.error_px
    torch.testing.assert_close(fit.world_to_cam[:, :3, :3], R.expand(2, 3, 3), atol=0.02, rtol=0)
    torch.testing.assert_close(fit.pose[:, 2, 0], pose[:, 2, 0], atol=0.03, rtol=0)
    wrong = target[:, torch.randperm(len(emb), generator=g)]
    assert fit_landmarks(head, emb, wrong, (256, 256), focal=600.0).error_px.min() > 5.0


def test_fit_shape_priors_and_errors(builtin):
    emb = load_embedding(BUILTIN_EMBEDDING, builtin)
    with pytest.raises(ValueError, match=rf"points must have shape \[T, {len(emb)}, 2\]"):
        fit_landmarks(builtin, emb, torch.zeros(1, 5, 2), (64, 64), 100.0)
    assert focal_from_fov(90.0, 200) == pytest.approx(100.0)


def test_builtin_embedding_mirrors_symmetric_landmarks(builtin):
    """The built-in head is mirror-symmetric; landmark i and its mirror partner (measured by detecting on
    flipped renders, stored in the asset) must land on mirrored template points."""
    emb = load_embedding(BUILTIN_EMBEDDING, builtin)
    mirror = np.load(BUILTIN_EMBEDDING)["mirror"]
    assert (mirror[mirror] == np.arange(len(mirror))).all()
    pts = emb.points(builtin.v_template[None], builtin.faces)[0] * 1000  # mm
    row = {int(i): k for k, i in enumerate(emb.landmark_indices)}
    pairs = [(row[i], row[int(mirror[i])]) for i in row if int(mirror[i]) in row]
    a, b = zip(*pairs, strict=True)
    err = (pts[list(a)] * torch.tensor([-1.0, 1, 1]) - pts[list(b)]).norm(dim=-1)
    assert len(pairs) > 400
    assert err.median() < 2.0 and torch.quantile(err, 0.9) < 4.0, (err.median(), torch.quantile(err, 0.9))
    shuffled = pts[torch.randperm(len(pts), generator=torch.Generator().manual_seed(0))]
    assert (shuffled[list(a)] * torch.tensor([-1.0, 1, 1]) - shuffled[list(b)]).norm(dim=-1).median() > 20


def test_embedding_files_are_checked(tmp_path, builtin):
    emb = load_embedding(BUILTIN_EMBEDDING, builtin)
    assert len(emb) > 400 and emb.landmark_indices.max() < 478 and (emb.weights > 0).all()
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_embedding(tmp_path / "nowhere.npz", builtin)
    np.savez(tmp_path / "keyless.npz", lmk_face_idx=np.zeros(3, int))
    with pytest.raises(KeyError, match=r"keyless.npz lacks \['lmk_b_coords', 'landmark_indices'\]"):
        load_embedding(tmp_path / "keyless.npz", builtin)
    far = LandmarkEmbedding(torch.tensor([10 ** 6]), torch.tensor([[1.0, 0, 0]]), torch.tensor([1]), torch.ones(1))
    np.savez(tmp_path / "far.npz", lmk_face_idx=far.face_idx.numpy(), lmk_b_coords=far.bary.numpy(),
             landmark_indices=far.landmark_indices.numpy())
    with pytest.raises(ValueError, match="far.npz: lmk_face_idx reaches 1000000"):
        load_embedding(tmp_path / "far.npz", builtin)
    save_embedding(tmp_path / "builtin_copy.npz", emb, builtin)
    with pytest.raises(ValueError, match="builtin_copy.npz was made for another mesh topology"):
        load_embedding(tmp_path / "builtin_copy.npz", fixture_head())
    with pytest.raises(ValueError, match="needs its MediaPipe landmark embedding: pass --embedding"):
        default_embedding(fixture_head(), str(fixture_flame_path()))


def test_crop_maps_points_and_pixels_alike():
    image = np.zeros((100, 120, 3), np.uint8)
    image[40, 70] = 255  # pixel centre (70.5, 40.5)
    for crop in (Crop(50.0, 20.0, 40.0, 160), Crop(-10.3, -5.2, 150.0, 300)):
        out = crop.apply(image)[..., 0].astype(float)
        i, j = np.indices(out.shape) + 0.5
        centroid = np.array([(out * j).sum(), (out * i).sum()]) / out.sum()
        np.testing.assert_allclose(centroid, crop.points(np.array([70.5, 40.5])), atol=0.05)
    c = face_crop(np.array([[10.0, 20.0], [30.0, 60.0]]), 64, margin=2.0)
    assert (c.x0, c.y0, c.side) == (-20.0, 0.0, 80.0)


def test_input_errors_name_the_file(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="input not found: .*absent.jpg"):
        expand_inputs([tmp_path / "absent.jpg"])
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(ValueError, match="give one video alone"):
        expand_inputs([tmp_path / "a.mp4", tmp_path / "b.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images .* in folder .*empty"):
        expand_inputs([tmp_path / "empty"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert main([str(broken), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "cannot read image" in err and "broken.png" in err
    bad_video = tmp_path / "clip.mp4"
    bad_video.write_bytes(b"\x00" * 64)
    assert main([str(bad_video), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "cannot read video" in err and "clip.mp4" in err
