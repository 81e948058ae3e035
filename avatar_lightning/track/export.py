"""Write a tracked sequence in the INSTA layout, with metrical-tracker checkpoints beside it.

What ``data_modules/insta.py`` (INSTADataModule) reads, exactly as INSTA's ``scripts/transforms.py``
and metrical-tracker's ``save_checkpoint`` write it (``shared/FORMATS.md``)::

    <out>/transforms.json  transforms_{train,val,test}.json   w h cx cy fl_x fl_y camera_angle_x/y x_fov y_fov
                                                               integer_depth_scale frames
    <out>/images/<id>.png        RGBA; alpha = the foreground matte
    <out>/seg_mask/<id>.png      the foreground mask (L, 0/255)
    <out>/depth/<id>.png         uint16 millimetres of the fitted mesh (0 = background)
    <out>/meshes/<id>.obj        posed head vertices in the head (world) frame
    <out>/flame/exp/<id>.txt     100 expression coefficients (the fit's first E, then zeros)
    <out>/checkpoint/<id>.frame  metrical-tracker dict: flame {exp, shape, eyes, jaw (6D), tex, sh, eyelids},
                                 opencv {R, t, K}, img_size, frame_id (``camera``, PyTorch3D's, is zeros)
    <out>/overlays/<id>.png      landmarks and mesh over the photo, for a person to check

``transform_matrix`` is OpenCV camera-to-world (``inv([R|t])``); FLAME's global pose and
translation are zero (the head pose is in the camera), as in metrical-tracker. Load it with
``INSTADataModule(roots=[out], tracker_dirs=[out], n_shape=S, n_expr=E, n_test=..., head_model=...)``
(its default ``n_test=600`` needs a longer sequence; a single photo cannot be split at all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from avatar_lightning.io import atomic_path, save_image, torch_save, write_bytes, write_json

#: coefficient counts of FLAME files (and of what INSTA / metrical-tracker store).
N_SHAPE_FILE, N_EXPR_FILE = 300, 100


@dataclass
class OutputFrame:
    """One frame as written.

    Attributes:
        fid: file stem, e.g. ``"00007"``.
        image: np.ndarray  # [S, S, 3] uint8 crop
        mask: np.ndarray  # [S, S] float32 foreground matte in [0, 1]
        overlay: np.ndarray  # [S, S, 3] uint8 image for a person to check
    """

    fid: str
    image: np.ndarray
    mask: np.ndarray
    overlay: np.ndarray


def rotation_to_6d(R: np.ndarray) -> np.ndarray:
    """PyTorch3D's ``matrix_to_rotation_6d``: the first two rows, ``[..., 3, 3] -> [..., 6]``."""
    return R[..., :2, :].reshape(*R.shape[:-2], 6)


def padded(values: Tensor, n: int) -> np.ndarray:
    """Coefficients ``[..., k]`` -> ``[..., n]`` float32, zeros after the first k (FLAME files hold
    300 identity / 100 expression slots; a fit of fewer fills the first ones)."""
    out = np.zeros((*values.shape[:-1], n), np.float32)
    out[..., :values.shape[-1]] = values.detach().cpu().numpy()
    return out


def tracker_checkpoint(fid: str, shape: Tensor, expr: Tensor, pose: Tensor, world_to_cam: Tensor, K: Tensor,
                       size: tuple[int, int]) -> dict:
    """One metrical-tracker ``.frame`` dict (numpy arrays, as ``save_checkpoint`` stores).

    Args:
        fid: frame id.
        shape: Tensor  # [S]
        expr: Tensor  # [E]
        pose: Tensor  # [5, 3] axis-angle; jaw (2) and eyes (3 left, 4 right) are stored as 6D.
        world_to_cam: Tensor  # [4, 4] OpenCV
        K: Tensor  # [3, 3]
        size: (H, W)
    """
    from scipy.spatial.transform import Rotation

    rot6d = rotation_to_6d(Rotation.from_rotvec(pose[2:].double().numpy()).as_matrix()).astype(np.float32)
    w2c = world_to_cam.double().numpy()
    return {
        "flame": {"exp": padded(expr[None], N_EXPR_FILE), "shape": padded(shape[None], N_SHAPE_FILE),
                  "tex": np.zeros((1, 140), np.float32), "sh": np.zeros((1, 9, 3), np.float32),
                  "eyes": rot6d[1:].reshape(1, 12), "jaw": rot6d[:1], "eyelids": np.zeros((1, 2), np.float32)},
        "camera": {"R": np.zeros((1, 6), np.float32), "t": np.zeros((1, 3), np.float32),
                   "fl": np.zeros((1, 1), np.float32), "pp": np.zeros((1, 2), np.float32)},
        "opencv": {"R": w2c[None, :3, :3].astype(np.float32), "t": w2c[None, :3, 3].astype(np.float32),
                   "K": K[None].numpy().astype(np.float32)},
        "img_size": np.array(size), "frame_id": fid, "global_step": 0,
    }


def write_obj(path: Path, vertices: Tensor, faces: Tensor) -> None:
    """Vertices ``[V, 3]`` (metres) and triangles ``[F, 3]`` as a plain OBJ (1-based faces), as
    INSTA's ``meshes/<id>.obj``."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        np.savetxt(f, vertices.detach().cpu().numpy(), fmt="v %.6f %.6f %.6f")
        np.savetxt(f, faces.cpu().numpy() + 1, fmt="f %d %d %d")


def write_depth(path: Path, depth: Tensor) -> None:
    """Depth ``[H, W]`` in metres (inf = empty) as INSTA's uint16 millimetre PNG (0 = empty)."""
    mm = torch.where(depth.isfinite(), depth * 1000, torch.zeros_like(depth)).round().clamp(0, 65535)
    with atomic_path(path) as tmp:
        Image.fromarray(mm.numpy().astype(np.uint16)).save(tmp, format="PNG")


def intrinsics_fields(K: Tensor, size: tuple[int, int]) -> dict:
    """INSTA's top-level camera fields (``scripts/transforms.py``: angles in radians, ``x_fov`` /
    ``y_fov`` in degrees, ``integer_depth_scale`` = 1/1000) for intrinsics ``K`` [3, 3] (pixels)
    and (H, W) ``size``."""
    h, w = size
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    ax, ay = 2 * math.atan(w / (2 * fx)), 2 * math.atan(h / (2 * fy))
    return {"w": w, "h": h, "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "camera_angle_x": ax, "camera_angle_y": ay,
            "x_fov": math.degrees(ax), "y_fov": math.degrees(ay), "integer_depth_scale": 1 / 1000}


def split_names(n: int) -> dict[str, range]:
    """INSTA-style time split written to ``transforms_{train,val,test}.json``: the last fifth tests,
    the last of those (at most 20) validate. One frame: train only."""
    n_test = max(1, round(0.2 * n)) if n > 1 else 0
    n_val = min(20, n_test)
    return {"train": range(n - n_test), "val": range(n - n_val, n), "test": range(n - n_test, n)}


def write_insta(out: Path, frames: list[OutputFrame], shape: Tensor, expr: Tensor, pose: Tensor,
                world_to_cam: Tensor, K: Tensor, vertices: Tensor, faces: Tensor, depth: Tensor) -> None:
    """Write every file of the layout (module docstring) for T frames.

    Args:
        out: the actor folder.
        frames: T :class:`OutputFrame`.
        shape: Tensor  # [S]
        expr: Tensor  # [T, E]
        pose: Tensor  # [T, 5, 3] (global zero)
        world_to_cam: Tensor  # [T, 4, 4] OpenCV
        K: Tensor  # [3, 3] of the S x S images
        vertices: Tensor  # [T, V, 3] posed vertices in the head frame
        faces: LongTensor  # [F, 3]
        depth: Tensor  # [T, S, S] camera depth of the mesh, metres (inf = empty)
    """
    size = frames[0].image.shape[:2]
    entries = []
    for t, fr in enumerate(frames):
        alpha = (fr.mask * 255).round().astype(np.uint8)
        save_image(out / "images" / f"{fr.fid}.png", np.concatenate([fr.image, alpha[..., None]], -1))
        save_image(out / "seg_mask" / f"{fr.fid}.png", np.where(fr.mask > 0.5, 255, 0).astype(np.uint8))
        save_image(out / "overlays" / f"{fr.fid}.png", fr.overlay)
        write_depth(out / "depth" / f"{fr.fid}.png", depth[t])
        write_obj(out / "meshes" / f"{fr.fid}.obj", vertices[t], faces)
        text = "\n".join(f"{v:.8f}" for v in padded(expr[t], N_EXPR_FILE).tolist()) + "\n"
        write_bytes(out / "flame" / "exp" / f"{fr.fid}.txt", text.encode())
        torch_save(out / "checkpoint" / f"{fr.fid}.frame",
                   tracker_checkpoint(fr.fid, shape, expr[t], pose[t], world_to_cam[t], K, size))
        entries.append({"transform_matrix": torch.linalg.inv(world_to_cam[t].double()).tolist(),
                        "file_path": f"images/{fr.fid}.png", "mesh_path": f"meshes/{fr.fid}.obj",
                        "exp_path": f"flame/exp/{fr.fid}.txt", "depth_path": f"depth/{fr.fid}.png",
                        "seg_mask_path": f"seg_mask/{fr.fid}.png"})
    top = intrinsics_fields(K, size)
    write_json(out / "transforms.json", {**top, "frames": entries})
    for name, idx in split_names(len(entries)).items():
        write_json(out / f"transforms_{name}.json", {**top, "frames": [entries[i] for i in idx]})
