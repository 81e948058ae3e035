"""Which surface point of the head model each MediaPipe landmark is: a landmark embedding.

The file format is the one FLAME users know from MICA / metrical-tracker,
``mediapipe_landmark_embedding.npz`` (``np.load``-able, no pickle):

- ``lmk_face_idx``  int   [L]     triangle of the head model (index into FLAME's ``f``)
- ``lmk_b_coords``  float [L, 3]  barycentric coordinates in that triangle (sum to 1)
- ``landmark_indices`` int [L]    which MediaPipe face-mesh landmark (0..477) each row is

MICA's file for FLAME 2020 holds L = 105 rows (no face contour, no irises). The built-in head's
file (``assets/builtin_mediapipe_embedding.npz``, made by ``python -m
avatar_lightning.track.make_embedding``) uses the same keys plus ``n_vertices``, ``n_faces``,
``faces_digest`` (the topology it was made for) and ``spread_mm`` (how far the per-render
estimates of each landmark scatter, a confidence used as a fitting weight).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar_lightning.track.detect import N_MEDIAPIPE

BUILTIN_EMBEDDING = Path(__file__).parent / "assets" / "builtin_mediapipe_embedding.npz"
REGENERATE = "python -m avatar_lightning.track.make_embedding"

#: MediaPipe's face oval (``FACEMESH_FACE_OVAL``): silhouette points that slide over the surface with
#: the view, so no fixed surface point is them (MICA's embedding leaves them out too).
FACE_OVAL = (10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234, 251, 284,
             288, 297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454)
#: Iris centres (``refine_landmarks=True``): subject's right eye, then left eye.
IRIS_CENTRES = (468, 473)


def faces_digest(faces: Tensor | np.ndarray) -> str:
    """sha256 (16 hex digits) of a triangle list ``[F, 3]``, naming the topology an embedding was made for."""
    arr = np.ascontiguousarray(np.asarray(faces.cpu() if isinstance(faces, Tensor) else faces, dtype=np.int64))
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]


@dataclass
class LandmarkEmbedding:
    """Landmarks as barycentric points on the head's triangles.

    Attributes:
        face_idx: LongTensor  # [L] triangle per landmark.
        bary: Tensor  # [L, 3] barycentric coordinates.
        landmark_indices: LongTensor  # [L] MediaPipe landmark index (0..477) per row.
        weights: Tensor  # [L] fitting weight per landmark (1 unless the file holds ``spread_mm``).
        source: the file it came from.
    """

    face_idx: Tensor
    bary: Tensor
    landmark_indices: Tensor
    weights: Tensor
    source: str = ""

    def __len__(self) -> int:
        return int(self.face_idx.numel())

    def points(self, vertices: Tensor, faces: Tensor) -> Tensor:
        """The landmarks' 3D positions on a mesh (as FLAME's ``vertices2landmarks``).

        Args:
            vertices: Tensor  # [B, V, 3]
            faces: LongTensor  # [F, 3]

        Returns:
            Tensor  # [B, L, 3]
        """
        corners = vertices[:, faces[self.face_idx.to(faces.device)]]  # [B, L, 3, 3]
        return (corners * self.bary.to(vertices)[None, :, :, None]).sum(2)

    def select(self, keep: Tensor) -> LandmarkEmbedding:
        """The rows where ``keep`` (BoolTensor [L]) is true, as a new embedding of L' rows."""
        return LandmarkEmbedding(self.face_idx[keep], self.bary[keep], self.landmark_indices[keep],
                                 self.weights[keep], self.source)


def weights_from_spread(spread_mm: np.ndarray, scale_mm: float = 2.0) -> np.ndarray:
    """Fitting weight of a landmark whose per-render estimates scatter by ``spread_mm``: a Cauchy
    weight, as in iteratively reweighted least squares (this project's choice; MICA weights all 1).

    Args:
        spread_mm: np.ndarray  # [L] robust scatter of the landmark's surface estimates, millimetres.
        scale_mm: scatter at which the weight halves.

    Returns:
        np.ndarray  # [L] in (0, 1]
    """
    return 1.0 / (1.0 + (np.asarray(spread_mm, dtype=np.float64) / scale_mm) ** 2)


def load_embedding(path: str | Path, head) -> LandmarkEmbedding:
    """Read a ``mediapipe_landmark_embedding.npz`` and check it against the head model.

    Args:
        path: the embedding file (MICA/FLAME format, see the module docstring).
        head: the :class:`~avatar_lightning.head.HeadModel` it must fit.

    Returns:
        :class:`LandmarkEmbedding` on the CPU.

    Raises:
        FileNotFoundError: naming ``path``.
        KeyError / ValueError: naming ``path`` and the field that is missing or does not fit the head
            (a face index past the head's triangles, barycentrics not summing to 1, a landmark index
            past 477, a topology other than the one the file was made for).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark embedding not found: {path}")
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as err:  # numpy raises several unrelated types for corrupt files
        raise ValueError(f"cannot read landmark embedding {path}: {err}") from err
    missing = [k for k in ("lmk_face_idx", "lmk_b_coords", "landmark_indices") if k not in data]
    if missing:
        raise KeyError(f"landmark embedding {path} lacks {missing} (expected MICA's mediapipe_landmark_embedding.npz "
                       f"keys lmk_face_idx, lmk_b_coords, landmark_indices)")
    face_idx = np.asarray(data["lmk_face_idx"]).astype(np.int64).reshape(-1)
    bary = np.asarray(data["lmk_b_coords"], dtype=np.float64).reshape(-1, 3)
    indices = np.asarray(data["landmark_indices"]).astype(np.int64).reshape(-1)
    n_faces = int(head.faces.shape[0])
    if not len(face_idx) == len(bary) == len(indices) or len(face_idx) == 0:
        raise ValueError(f"{path}: lmk_face_idx, lmk_b_coords and landmark_indices must have the same length > 0, "
                         f"got {len(face_idx)}, {len(bary)}, {len(indices)}")
    if "faces_digest" in data and str(data["faces_digest"]) != faces_digest(head.faces):
        raise ValueError(f"{path} was made for another mesh topology ({int(data['n_faces'])} faces) than the head "
                         f"model {head.source} ({n_faces} faces); regenerate it with {REGENERATE}")
    if face_idx.min() < 0 or face_idx.max() >= n_faces:
        raise ValueError(f"{path}: lmk_face_idx reaches {face_idx.max()} but the head model {head.source} has "
                         f"{n_faces} triangles; is it the embedding of another model?")
    if np.abs(bary.sum(1) - 1).max() > 1e-3:
        raise ValueError(f"{path}: lmk_b_coords rows must sum to 1")
    if indices.min() < 0 or indices.max() >= N_MEDIAPIPE:
        raise ValueError(f"{path}: landmark_indices must lie in [0, {N_MEDIAPIPE}), got {indices.max()}")
    weights = weights_from_spread(data["spread_mm"]) if "spread_mm" in data else np.ones(len(face_idx))
    return LandmarkEmbedding(torch.from_numpy(face_idx), torch.from_numpy(bary).float(), torch.from_numpy(indices),
                             torch.from_numpy(weights).float(), str(path))


def save_embedding(path: str | Path, emb: LandmarkEmbedding, head, **extra: np.ndarray) -> None:
    """Write an embedding in MICA's ``mediapipe_landmark_embedding.npz`` format plus the head's
    topology fingerprint and ``extra`` arrays (``np.savez_compressed``; no pickle).

    Args:
        path: the ``.npz`` to write.
        emb: the embedding.
        head: the head model it was made on.
        **extra: further arrays stored under their names (e.g. ``spread_mm`` [L], ``mirror`` [478]).
    """
    from avatar_lightning.io import atomic_path

    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, lmk_face_idx=emb.face_idx.numpy().astype(np.int64),
                            lmk_b_coords=emb.bary.numpy().astype(np.float64),
                            landmark_indices=emb.landmark_indices.numpy().astype(np.int64),
                            n_vertices=np.int64(head.num_vertices), n_faces=np.int64(head.faces.shape[0]),
                            faces_digest=np.array(faces_digest(head.faces)), **extra)


def default_embedding(head, head_model: str, path: str | Path | None = None) -> LandmarkEmbedding:
    """The embedding to use with ``head``: ``path`` if given (FLAME: MICA's file), else the shipped
    built-in one (measured by ``make_embedding``).

    Args:
        head: the loaded head model.
        head_model: what it was loaded from (``"builtin"`` or a FLAME pickle).
        path: an embedding file, or None.

    Raises:
        ValueError: ``head_model`` is a FLAME file and no ``path`` was given (FLAME's embedding ships
            with MICA / metrical-tracker, not with this project).
    """
    if path is not None:
        return load_embedding(path, head)
    if str(head_model) != "builtin":
        raise ValueError(f"head model {head_model} needs its MediaPipe landmark embedding: pass --embedding "
                         f"path/to/mediapipe_landmark_embedding.npz (MICA / metrical-tracker ship FLAME's)")
    return load_embedding(BUILTIN_EMBEDDING, head)
