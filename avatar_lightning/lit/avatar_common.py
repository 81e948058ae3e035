"""What the few-shot inversion and the no-prior baseline share: rendering, evaluation, export.

Both are personal avatars fitted to the same few images, so they must be rendered, scored and
exported identically for the comparison in ``make demo`` to mean anything. A module mixes in
:class:`AvatarEvalMixin` and implements one hook, ``canonical(batch) -> (Gaussians, MeshBinding)``;
posing and rasterisation go through :func:`avatar_lightning.lit.render_step.render_batch`.

Evaluation splits (``metrics.json``, ``val/*``): images whose ``frame`` (expression index) is 0
are *novel views* (neutral expression seen from cameras the inputs did not use), also split into
buckets by the angle between the camera and the nearest input camera as seen from the head's centre
(``novel_view_near`` < 30°, ``novel_view_side`` 30–75°, ``novel_view_far`` > 75°, top and back
views included); images with ``frame > 0`` are *novel expressions*. Every score is a head-region
score of :mod:`avatar_lightning.metrics.head_region` (PSNR, SSIM, LPIPS, ID on the target's mask),
per image, then averaged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from avatar_lightning.export import side_by_side, write_metrics, write_video
from avatar_lightning.head.model import HeadModel
from avatar_lightning.io import atomic_path, save_image
from avatar_lightning.lit.render_step import MeshBinding, head_centre, pose_gaussians, render_batch
from avatar_lightning.metrics.head_region import MeanScores, shared_head_metrics
from avatar_lightning.render import Gaussians, RenderOutput, orbit_cameras, save_ply
from avatar_lightning.viz import error_map

VIEW_BUCKETS = {"novel_view_near": (0.0, 30.0), "novel_view_side": (30.0, 75.0), "novel_view_far": (75.0, 180.1)}
SPLITS = ("novel_view", *VIEW_BUCKETS, "novel_expression")


def eval_metrics() -> nn.ModuleDict:
    """Per-split mean head-region scores (:class:`MeanScores`: per image, then averaged)."""
    return nn.ModuleDict({s: MeanScores() for s in SPLITS})


def view_angles(world_to_cam: Tensor, input_world_to_cam: Tensor, centre: Tensor) -> Tensor:
    """Angle (degrees) from each camera to the nearest input camera, seen from ``centre``.

    Args:
        world_to_cam: ``[N, 4, 4]`` evaluation cameras (OpenCV world-to-camera).
        input_world_to_cam: ``[M, 4, 4]`` the few-shot input cameras.
        centre: ``[3]`` world-space head centre.

    Returns:
        ``[N]`` in [0, 180].
    """
    def directions(w2c: Tensor) -> Tensor:
        return torch.nn.functional.normalize(torch.linalg.inv(w2c)[:, :3, 3] - centre, dim=-1)

    cos = directions(world_to_cam) @ directions(input_world_to_cam).T  # [N, M]
    return torch.rad2deg(torch.acos(cos.amax(dim=1).clamp(-1, 1)))


def split_masks(frame: Tensor, angles: Tensor | None = None) -> dict[str, Tensor]:
    """Split membership of images.

    Args:
        frame: ``[N]`` expression index per image.
        angles: ``[N]`` from :func:`view_angles`, or None (no view buckets: inputs unknown).

    Returns:
        split name -> bool ``[N]`` (see the module docstring); an image is in ``novel_view`` and in
        one bucket, or in ``novel_expression``.
    """
    view = frame == 0
    out = {"novel_view": view, "novel_expression": frame > 0}
    if angles is not None:
        for name, (lo, hi) in VIEW_BUCKETS.items():
            out[name] = view & (angles >= lo) & (angles < hi)
    return out


def interpolate_samples(samples: list[Mapping[str, Tensor]], steps: int, keys: Iterable[str]) -> Iterator[dict]:
    """Linear blends between consecutive samples (expression coefficients and maps are linear in γ).

    Args:
        samples: schema samples (B = 1) to pass through, in order.
        steps: frames from one sample to the next (the last sample is emitted once at the end).
        keys: keys to blend; all other keys are taken from the first sample.

    Yields:
        Blended schema samples.
    """
    keys = tuple(keys)
    for a, b in zip(samples[:-1], samples[1:], strict=True):
        for i in range(steps):
            t = i / steps
            yield {**samples[0], **{k: (1 - t) * a[k] + t * b[k] for k in keys}}
    yield {**samples[0], **{k: samples[-1][k] for k in keys}}


class AvatarEvalMixin:
    """Rendering, held-out evaluation, image logging and export for personal-avatar modules.

    The host LightningModule provides ``head`` (:class:`HeadModel`), ``photometric``
    (:class:`avatar_lightning.losses.PhotometricLoss`), ``eval_scores`` (from :func:`eval_metrics`),
    ``hparams.render_backend`` (optional) and :meth:`canonical`.
    """

    head: HeadModel
    eval_scores: nn.ModuleDict

    def canonical(self, batch: Mapping[str, Tensor]) -> tuple[Gaussians, MeshBinding]:
        """Batched canonical Gaussians [B, N, ...] for ``batch`` and their mesh binding."""
        raise NotImplementedError

    @property
    def render_backend(self) -> str:
        return str(getattr(self.hparams, "render_backend", "auto"))  # type: ignore[attr-defined]

    def render(self, batch: Mapping[str, Tensor]) -> RenderOutput:
        """Pose and render every view of ``batch``: rgb [B, V, 3, H, W]."""
        gaussians, binding = self.canonical(batch)
        return render_batch(batch, gaussians, binding, self.head, self.render_backend)

    def photometric_loss(self, render: RenderOutput, batch: Mapping[str, Tensor]) -> Tensor:
        """L_color on all views, ``[B, V, 3, H, W]`` flattened to images."""
        return self.photometric(render.rgb.flatten(0, 1), batch["image"].flatten(0, 1)).total  # type: ignore[attr-defined]

    # ----------------------------------------------------------------------------- evaluation
    def input_view_angles(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        """``[B·V]`` angle of each image's camera to the nearest few-shot input camera (None before
        the inputs are known), measured around the inputs' neutral head centre."""
        inputs = getattr(self, "inputs", None)
        if inputs is None:
            return None
        neutral = {**inputs, "expr": torch.zeros_like(inputs["expr"]), "pose": torch.zeros_like(inputs["pose"])}
        centre = head_centre({k: v.to(batch["world_to_cam"].device) for k, v in neutral.items()}, self.head)
        return view_angles(batch["world_to_cam"].flatten(0, 1), inputs["world_to_cam"][0].to(centre), centre)

    @torch.no_grad()
    def update_scores(self, batch: Mapping[str, Tensor]) -> None:
        """Render ``batch`` and add its images' head-region scores to their splits."""
        pred = self.render(batch).rgb.clamp(0, 1).flatten(0, 1)  # [B·V, 3, H, W]
        scores = shared_head_metrics(pred.device)(pred, batch["image"].flatten(0, 1), batch["mask"].flatten(0, 1))
        views = batch["image"].shape[1]
        frame = batch["frame"].repeat_interleave(views)
        for split, keep in split_masks(frame, self.input_view_angles(batch)).items():
            if keep.any():
                self.eval_scores[split].update({k: v[keep] for k, v in scores.items()})

    def compute_scores(self, reset: bool = True) -> dict[str, dict[str, float]]:
        """``{split: {"psnr", "ssim", "lpips", "id", "psnr_full", "images"}}`` for the splits that saw
        images since the last reset (``images``: how many were scored)."""
        out: dict[str, dict[str, float]] = {}
        for split in SPLITS:
            metric = self.eval_scores[split]
            if metric.update_count:
                values = {k: float(v) for k, v in metric.compute().items()}
                if values:
                    out[split] = {**values, "images": int(metric.counts[0])}
            if reset:
                metric.reset()
        return out

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self.update_scores(batch)

    def on_validation_epoch_end(self) -> None:
        for split, values in self.compute_scores().items():
            self.log_dict({f"val/{split}/{k}": v for k, v in values.items()})  # type: ignore[attr-defined]

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, dict[str, float]]:
        """Scores over held-out batches (moved to the module's device)."""
        self.compute_scores(reset=True)
        for batch in batches:
            self.update_scores({k: v.to(self.device) for k, v in batch.items()})  # type: ignore[attr-defined]
        return self.compute_scores()

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The first sample's views as rows target | render | error, ``[3V, 3, H, W]``."""
        sample = {k: v[:1] for k, v in batch.items()}
        pred = self.render(sample).rgb[0].clamp(0, 1)
        target = sample["image"][0]
        return {"views": torch.stack([target, pred, error_map(pred, target)], dim=1).flatten(0, 1)}

    # --------------------------------------------------------------------------------- export
    @torch.no_grad()
    def neutral_gaussians(self, sample: Mapping[str, Tensor]) -> Gaussians:
        """World-space Gaussians of the neutral expression and rest pose (for the PLY), ``[N, ...]``."""
        neutral = {**sample, "expr": torch.zeros_like(sample["expr"]), "pose": torch.zeros_like(sample["pose"])}
        if "uv_expression" in neutral:
            neutral["uv_expression"] = torch.zeros_like(neutral["uv_expression"])
        gaussians, binding = self.canonical(neutral)
        mesh = self.head(neutral["shape"], neutral["expr"], neutral["pose"], neutral["translation"])
        return pose_gaussians(gaussians, mesh.vertex_transforms, self.head.faces, binding).map(lambda t: t[0])

    def turntable_samples(self, sample: Mapping[str, Tensor], frames: int, elevation_deg: float,
                          chunk: int) -> list[dict[str, Tensor]]:
        """``sample`` (B = 1) at the neutral expression and rest pose, seen by a 360° orbit of
        ``frames`` cameras around the head, split into samples of at most ``chunk`` views."""
        neutral = {**sample, "expr": torch.zeros_like(sample["expr"]), "pose": torch.zeros_like(sample["pose"])}
        if "uv_expression" in sample:
            neutral["uv_expression"] = torch.zeros_like(sample["uv_expression"])
        with torch.no_grad():
            target = head_centre(neutral, self.head).cpu()
        eye = torch.linalg.inv(sample["world_to_cam"][0, 0].cpu())[:3, 3]
        w2c = orbit_cameras(frames, float((eye - target).norm()), elevation_deg, target).to(sample["K"])
        out = []
        for start in range(0, frames, chunk):
            n = min(chunk, frames - start)
            out.append({**neutral, "world_to_cam": w2c[None, start:start + n],
                        "K": sample["K"][:, :1].expand(1, n, 3, 3),
                        "image": sample["image"][:, :1].expand(1, n, -1, -1, -1)})
        return out

    def render_frames(self, samples: list[dict[str, Tensor]], chunk: int) -> Iterator[Tensor]:
        """Lazily render video frames ``[3, H, W]``: every view of every sample, ``chunk`` samples per call."""
        for start in range(0, len(samples), chunk):
            part = samples[start:start + chunk]
            batch = {k: torch.cat([s[k] for s in part]) for k in part[0]}
            with torch.no_grad():
                rgb = self.render(batch).rgb.clamp(0, 1).cpu()
            yield from rgb.flatten(0, 1)

    def export_avatar(self, out_dir: str | Path, inputs: Mapping[str, Tensor],
                      eval_batches: Iterable[Mapping[str, Tensor]], turntable_frames: int = 60,
                      expression_steps: int = 12, fps: float = 25.0, elevation_deg: float = 10.0,
                      extra_metrics: Mapping | None = None, render_chunk: int = 8) -> dict[str, Path]:
        """Write the avatar's user-facing outputs, each atomically, into ``out_dir``.

        Files: ``avatar.ply`` (3DGS PLY, neutral pose), ``turntable.mp4``, ``expressions.mp4``
        (driven through the held-out expressions, seen from the middle input camera),
        ``metrics.json`` (held-out scores) and ``comparison.png`` (target | render | error of the
        first held-out view). The checkpoint is written by the caller (it owns the trainer).

        Args:
            out_dir: destination folder.
            inputs: the few-shot input sample (B = 1, V input views) on the module's device.
            eval_batches: held-out schema batches.
            turntable_frames: frames of the 360° turntable.
            expression_steps: frames between consecutive held-out expressions.
            fps: video frame rate.
            elevation_deg: turntable camera elevation.
            extra_metrics: merged into ``metrics.json`` (e.g. steps run, stage lengths).
            render_chunk: video frames rendered per rasteriser call.
        """
        out = Path(out_dir)
        dev = self.device  # type: ignore[attr-defined]
        eval_batches = [{k: v.to(dev) for k, v in b.items()} for b in eval_batches]
        paths = {name: out / name for name in ("avatar.ply", "turntable.mp4", "expressions.mp4", "metrics.json",
                                               "comparison.png")}
        save_ply(paths["avatar.ply"], self.neutral_gaussians(inputs))
        view = slice(inputs["K"].shape[1] // 2, inputs["K"].shape[1] // 2 + 1)  # the middle input camera
        write_video(paths["turntable.mp4"], self.render_frames(
            self.turntable_samples(inputs, turntable_frames, elevation_deg, render_chunk), 1), fps=fps)
        expressions = self._distinct_expressions(eval_batches, inputs)
        blended = [{**b, "K": inputs["K"][:, view], "world_to_cam": inputs["world_to_cam"][:, view],
                    "image": inputs["image"][:, view]}
                   for b in interpolate_samples(expressions, expression_steps, self._expression_keys(inputs))]
        write_video(paths["expressions.mp4"], self.render_frames(blended, render_chunk), fps=fps)
        with torch.no_grad():
            first = {k: v[:1] for k, v in (eval_batches[0] if eval_batches else inputs).items()}
            pred = self.render(first).rgb[0, 0].clamp(0, 1)
            save_image(paths["comparison.png"], side_by_side(first["image"][0, 0], pred,
                                                             error_map(pred, first["image"][0, 0])))
        scores = self.evaluate(eval_batches)
        write_metrics(paths["metrics.json"], {**scores, **(dict(extra_metrics) if extra_metrics else {})})
        return paths

    @staticmethod
    def _expression_keys(inputs: Mapping[str, Tensor]) -> list[str]:
        return [k for k in ("expr", "pose", "uv_expression") if k in inputs]

    def _distinct_expressions(self, batches: list[Mapping[str, Tensor]], inputs: Mapping[str, Tensor]
                              ) -> list[dict[str, Tensor]]:
        """The input sample re-posed with each distinct held-out expression (by ``frame``), neutral first."""
        seen: dict[int, dict[str, Tensor]] = {}
        for batch in batches:
            for i, f in enumerate(batch["frame"].tolist()):
                if f not in seen:
                    seen[f] = {**inputs, **{k: batch[k][i:i + 1] for k in self._expression_keys(inputs)}}
        if not seen:  # no held-out data: the video shows the input expression only
            seen[0] = dict(inputs)
        ordered = [seen[f] for f in sorted(seen)]
        return ordered + [ordered[0]] if len(ordered) > 1 else ordered * 2



def _comparable(value: object) -> object:
    """YAML gives lists and dicts where defaults are tuples and dataclasses: compare them as values."""
    if isinstance(value, dict):
        return tuple(sorted((k, _comparable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_comparable(v) for v in value)
    return value


def shape_differences(saved: Mapping, current: Mapping, keys: Iterable[str]) -> list[str]:
    """``"key: checkpoint X, config Y"`` for each of ``keys`` the checkpoint records with another value."""
    return [f"{k}: checkpoint {saved[k]!r}, config {current.get(k)!r}" for k in keys
            if k in saved and _comparable(saved[k]) != _comparable(current.get(k))]


def refuse_other_shape(owner: str, saved: Mapping, current: Mapping, keys: Iterable[str]) -> None:
    """Refuse a checkpoint whose hyper-parameters that shape the model or its inputs differ.

    Args:
        owner: the module's name, for the message.
        saved: the checkpoint's ``hyper_parameters``.
        current: the module's ``hparams``.
        keys: the shaping fields (head model, coefficient counts, map sizes, …); a key the
            checkpoint does not record (written by an older version) is not compared.

    Raises:
        ValueError: naming every differing field with both values.
    """
    diff = shape_differences(saved, current, keys)
    if diff:
        raise ValueError(f"{owner}: the checkpoint was written for another model or input shape ("
                         + "; ".join(diff) + "). Use the run's own config.yaml (in its log folder) or set "
                         "these fields to the checkpoint's values.")


def stop_reason(trainer: object) -> tuple[str, str]:
    """Why a fit ended: ``(kind, sentence)``.

    ``kind`` is the early-stopping callback's (``"plateau"``, ``"budget"``, ``"non_finite"``; see
    ``callbacks.EMAEarlyStopping.stop_kind``), else ``"cap"`` when the trainer's ``max_steps`` ended
    it, else ``"other"`` (e.g. ``max_epochs``, an interrupt). The callback is found by its
    ``stop_kind`` attribute, so ``avatar_lightning`` does not import ``callbacks``.
    """
    for cb in getattr(trainer, "callbacks", []):
        if getattr(cb, "stop_kind", None):
            return str(cb.stop_kind), str(getattr(cb, "reason", ""))
    max_steps = getattr(trainer, "max_steps", -1)
    if max_steps is not None and max_steps > 0 and getattr(trainer, "global_step", 0) >= max_steps:
        return "cap", f"trainer.max_steps={max_steps} reached (the run did not stop on its own)"
    return "other", "training ended without an early-stopping decision"


class AvatarCheckpointMixin:
    """Keep the head model out of checkpoints (a user's licensed FLAME must not be copied into them)
    and count the few-shot input images for :class:`callbacks.EMAEarlyStopping`'s step budget."""

    n_input_frames: int

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        for key in [k for k in checkpoint["state_dict"] if k.startswith("head.")]:
            del checkpoint["state_dict"][key]

    #: hyper-parameters that shape the module or its inputs: a checkpoint that differs is refused
    SHAPING_HPARAMS: tuple[str, ...] = ()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        refuse_other_shape(type(self).__name__, checkpoint.get("hyper_parameters") or {},
                           self.hparams, self.SHAPING_HPARAMS)  # type: ignore[attr-defined]
        checkpoint["state_dict"].update({f"head.{k}": v for k, v in self.head.state_dict().items()})  # type: ignore[attr-defined]

    def remember_inputs(self, batch: Mapping[str, Tensor]) -> None:
        """Keep the first training sample (the few-shot inputs) for the exported videos."""
        if getattr(self, "inputs", None) is None:
            self.inputs = {k: v[:1].detach() for k, v in batch.items()}

    def output_metrics(self) -> dict:
        """Run facts written into ``metrics.json`` beside the held-out scores: steps, input frames and
        why the fit ended (:func:`stop_reason`)."""
        kind, reason = stop_reason(self.trainer)  # type: ignore[attr-defined]
        return {"steps": self.global_step, "n_input_frames": self.n_input_frames,  # type: ignore[attr-defined]
                "stop_kind": kind, "stop_reason": reason}

    def on_fit_end(self) -> None:
        out_dir = getattr(self.hparams, "output_dir", None)  # type: ignore[attr-defined]
        if out_dir and self.trainer.is_global_zero:  # type: ignore[attr-defined]
            kind, reason = stop_reason(self.trainer)  # type: ignore[attr-defined]
            bad = [n for n, p in self.named_parameters() if not torch.isfinite(p).all()]  # type: ignore[attr-defined]
            if kind == "non_finite" or bad:
                raise RuntimeError(f"{type(self).__name__}: not exporting an avatar to {out_dir}: {reason}"
                                   + (f"; non-finite parameters: {bad[:5]}" if bad else ""))
            self.write_outputs(out_dir)

    def write_outputs(self, out_dir: str | Path) -> dict[str, Path]:
        """Checkpoint + PLY + turntable / expression MP4s + ``metrics.json`` (held-out), all atomic.

        Held-out data is the DataModule's validation set. Single-process only: the checkpoint is
        written by this process alone.
        """
        if getattr(self, "inputs", None) is None:
            raise RuntimeError(f"{type(self).__name__}.write_outputs: no training batch was seen (nothing was fitted)")
        out, trainer = Path(out_dir), self.trainer  # type: ignore[attr-defined]
        with atomic_path(out / "avatar.ckpt") as tmp:
            trainer.save_checkpoint(tmp)
        dm = trainer.datamodule
        eval_loader = dm.val_dataloader() if dm is not None else (trainer.val_dataloaders or [])
        hp = self.hparams  # type: ignore[attr-defined]
        inputs = {k: v.to(self.device) for k, v in self.inputs.items()}  # type: ignore[attr-defined]
        paths = self.export_avatar(out, inputs, eval_loader, hp.turntable_frames,  # type: ignore[attr-defined]
                                   hp.expression_steps, hp.fps, extra_metrics=self.output_metrics())
        return {"avatar.ckpt": out / "avatar.ckpt", **paths}

    def count_input_frames(self) -> int:
        """Distinct input images, SynShot's "training frames": views × distinct (identity, frame) samples.

        A loader that repeats the few inputs every step (e.g. :class:`FewShotDataModule`) still counts
        each image once.
        """
        loader = self.trainer.train_dataloader  # type: ignore[attr-defined]
        if loader is None:
            return 0
        views: dict[tuple[int, int], int] = {}
        for b in loader:
            for ident, frame in zip(b["identity"].tolist(), b["frame"].tolist(), strict=True):
                views[(ident, frame)] = int(b["image"].shape[1])
        return sum(views.values())
