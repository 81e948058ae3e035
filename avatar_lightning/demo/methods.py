"""The methods the demo compares, one fit of one method on one held-out identity, and the checks that
every method saw the same inputs and is scored on the same held-out images."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from avatar_lightning.cli import AvatarCLI
from avatar_lightning.io import write_json

SPLITS = ("novel_view_near", "novel_view_side", "novel_view_far", "novel_expression")
SCORES = ("psnr", "ssim", "lpips", "id")
FIGURE_SPLITS = ("novel_view", "novel_expression")  # the side-by-side figure's columns
CAPPED = ("budget", "cap")  # stop kinds that mean "did not converge on its own"


@dataclass(frozen=True)
class Method:
    """How the demo fits one method: the configs a user runs, and which prior it reads.

    Attributes:
        label: the table's name of the method.
        prior: ``synshot`` or ``realhead``: the prior whose checkpoint the fit reads (the baseline
            takes only its subject, from the SynShot prior's dataset).
        configs: the ``-c`` files, in stacking order.
        args: further CLI arguments.
        model_prior: the model itself reads the prior (``--model.init_args.prior_checkpoint``).
        views: input images it fits (its step cap is the same as a :data:`INPUT_VIEWS`-image fit's).
        score_views: None: scored on its own held-out split (its ``metrics.json``); else re-scored
            on the split of that many input views (same images and view buckets as those methods).
    """

    label: str
    prior: str
    configs: tuple[str, ...]
    args: tuple[str, ...] = ()
    model_prior: bool = True
    views: int = 3
    score_views: int | None = None


METHODS = {
    "inversion": Method("SynShot inversion (prior)", "synshot", ("experiments/invert.yaml",)),
    "baseline": Method("no-prior baseline (GaussianAvatars-style)", "synshot",
                       ("experiments/invert.yaml", "experiments/baseline.yaml"), model_prior=False),
    "enrollment": Method("3DRealHead enrollment (prior)", "realhead", ("experiments/enroll.yaml",),
                         ("--data.init_args.views=3",)),
    "enrollment_1view": Method("3DRealHead enrollment, 1 view (paper Fig. 3)", "realhead",
                               ("experiments/enroll.yaml",), ("--data.init_args.views=1",), views=1,
                               score_views=3),
}
DEFAULT_METHODS = ("inversion", "baseline")  # `make demo`
INPUT_VIEWS = 3  # the benchmark's input images (a 1-view fit is the exception, scored against them)


def parse_methods(text: str) -> list[str]:
    """``"inversion,baseline"`` or ``"all"`` -> method names in :data:`METHODS` order."""
    names = list(METHODS) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {unknown or text!r}; choose from {list(METHODS)} or 'all'")
    return [m for m in METHODS if m in names]


@dataclass
class Fit:
    """One fitted avatar: its metrics, why it stopped, what it saw, and held-out renders for the figure.

    ``inputs_fp`` / ``eval_fp`` are digests of the input images, cameras and parameters (cameras in
    index order) and of the held-out images and cameras it was scored on (:func:`split_digests`).
    """

    method: str
    identity: int
    metrics: dict[str, Any]
    seconds: float
    steps: int = 0
    stop_kind: str = "other"
    stop_reason: str = ""
    renders: dict[str, Tensor] = field(default_factory=dict)  # split -> [3, H, W]
    targets: dict[str, Tensor] = field(default_factory=dict)
    losses: list[tuple[int, int, float]] = field(default_factory=list)
    input_cameras: list[int] = field(default_factory=list)
    inputs_fp: str = ""
    eval_fp: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def capped(self) -> bool:
        """Ended by a step cap rather than by its own plateau."""
        return self.stop_kind in CAPPED

    def record(self) -> dict[str, Any]:
        """The per-fit ``results.json`` entry."""
        return {"method": self.method, "identity": self.identity, "steps": self.steps,
                "stop_reason": f"{self.stop_kind}: {self.stop_reason}", "stop_kind": self.stop_kind,
                "capped": self.capped, "seconds": round(self.seconds, 2),
                "metrics": {s: {k: self.metrics[s][k] for k in SCORES if k in self.metrics[s]}
                            for s in (*SPLITS, "novel_view") if s in self.metrics},
                "whole_frame_psnr": {s: self.metrics[s]["psnr_full"] for s in SPLITS
                                     if "psnr_full" in self.metrics.get(s, {})},
                "input_cameras": self.input_cameras,
                "fingerprints": {"inputs": self.inputs_fp, "evaluation": self.eval_fp}, **self.extra}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Fit:
        """A finished fit read back from its ``results.json`` (``--resume``; no renders)."""
        known = {"method", "identity", "steps", "stop_reason", "stop_kind", "capped", "seconds", "metrics",
                 "whole_frame_psnr", "input_cameras", "fingerprints", "losses"}
        return cls(rec["method"], int(rec["identity"]), rec["metrics"], float(rec["seconds"]), int(rec["steps"]),
                   rec["stop_kind"], rec["stop_reason"].partition(": ")[2],
                   losses=[tuple(x) for x in rec.get("losses", [])], input_cameras=list(rec.get("input_cameras", [])),
                   inputs_fp=rec.get("fingerprints", {}).get("inputs", ""),
                   eval_fp=rec.get("fingerprints", {}).get("evaluation", ""),
                   extra={k: v for k, v in rec.items() if k not in known})


# ------------------------------------------------------------------------------- same data
def _digest(tensors: Iterable[Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def split_digests(split: Any, evaluation: Dataset | None = None) -> tuple[str, str]:
    """``(inputs, evaluation)`` digests of a :class:`~avatar_lightning.lit.fewshot_data.FewShotSplit`.

    Inputs: images, masks and cameras of the input views sorted by camera index (3DRealHead puts the
    frontal view first, the SynShot split the rig's order; the set is what counts), and the shape,
    expression, pose and translation they come with. Evaluation: every held-out image, mask, camera and
    frame of ``evaluation`` (default: the split's own).
    """
    cams = list(split.input_cameras)
    order = sorted(range(len(cams)), key=cams.__getitem__)
    inputs = split.inputs
    per_view = [inputs[k][0, order] for k in ("image", "mask", "K", "world_to_cam")]
    shared = [inputs[k][0] for k in ("shape", "expr", "pose", "translation")]
    items = evaluation if evaluation is not None else split.evaluation
    held_out = [item[k] for item in items for k in ("identity", "frame", "image", "mask", "K", "world_to_cam")]
    return _digest(per_view + shared), _digest(held_out)


def check_same_data(fits: list[Fit]) -> None:
    """Every identity's fits saw the same inputs and were scored on the same held-out images.

    Fits with the same number of input views must share their inputs digest; one with fewer views
    (the 1-view enrollment) must use a subset of the others' cameras. Fits without digests (results
    of older runs) are skipped.

    Raises:
        ValueError: naming the identity and the methods that differ.
    """
    for identity in sorted({f.identity for f in fits}):
        rows = [f for f in fits if f.identity == identity and f.eval_fp]
        if not rows:
            continue
        ref = max(rows, key=lambda f: len(f.input_cameras))
        for f in rows:
            if f.eval_fp != ref.eval_fp:
                raise ValueError(f"identity {identity}: {f.method} was scored on other held-out images than "
                                 f"{ref.method} ({f.eval_fp} vs {ref.eval_fp})")
            same_views = len(f.input_cameras) == len(ref.input_cameras)
            if (same_views and f.inputs_fp != ref.inputs_fp) or not set(f.input_cameras) <= set(ref.input_cameras):
                raise ValueError(f"identity {identity}: {f.method} saw other inputs than {ref.method} (cameras "
                                 f"{f.input_cameras} vs {ref.input_cameras}, digests {f.inputs_fp} vs {ref.inputs_fp})")


# ------------------------------------------------------------------------------------ a fit
def fit_args(method: str, identity: int, priors: dict[str, Path], dest: Path, overrides: list[str]) -> list[str]:
    """``lightning fit`` arguments of one method on one identity."""
    spec = METHODS[method]
    prior = priors[spec.prior]
    args = [a for c in spec.configs for a in ("-c", c)]
    args += [f"--data.init_args.prior_checkpoint={prior}", f"--data.init_args.identity={identity}",
             f"--trainer.default_root_dir={dest / 'run'}", f"--model.init_args.output_dir={dest}", *spec.args,
             *overrides]
    if spec.model_prior:
        args.append(f"--model.init_args.prior_checkpoint={prior}")
    return args


def fit_avatar(method: str, identity: int, priors: dict[str, Path], out: Path, overrides: list[str]) -> Fit:
    """Fit ``method`` (:data:`METHODS`) to one held-out identity of the priors' dataset, score it (its
    ``metrics.json``, or a re-scoring, :attr:`Method.score_views`) and write its ``results.json``."""
    dest = out / method / str(identity)
    start = time.perf_counter()
    cli = AvatarCLI(args=["fit", *fit_args(method, identity, priors, dest, overrides)])
    seconds = time.perf_counter() - start
    own = json.loads((dest / "metrics.json").read_text())
    split = cli.datamodule.split
    scored, metrics, extra = split, own, {}
    if METHODS[method].score_views is not None:
        scored = cli.datamodule.source.fewshot(identity, views=METHODS[method].score_views)
        metrics = rescore(cli.model, scored)
        extra = {"own_split_metrics": {s: {k: own[s][k] for k in SCORES if k in own[s]} for s in SPLITS if s in own},
                 "scored_on_input_cameras": list(scored.input_cameras)}
    inputs_fp, eval_fp = split_digests(split, scored.evaluation)
    fit = Fit(method, identity, metrics, seconds, steps=int(own.get("steps", cli.trainer.global_step)),
              stop_kind=str(own.get("stop_kind", "other")), stop_reason=str(own.get("stop_reason", "")),
              losses=list(getattr(cli.model, "loss_history", [])), input_cameras=list(split.input_cameras),
              inputs_fp=inputs_fp, eval_fp=eval_fp, extra=extra)
    write_json(dest / "results.json", {**fit.record(), "losses": fit.losses})
    first_renders(cli.model, DataLoader(scored.evaluation, batch_size=2), fit)
    return fit


@torch.no_grad()
def rescore(model: Any, split: Any) -> dict[str, dict[str, float]]:
    """Head-region scores of a fitted avatar on another split of its subject, view buckets by that
    split's input cameras (:meth:`FewShotAvatar.evaluate`; the avatar's own inputs are restored)."""
    kept = model.inputs
    model.inputs = {k: v.to(model.device) for k, v in split.inputs.items()}
    try:
        return model.eval().evaluate(DataLoader(split.evaluation, batch_size=2))
    finally:
        model.inputs = kept


@torch.no_grad()
def first_renders(model: Any, loader: Iterable[dict[str, Tensor]], fit: Fit) -> None:
    """The first held-out image of each figure split: target and render (for the side-by-side figure)."""
    model = model.eval()
    for batch in loader:
        for i, frame in enumerate(batch["frame"].tolist()):
            split = "novel_view" if frame == 0 else "novel_expression"
            if split in fit.renders:
                continue
            sample = {k: v[i:i + 1].to(model.device) for k, v in batch.items()}
            view = most_frontal_view(sample["world_to_cam"][0])
            sample = {**sample, **{k: sample[k][:, view:view + 1] for k in ("image", "mask", "K", "world_to_cam")}}
            fit.renders[split] = model.render(sample).rgb[0, 0].clamp(0, 1).cpu()
            fit.targets[split] = sample["image"][0, 0].cpu()
        if len(fit.renders) == len(FIGURE_SPLITS):
            return


def most_frontal_view(world_to_cam: Tensor) -> int:
    """Index of the camera ``[V, 4, 4]`` looking most directly at the face (heads face +z)."""
    centres = torch.linalg.inv(world_to_cam)[:, :3, 3]
    return int(torch.nn.functional.normalize(centres, dim=-1)[:, 2].argmax())


def fit_overrides(method: str, seed: int, cap_per_frame: int, max_steps: int, noise: dict[str, float] | None,
                  video_frames: int) -> list[str]:
    """CLI settings of one fit: the generous caps, the seed, the noise, and short export videos (they are
    not part of the benchmark).

    The cap rule is one for every method: ``cap_per_frame ×`` :data:`INPUT_VIEWS` steps (and
    ``max_steps``). EMAEarlyStopping counts it per input image, so a 1-view fit gets a per-image cap
    3× larger: the same number of steps, not a third of them (at 600 per image, 3 of 5 one-view
    enrollments of the first three-way run reached 600 steps before their plateau).
    """
    per_frame = cap_per_frame * INPUT_VIEWS // METHODS[method].views
    args = [f"--seed_everything={seed}", f"--trainer.max_steps={max_steps}",
            f"--trainer.callbacks.init_args.max_steps_per_frame={per_frame}",
            f"--model.init_args.turntable_frames={video_frames}", "--model.init_args.expression_steps=2"]
    if noise:
        args.append(f"--data.init_args.tracking_noise={json.dumps(noise)}")
    return args
