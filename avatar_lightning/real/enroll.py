"""Enroll the 3DRealHead prior onto a tracked real subject through the CLI a user runs, and rebuild the
untuned avatar to measure how much of the synthetic-to-real gap enrollment closes.

The fit is ``lightning fit -c experiments/enroll.yaml`` with the tracked folder as the subject
(``--data.init_args.source`` = :class:`data_modules.realhead_insta.RealHeadINSTADataModule`: the
first K frames enroll, every later frame is held out with its own expression offsets and mouth map),
ended by the config's EMA early stopping under a step cap that is recorded when hit.
:func:`untuned_enrollment` rebuilds the avatar E_id gives before any per-subject optimisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avatar_lightning.lit.checkpoint import find_prior_checkpoint
from avatar_lightning.lit.realhead_enroll import RealHeadEnrollment
from avatar_lightning.real.fit import FitSettings, Inversion, fit_subject, tracked_source
from avatar_lightning.real.prior import PriorChoice
from avatar_lightning.realhead.enrollment import prior_hyper_parameters, read_prior_checkpoint

#: the head fields a 3DRealHead prior must share with the tracking (made for the SynShot prior)
HEAD_FIELDS = ("head_model", "n_shape", "n_expr")


@dataclass
class RealHeadChoice:
    """The 3DRealHead prior to enroll.

    Attributes:
        path: its checkpoint.
        how: a sentence saying how it was chosen.
        uv_size: its map side R (the subject data's ``uv_size``).
        steps: optimiser steps it trained (None when the checkpoint does not say).
        hparams: its hyper-parameters (head model, S, E, network sizes).
    """

    path: Path
    how: str
    uv_size: int
    steps: int | None
    hparams: dict[str, Any]


def describe_realhead_prior(path: Path, how: str, tracking: PriorChoice) -> RealHeadChoice:
    """Read a 3DRealHead prior checkpoint and check it fits the tracked data.

    Args:
        path: the checkpoint.
        how: how it was chosen.
        tracking: the SynShot prior the subjects were tracked for (its head model and S, E).

    Raises:
        FileNotFoundError / ValueError: naming ``path`` (missing, unreadable, not a 3DRealHead prior), or
            naming the head field it does not share with the tracking.
    """
    state = read_prior_checkpoint(str(path))
    hp = prior_hyper_parameters(state)
    if "uv_size" not in hp or "levels" not in hp:
        raise ValueError(f"{path} is not a 3DRealHead prior checkpoint (no uv_size / levels in its hyper-parameters)")
    want = {"head_model": tracking.head_model, "n_shape": tracking.n_shape, "n_expr": tracking.n_expr}
    for field in HEAD_FIELDS:
        if str(hp.get(field)) != str(want[field]):
            raise ValueError(f"3DRealHead prior {path}: {field} is {hp.get(field)!r} but the subjects are tracked "
                             f"with {want[field]!r} (the SynShot prior {tracking.path}'s); train both priors on one "
                             "head model")
    return RealHeadChoice(Path(path), how, int(hp["uv_size"]), state.get("global_step"), hp)


def resolve_realhead_prior(spec: str, runs_dir: str, config: str, out: Path, seed: int, tracking: PriorChoice
                           ) -> RealHeadChoice:
    """The 3DRealHead prior to enroll: a ``.ckpt`` path, or ``"latest"`` (the newest trained one under
    ``runs_dir``; when there is none, ``config`` is trained here into ``out/realhead_prior.ckpt`` as
    ``make demo-three-way`` trains it).

    Raises:
        FileNotFoundError: a given path does not exist (named).
        ValueError: ``"latest"`` is under-trained, or the prior does not fit the tracking (named).
    """
    if spec != "latest":
        return describe_realhead_prior(find_prior_checkpoint(spec, runs_dir, kind="realhead"), f"given: {spec}",
                                       tracking)
    try:
        path = find_prior_checkpoint("latest", runs_dir, kind="realhead")
    except FileNotFoundError:
        from avatar_lightning.demo import train_prior

        path = train_prior(config, [f"--seed_everything={seed}"], out, name="realhead_prior")
        return describe_realhead_prior(path, f"trained here from {config} (no 3DRealHead prior under {runs_dir}/)",
                                       tracking)
    return describe_realhead_prior(path, f"prior_checkpoint=latest under {runs_dir}/ (the newest trained "
                                         "3DRealHead prior)", tracking)


def realhead_source(folder: Path, frames: int, inputs: int, prior: RealHeadChoice) -> dict[str, Any]:
    """:func:`~avatar_lightning.real.fit.tracked_source` for 3DRealHead enrollment
    (``RealHeadINSTADataModule``, the prior's head model and map side R)."""
    hp = prior.hparams
    return tracked_source(folder, frames, inputs, str(hp["head_model"]), int(hp["n_shape"]), int(hp["n_expr"]),
                          prior.uv_size, "data_modules.realhead_insta.RealHeadINSTADataModule")


def enroll(name: str, prior: RealHeadChoice, source: dict[str, Any], views: int, out: Path,
           settings: FitSettings) -> Inversion:
    """Enroll the 3DRealHead prior on ``source``'s subject from ``views`` input frames (1 or 3):
    :func:`~avatar_lightning.real.fit.fit_subject` with ``settings.config`` = ``experiments/enroll.yaml``.
    Returns the fit as an :class:`~avatar_lightning.real.fit.Inversion` record (its ``model`` is the
    :class:`RealHeadEnrollment`; ``stage1_steps`` holds the phase-1 steps).

    Raises:
        FileNotFoundError / ValueError: from the data (a tracked folder's missing file, named), the prior,
            or a first input frame that is not frontal (named by the enrollment).
    """
    return fit_subject(name, prior.path, source, out, settings, (f"--data.init_args.views={views}",))


@torch.no_grad()
def untuned_enrollment(fitted: RealHeadEnrollment, prior: RealHeadChoice) -> RealHeadEnrollment:
    """The avatar before any per-subject optimisation: the prior untouched, its identity maps E_id of
    the inputs' texture (what enrollment starts from). Eval mode, on the fitted model's device.

    Raises:
        RuntimeError: the enrollment saw no training batch.
    """
    if fitted.inputs is None:
        raise RuntimeError("untuned_enrollment: the enrollment saw no training batch")
    model = RealHeadEnrollment(prior_checkpoint=str(prior.path), render_backend=fitted.render_backend)
    model.configure_model()
    model = model.to(fitted.device).eval()
    model.capture_identity({k: v.to(fitted.device) for k, v in fitted.inputs.items()})
    return model
