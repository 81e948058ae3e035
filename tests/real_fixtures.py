"""Tiny NeRSemble (VHAP export) and INSTA (+ metrical-tracker) datasets in their published formats.

The fixtures are built from first principles, independently of the loaders: FLAME parameters and
cameras are chosen, the head is posed with the head model and its silhouette rasterised into the
foreground masks, and everything is written the way VHAP's ``export_as_nerf_dataset``, INSTA's
``scripts/transforms.py`` and metrical-tracker's ``save_checkpoint`` write it. A loader that gets a
convention wrong (camera axes, inverse, 6D rows vs columns, intrinsics scaling) then projects the
head off its mask: :func:`fraction_inside` measures that.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy.spatial.transform import Rotation
from torch import Tensor

from avatar_lightning.head.model import load_head_model
from avatar_lightning.io import atomic_path, save_image, torch_save, write_bytes, write_json
from avatar_lightning.render import look_at

GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera axes (y down, z forward) -> OpenGL (y up, z back)


@dataclass
class Truth:
    """What a fixture was built from: per-frame FLAME parameters and OpenCV cameras."""

    shape: Tensor  # [S_total]
    expr: Tensor  # [T, E_total]
    pose: Tensor  # [T, 5, 3]
    translation: Tensor  # [T, 3]
    world_to_cam: dict[int, Tensor]  # camera -> [4, 4] (INSTA: frame -> [4, 4])
    K: Tensor  # [3, 3]
    frames: list[int]


def cam_to_world_cv(eye, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """OpenCV camera-to-world [4, 4] (float64) of a camera at ``eye`` looking at ``target``, image up = +y."""
    return np.linalg.inv(look_at(torch.as_tensor(eye, dtype=torch.float64),
                                 torch.as_tensor(target, dtype=torch.float64)).numpy())


def random_flame(rng: np.random.Generator, T: int, n_shape: int, n_expr: int, shape_total: int = 300,
                 expr_total: int = 100) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Plausible random FLAME parameters; coefficients past ``n_shape``/``n_expr`` are zero."""
    shape = np.zeros(shape_total, np.float32)
    shape[:n_shape] = rng.normal(0, 0.5, n_shape)
    expr = np.zeros((T, expr_total), np.float32)
    expr[:, :n_expr] = rng.normal(0, 0.8, (T, n_expr))
    pose = np.zeros((T, 5, 3), np.float32)
    pose[:, 0] = rng.normal(0, 0.15, (T, 3))  # global
    pose[:, 1] = rng.normal(0, 0.05, (T, 3))  # neck
    pose[:, 2, 0] = rng.uniform(0, 0.25, T)  # jaw opens about x
    pose[:, 3:] = rng.normal(0, 0.1, (T, 2, 3))  # eyes
    translation = rng.normal(0, 0.01, (T, 3)).astype(np.float32)
    return tuple(torch.from_numpy(a) for a in (shape, expr, pose, translation))


def pose_head(head, truth: Truth, t: int) -> Tensor:
    """World vertices [V, 3] of frame index ``t`` of ``truth``."""
    with torch.no_grad():
        out = head(truth.shape[None, :head.n_shape], truth.expr[t:t + 1, :head.n_expr], truth.pose[t:t + 1],
                   truth.translation[t:t + 1])
    return out.vertices[0]


def project(verts: Tensor, K: Tensor, w2c: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel coordinates [V, 2] and camera depth [V] of world points."""
    cam = verts @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:].clamp_min(1e-9), cam[:, 2]


def silhouette(verts: Tensor, faces: Tensor, K: Tensor, w2c: Tensor, h: int, w: int, dilate: int = 1) -> Tensor:
    """Filled-triangle silhouette [h, w] (bool) of the mesh, dilated by ``dilate`` pixels.

    PIL fills polygons in integer pixel coordinates (pixel centres), so pixel-centre coordinates
    (j + 0.5, i + 0.5) shift by -0.5; the one-pixel dilation absorbs its edge rule.
    """
    uv, z = project(verts.double(), K.double(), w2c.double())
    front = (z[faces] > 0).all(1)
    tri = (uv[faces][front] - 0.5).reshape(-1, 6).numpy().tolist()  # flat x0 y0 x1 y1 x2 y2
    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)
    for corners in tri:
        draw.polygon(corners, fill=1)
    mask = torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None]
    if dilate:
        mask = torch.nn.functional.max_pool2d(mask, 2 * dilate + 1, 1, dilate)
    return mask[0, 0] > 0


def fraction_inside(verts: Tensor, K: Tensor, w2c: Tensor, mask: Tensor) -> float:
    """Share of vertices in front of the camera that project onto a foreground pixel of ``mask`` [H, W]."""
    uv, z = project(verts.double(), K.double(), w2c.double())
    h, w = mask.shape[-2:]
    j, i = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    ok = (z > 0) & (j >= 0) & (j < w) & (i >= 0) & (i < h)
    hit = torch.zeros_like(ok)
    hit[ok] = mask.reshape(h, w)[i[ok], j[ok]] > 0.5
    return hit.float().mean().item()


def shaded(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A textured RGB foreground [H, W, 3] uint8 (mask-weighted noise around skin tone)."""
    base = np.array([200, 160, 140], np.float32)
    rgb = base + rng.normal(0, 15, (*mask.shape, 3))
    return rgb.clip(0, 255).astype(np.uint8)


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_obj(path: Path, verts: Tensor, faces: Tensor) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        np.savetxt(f, verts.numpy(), fmt="v %.6f %.6f %.6f")
        np.savetxt(f, faces.numpy() + 1, fmt="f %d %d %d")


def intrinsics_dict(K: np.ndarray, h: int, w: int) -> dict:
    fl_x, fl_y, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    return {"cx": cx, "cy": cy, "fl_x": fl_x, "fl_y": fl_y, "h": h, "w": w,
            "camera_angle_x": 2 * np.arctan(w / (2 * fl_x)), "camera_angle_y": 2 * np.arctan(h / (2 * fl_y))}


def camera_K(size: int, fov_deg: float = 30.0) -> np.ndarray:
    f = size / (2 * np.tan(np.radians(fov_deg) / 2))
    # a principal point off the centre, so a loader that ignores it fails
    return np.array([[f, 0, size / 2 + 1.5], [0, f * 1.02, size / 2 - 2.0], [0, 0, 1]])


def build_vhap_fixture(root: str | Path, head, n_timesteps: int = 6, cameras: tuple[int, ...] = (2, 8, 14),
                       size: int = 64, seed: int = 0, static_offset: bool = False) -> Truth:
    """Write a VHAP ``export_as_nerf_dataset`` folder (flame_mode='param') at ``root``.

    Cameras sit on a 1 m arc in front of the head (at the origin), as VHAP relocates the head.
    """
    root, rng = Path(root), np.random.default_rng(seed)
    shape, expr, pose, translation = random_flame(rng, n_timesteps, head.n_shape, head.n_expr)
    K = camera_K(size)
    c2w_cv = {c: cam_to_world_cv([np.sin(a), 0.05 * i, np.cos(a)])
              for i, (c, a) in enumerate(zip(cameras, np.linspace(-0.6, 0.6, len(cameras)), strict=True))}
    truth = Truth(shape, expr, pose, translation, {c: torch.from_numpy(np.linalg.inv(m)).float()
                                                   for c, m in c2w_cv.items()},
                  torch.from_numpy(K).float(), list(range(n_timesteps)))
    frames = []
    for t in range(n_timesteps):
        verts = pose_head(head, truth, t)
        params = {"translation": translation[t:t + 1].numpy(), "rotation": pose[t:t + 1, 0].numpy(),
                  "neck_pose": pose[t:t + 1, 1].numpy(), "jaw_pose": pose[t:t + 1, 2].numpy(),
                  "eyes_pose": pose[t:t + 1, 3:].reshape(1, 6).numpy(), "shape": shape.numpy(),
                  "expr": expr[t:t + 1].numpy()}
        if static_offset:
            params["static_offset"] = np.zeros((1, head.num_vertices, 3), np.float32)
        write_npz(root / f"flame_param/{t:05d}.npz", **params)
        for c in cameras:
            mask = silhouette(verts, head.faces, truth.K, truth.world_to_cam[c], size, size).numpy()
            rgb = np.where(mask[..., None], shaded(mask, rng), 255).astype(np.uint8)  # composited on white
            name = f"{t:05d}_{c:02d}.png"
            save_image(root / "images" / name, rgb)
            save_image(root / "fg_masks" / name, (mask * 255).astype(np.uint8))
            frames.append({"timestep_index": t, "timestep_index_original": t, "timestep_id": f"frame_{t:05d}",
                           "camera_index": c, "camera_id": f"22{c:04d}", **intrinsics_dict(K, size, size),
                           "transform_matrix": (c2w_cv[c] @ GL_FROM_CV).tolist(), "file_path": f"images/{name}",
                           "fg_mask_path": f"fg_masks/{name}", "flame_param_path": f"flame_param/{t:05d}.npz"})
    meta = {**intrinsics_dict(K, size, size), "frames": frames, "timestep_indices": list(range(n_timesteps)),
            "camera_indices": sorted(cameras)}
    write_json(root / "transforms.json", meta)
    write_npz(root / "canonical_flame_param.npz", translation=np.zeros((1, 3)), rotation=np.zeros((1, 3)),
              neck_pose=np.zeros((1, 3)), jaw_pose=np.array([[0.3, 0, 0]]), eyes_pose=np.zeros((1, 6)),
              shape=shape.numpy(), expr=np.zeros((1, 100)))
    return truth


def rotvec_to_6d(rotvec: np.ndarray) -> np.ndarray:
    """PyTorch3D ``matrix_to_rotation_6d``: the first two rows of the matrix, written via scipy."""
    return Rotation.from_rotvec(rotvec).as_matrix()[..., :2, :].reshape(*rotvec.shape[:-1], 6)


def build_insta_fixture(root: str | Path, head, n_frames: int = 12, size: int = 64, seed: int = 0,
                        tracker_dir: str | Path | None = None) -> Truth:
    """Write an INSTA actor folder (and, if ``tracker_dir``, the metrical-tracker output it came from).

    As in metrical-tracker, FLAME has no global rotation/translation: the head moves in the camera.
    The exp files hold expressions only; shape, jaw and eyes are in the tracker's checkpoints.
    """
    root, rng = Path(root), np.random.default_rng(seed)
    shape, expr, pose, translation = random_flame(rng, n_frames, head.n_shape, head.n_expr)
    pose[:, :2] = 0
    translation[:] = 0
    K = camera_K(size, fov_deg=20.0)
    w2c = {}
    for t in range(n_frames):  # camera orbits a little around the fixed head, as the tracked head turns
        eye = np.array([0.4 * np.sin(0.5 * t + 0.7), 0.15 * np.cos(0.3 * t), 1.1])
        w2c[t] = torch.from_numpy(np.linalg.inv(cam_to_world_cv(eye, rng.normal(0, 0.01, 3)))).float()
    truth = Truth(shape, expr, pose, translation, w2c, torch.from_numpy(K).float(), list(range(n_frames)))
    top = {**intrinsics_dict(K, size, size), "x_fov": 20.0, "y_fov": 20.0, "integer_depth_scale": 1 / 1000}
    frames = []
    for t in range(n_frames):
        fid = f"{t:05d}"
        verts = pose_head(head, truth, t)
        mask = silhouette(verts, head.faces, truth.K, w2c[t], size, size).numpy()
        rgba = np.concatenate([shaded(mask, rng) * mask[..., None], (mask * 255)[..., None]], -1).astype(np.uint8)
        save_image(root / f"images/{fid}.png", rgba)
        save_image(root / f"seg_mask/{fid}.png", np.stack([mask * 1, mask * 0, mask * 0], -1).astype(np.uint8))
        depth = (mask * project(verts, truth.K, w2c[t])[1].mean().item() * 1000).astype(np.uint16)
        with atomic_path(root / f"depth/{fid}.png") as tmp:
            Image.fromarray(depth).save(tmp, format="PNG")
        write_text(root / f"flame/exp/{fid}.txt", "\n".join(f"{v:.8f}" for v in expr[t].tolist()) + "\n")
        write_obj(root / f"meshes/{fid}.obj", verts, head.faces)
        frames.append({"transform_matrix": np.linalg.inv(w2c[t].double().numpy()).tolist(),
                       "file_path": f"images/{fid}.png", "mesh_path": f"meshes/{fid}.obj",
                       "exp_path": f"flame/exp/{fid}.txt", "depth_path": f"depth/{fid}.png",
                       "seg_mask_path": f"seg_mask/{fid}.png"})
        if tracker_dir is not None:
            write_tracker_frame(Path(tracker_dir), fid, truth, t, size)
    rng.shuffle(frames)  # INSTA's transforms.py gathers frames with imap_unordered
    write_json(root / "transforms.json", {**top, "frames": frames})
    return truth


def write_tracker_frame(out: Path, fid: str, truth: Truth, t: int, size: int) -> None:
    """One metrical-tracker ``checkpoint/<fid>.frame`` (numpy arrays, as ``save_checkpoint`` stores)."""
    w2c = truth.world_to_cam[t].numpy()
    eyes = rotvec_to_6d(truth.pose[t, 3:].double().numpy()).reshape(1, 12)
    frame = {
        "flame": {"exp": truth.expr[t:t + 1].numpy(), "shape": truth.shape[None].numpy(),
                  "tex": np.zeros((1, 140), np.float32), "sh": np.zeros((1, 9, 3), np.float32),
                  "eyes": eyes.astype(np.float32), "eyelids": np.zeros((1, 2), np.float32),
                  "jaw": rotvec_to_6d(truth.pose[t, 2].double().numpy())[None].astype(np.float32)},
        "camera": {"R": np.zeros((1, 6), np.float32), "t": np.zeros((1, 3), np.float32),
                   "fl": np.zeros((1, 1), np.float32), "pp": np.zeros((1, 2), np.float32)},
        "opencv": {"R": w2c[None, :3, :3], "t": w2c[None, :3, 3], "K": truth.K[None].numpy()},
        "img_size": np.array([size, size]), "frame_id": fid, "global_step": 100 * t,
    }
    torch_save(out / "checkpoint" / f"{fid}.frame", frame)


@functools.cache
def fixture_flame_path() -> Path:
    """``generic_model.pkl`` of the small FLAME-format test head (written once per process)."""
    from tests.flame_fixture import write_flame_fixture

    return write_flame_fixture(tempfile.mkdtemp(prefix="flame_fixture_")).model


@functools.cache
def fixture_head(n_shape: int = 10, n_expr: int = 8, teeth: bool = False):
    """The small head read through the FLAME loader from :func:`fixture_flame_path`."""
    return load_head_model(fixture_flame_path(), n_shape=n_shape, n_expr=n_expr, teeth=teeth)
