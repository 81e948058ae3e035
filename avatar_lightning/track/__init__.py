"""Face tracking for real photos and videos: ``python -m avatar_lightning.track INPUT... --out DIR``.

MediaPipe Face Mesh finds 478 landmarks per frame (``detect``); the head model (built-in, or a
user's FLAME file with MICA's ``mediapipe_landmark_embedding.npz``: ``embedding``) is fitted to them
with shape and focal length shared across frames and expression, jaw/eye pose and rigid pose per
frame, DECA / metrical-tracker style, temporally smoothed for a video (``fit``, ``landmark_head``);
the result is written in the INSTA layout that ``data_modules.insta.INSTADataModule`` reads, with
metrical-tracker checkpoints and overlay pictures (``export``, ``overlay``). ``pipeline.track`` runs
it all; ``make_embedding`` measures the built-in head's landmark embedding from renders.

MediaPipe is imported only when detection runs, so the fitter and the file formats work without it.
"""

from avatar_lightning.track.embedding import LandmarkEmbedding, default_embedding, load_embedding
from avatar_lightning.track.fit import FitConfig, LandmarkFit, fit_landmarks
from avatar_lightning.track.pipeline import TrackOptions, TrackResult, track

__all__ = ["FitConfig", "LandmarkEmbedding", "LandmarkFit", "TrackOptions", "TrackResult", "default_embedding",
           "fit_landmarks", "load_embedding", "track"]
