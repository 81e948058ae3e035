"""Invert the SynShot prior onto a tracked real subject through the CLI a user runs, and rebuild the
model at its earlier stages to measure how much of the synthetic-to-real gap each stage closes.

The fit is ``lightning fit -c experiments/invert.yaml`` with the tracked folder as the subject
(``--data.init_args.source`` = ``data_modules.insta.INSTADataModule``; its ``fewshot`` serves the
first K frames as inputs and the rest as held-out frames), ended by the config's EMA early stopping
under a step cap that is recorded when hit. :func:`stage_models` rebuilds, from the prior and the
fitted avatar, the model before any per-subject tuning and the one after stage 1 only.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatar_lightning.cli import AvatarCLI
from avatar_lightning.lit.inversion import SynShotInversion
from avatar_lightning.real.prior import PriorChoice

#: stop kinds that mean a cap, not the fit's own plateau, ended it (``lit.stopping``)
CAPPED = ("budget", "cap")


@dataclass
class FitSettings:
    """How each inversion runs.

    Attributes:
        config: the inversion config (``experiments/invert.yaml``).
        cap_steps_per_frame: the EMA callback's step budget per input image (a cap; recorded when hit).
        max_steps: ``trainer.max_steps`` (also a cap).
        turntable_frames: frames of the exported turntable video.
        seed: ``seed_everything``.
        extra: more CLI arguments (e.g. shrunk settings in tests).
    """

    config: str = "experiments/invert.yaml"
    cap_steps_per_frame: int = 400
    max_steps: int = 2000
    turntable_frames: int = 36
    seed: int = 0
    extra: tuple[str, ...] = ()


@dataclass
class Inversion:
    """One finished inversion.

    Attributes:
        name: the subject.
        model: the fitted :class:`~avatar_lightning.lit.inversion.SynShotInversion` (eval mode).
        split: the subject's ``FewShotSplit`` (inputs, held-out frames).
        out: its output folder (avatar.ckpt, avatar.ply, turntable.mp4, expressions.mp4, metrics.json).
        metrics: its ``metrics.json``.
        seconds: wall time of the fit and export.
    """

    name: str
    model: SynShotInversion
    split: Any
    out: Path
    metrics: dict[str, Any]
    seconds: float

    @property
    def stop_kind(self) -> str:
        return str(self.metrics.get("stop_kind", "other"))

    @property
    def capped(self) -> bool:
        """Ended by a step cap rather than by its own EMA plateau."""
        return self.stop_kind in CAPPED

    def record(self) -> dict[str, Any]:
        """The fit's row of ``results.json``."""
        m = self.metrics
        return {"subject": self.name, "input_frames": m.get("n_input_frames"), "steps": m.get("steps"),
                "stage1_steps": m.get("stage1_steps", m.get("phase1_steps")), "stop_kind": self.stop_kind,
                "stop_reason": m.get("stop_reason", ""), "capped": self.capped, "seconds": round(self.seconds, 1),
                "output": str(self.out)}


def tracked_source(folder: Path, frames: int, inputs: int, head_model: str, n_shape: int, n_expr: int,
                   uv_size: int, class_path: str = "data_modules.insta.INSTADataModule") -> dict[str, Any]:
    """``{class_path, init_args}`` of a tracked folder as a few-shot subject: the first ``inputs``
    frames in, every later frame held out (INSTA's protocol, test = the last frames); a photo (one
    frame) has no held-out frame. ``class_path``: the INSTA DataModule serving the prior's inputs."""
    held_out = max(frames - inputs, 0)
    return {"class_path": class_path,
            "init_args": {"roots": [str(folder)], "tracker_dirs": [str(folder)], "n_test": held_out, "n_val": 0,
                          "fewshot_inputs": inputs, "fewshot_eval": held_out, "head_model": head_model,
                          "n_shape": n_shape, "n_expr": n_expr, "uv_size": uv_size}}


def insta_source(folder: Path, frames: int, inputs: int, prior: PriorChoice) -> dict[str, Any]:
    """:func:`tracked_source` for the SynShot inversion (``INSTADataModule``, the prior's map size)."""
    return tracked_source(folder, frames, inputs, prior.head_model, prior.n_shape, prior.n_expr,
                          prior.map_resolution)


def fit_subject(name: str, prior_path: Path, source: dict[str, Any], out: Path, settings: FitSettings,
                extra: tuple[str, ...] = ()) -> Inversion:
    """Run ``lightning fit -c <settings.config>`` (an inversion or an enrollment config) of the prior at
    ``prior_path`` on ``source``'s subject, with the demo's caps and outputs; the avatar goes to ``out``.

    Raises:
        FileNotFoundError / ValueError: from the data (a tracked folder's missing file, named) or the prior.
    """
    args = ["fit", "-c", settings.config, f"--model.init_args.prior_checkpoint={prior_path}",
            f"--data.init_args.prior_checkpoint={prior_path}", f"--data.init_args.source={json.dumps(source)}",
            f"--seed_everything={settings.seed}", f"--trainer.max_steps={settings.max_steps}",
            f"--trainer.callbacks.init_args.max_steps_per_frame={settings.cap_steps_per_frame}",
            f"--trainer.default_root_dir={out / 'run'}", f"--model.init_args.output_dir={out}",
            f"--model.init_args.turntable_frames={settings.turntable_frames}",
            "--model.init_args.expression_steps=1", "--trainer.enable_progress_bar=false", *extra, *settings.extra]
    start = time.perf_counter()
    with warnings.catch_warnings():  # the demo's own command line is not the fit's: nothing is mixed up
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        cli = AvatarCLI(args=args)
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return Inversion(name, cli.model.eval(), cli.datamodule.split, out, metrics, seconds)


def invert(name: str, prior: PriorChoice, source: dict[str, Any], out: Path, settings: FitSettings) -> Inversion:
    """Invert the SynShot prior on ``source``'s subject (:func:`fit_subject` with ``settings.config``,
    ``experiments/invert.yaml``)."""
    return fit_subject(name, prior.path, source, out, settings)


def stage_models(fitted: SynShotInversion, prior: PriorChoice | str | Path) -> dict[str, SynShotInversion]:
    """The subject's model before the fit ended, rebuilt from the prior and the fitted avatar.

    Stage 1 trains only E_id and stage 2 starts by freezing its code (the pivot), so:

    - ``"prior"``: the prior untouched, its E_id reading the inputs' UV maps (no per-subject tuning);
    - ``"stage1"``: the prior's decoders and regressors with the fitted pivot (the model at the
      switch to stage 2); the fitted model itself when the fit ended during stage 1.

    Args:
        fitted: the fitted inversion (its ``inputs`` set).
        prior: the prior it inverted (a :class:`PriorChoice` or its checkpoint path).

    Returns:
        ``{"prior": ..., "stage1": ...}`` in eval mode, on the fitted model's device.
    """
    if fitted.inputs is None:
        raise RuntimeError("stage_models: the inversion saw no training batch")
    path = prior.path if isinstance(prior, PriorChoice) else Path(prior)

    def fresh() -> SynShotInversion:
        model = SynShotInversion(prior_checkpoint=str(path), render_backend=fitted.render_backend)
        model.configure_model()
        model = model.to(fitted.device).eval()
        model.capture_identity({k: v.to(fitted.device) for k, v in fitted.inputs.items()})
        return model

    if int(fitted.stage) == 1:  # stopped before stage 2: the fitted model is the stage-1 model
        return {"prior": fresh(), "stage1": fitted}
    stage1 = fresh()
    stage1.pivot.copy_(fitted.pivot)
    stage1.apply_stage(2)
    return {"prior": fresh(), "stage1": stage1}
