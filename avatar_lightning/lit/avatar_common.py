"""What the few-shot inversion and the no-prior baseline share: rendering, evaluation, export.

Both are personal avatars fitted to the same few images, so they must be rendered, scored and
exported identically for the comparison in ``make demo`` to mean anything. A module subclasses
:class:`FewShotAvatar` (an :class:`~avatar_lightning.lit.base.AvatarModule`) and implements
``canonical(batch) -> (Gaussians, MeshBinding)`` and ``compute_losses``; posing and rasterisation
go through :func:`avatar_lightning.lit.render_step.render_batch`. It speaks the early-stopping
contract of :mod:`avatar_lightning.lit.stopping`: its input-image count comes from the DataModule.

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
from typing import Any

import torch
from torch import Tensor

from avatar_lightning.export import side_by_side, write_metrics, write_video
from avatar_lightning.head.gaussians import MeshBinding
from avatar_lightning.io import atomic_path, save_image
from avatar_lightning.lit.base import AvatarModule, Batch, Outputs
from avatar_lightning.lit.render_step import head_centre, pose_gaussians, render_batch
from avatar_lightning.lit.stopping import input_frames, stop_reason
from avatar_lightning.metrics.head_region import SequenceTLPIPS, shared_head_metrics
from avatar_lightning.render import Gaussians, RenderOutput, orbit_cameras, save_ply
from avatar_lightning.viz import error_map

VIEW_BUCKETS = {"novel_view_near": (0.0, 30.0), "novel_view_side": (30.0, 75.0), "novel_view_far": (75.0, 180.1)}
SPLITS = ("novel_view", *VIEW_BUCKETS, "novel_expression")


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


class FewShotAvatar(AvatarModule):
    """A personal avatar fitted to a few images: scored per evaluation split, exported at the end of fit.

    The subclass assigns ``head`` and implements :meth:`canonical` and ``compute_losses``; it may
    set ``hparams.render_backend``, ``output_dir``, ``turntable_frames``, ``expression_steps`` and
    ``fps`` (the export). Metric groups are :data:`SPLITS` (module docstring).
    """

    score_groups = SPLITS

    def __init__(self) -> None:
        super().__init__()
        self.n_input_frames = 0  # from the DataModule when training starts (lit.stopping.input_frames)
        self.inputs: dict[str, Tensor] | None = None

    def canonical(self, batch: Batch) -> tuple[Gaussians, MeshBinding]:
        """Batched canonical Gaussians [B, N, ...] for ``batch`` and their mesh binding."""
        raise NotImplementedError

    @property
    def render_backend(self) -> str:
        return str(self.hparams.get("render_backend", "auto"))

    def render(self, batch: Batch) -> RenderOutput:
        """Pose and render every view of ``batch``: rgb [B, V, 3, H, W]."""
        gaussians, binding = self.canonical(batch)
        return render_batch(batch, gaussians, binding, self.head, self.render_backend)

    def forward(self, batch: Batch) -> Outputs:
        return Outputs(render=self.render(batch))

    def metric_groups(self, batch: Batch) -> dict[str, Tensor]:
        """Novel views (and their angle buckets) vs novel expressions, per image (module docstring)."""
        frame = batch["frame"].repeat_interleave(batch["image"].shape[1])
        return split_masks(frame, self.input_view_angles(batch))

    def input_view_angles(self, batch: Batch) -> Tensor | None:
        """``[B·V]`` angle of each image's camera to the nearest few-shot input camera (None before
        the inputs are known), measured around the inputs' neutral head centre."""
        if self.inputs is None:
            return None
        inputs = self.inputs
        neutral = {**inputs, "expr": torch.zeros_like(inputs["expr"]), "pose": torch.zeros_like(inputs["pose"])}
        centre = head_centre({k: v.to(batch["world_to_cam"].device) for k, v in neutral.items()}, self.head)
        return view_angles(batch["world_to_cam"].flatten(0, 1), inputs["world_to_cam"][0].to(centre), centre)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> dict[str, dict[str, float]]:
        """Scores over held-out batches (moved to the module's device).

        When the held-out samples are a monocular sequence in time order (one view each, frame numbers
        increasing; INSTA's and the tracker's test frames), the group ``sequence`` adds t-LPIPS over
        consecutive frames (:class:`~avatar_lightning.metrics.head_region.SequenceTLPIPS`).
        """
        self.compute_scores(reset=True)
        temporal = None
        for batch in batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            outputs = self(batch)
            self.update_scores(batch, outputs)
            if temporal is None:
                temporal = SequenceTLPIPS(shared_head_metrics(self.device))
            temporal.update(outputs.render.rgb, batch["image"], batch["mask"], batch["frame"], batch["identity"])
        scores = self.compute_scores()
        sequence = temporal.compute() if temporal is not None else None
        if sequence is not None:
            scores["sequence"] = sequence
        return scores

    # --------------------------------------------------------------------------- the fit
    @property
    def min_steps_before_stopping(self) -> int:
        """No plateau stop before this step (:class:`~avatar_lightning.lit.stopping.EarlyStoppable`)."""
        return 0

    def on_train_start(self) -> None:
        self.n_input_frames = input_frames(self.trainer)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        """Keep the first training sample (the few-shot inputs) for the exported videos."""
        if self.inputs is None:
            self.inputs = {k: v[:1].detach() for k, v in batch.items()}

    def output_metrics(self) -> dict[str, Any]:
        """Run facts written into ``metrics.json`` beside the held-out scores: steps, input frames and
        why the fit ended (:func:`~avatar_lightning.lit.stopping.stop_reason`)."""
        stop = stop_reason(self.trainer)
        return {"steps": self.global_step, "n_input_frames": self.n_input_frames, "stop_kind": stop.kind,
                "stop_reason": stop.reason}

    def on_fit_end(self) -> None:
        out_dir = self.hparams.get("output_dir")
        if out_dir and self.trainer.is_global_zero:
            stop = stop_reason(self.trainer)
            bad = [n for n, p in self.named_parameters() if not torch.isfinite(p).all()]
            if stop.kind == "non_finite" or bad:
                raise RuntimeError(f"{type(self).__name__}: not exporting an avatar to {out_dir}: {stop.reason}"
                                   + (f"; non-finite parameters: {bad[:5]}" if bad else ""))
            self.write_outputs(out_dir)

    def write_outputs(self, out_dir: str | Path) -> dict[str, Path]:
        """Checkpoint + PLY + turntable / expression MP4s + ``metrics.json`` (held-out), all atomic.

        Held-out data is the DataModule's validation set. Single-process only: the checkpoint is
        written by this process alone.
        """
        if self.inputs is None:
            raise RuntimeError(f"{type(self).__name__}.write_outputs: no training batch was seen (nothing was fitted)")
        out, trainer = Path(out_dir), self.trainer
        with atomic_path(out / "avatar.ckpt") as tmp:
            trainer.save_checkpoint(tmp)
        dm = trainer.datamodule
        eval_loader = dm.val_dataloader() if dm is not None else (trainer.val_dataloaders or [])
        hp = self.hparams
        inputs = {k: v.to(self.device) for k, v in self.inputs.items()}
        paths = self.export_avatar(out, inputs, eval_loader, hp.turntable_frames, hp.expression_steps, hp.fps,
                                   extra_metrics=self.output_metrics())
        return {"avatar.ckpt": out / "avatar.ckpt", **paths}

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
        dev = self.device
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

