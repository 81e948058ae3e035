"""Which SynShot prior the real-data demo inverts, and what it says about itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avatar_lightning.lit.checkpoint import find_prior_checkpoint


@dataclass
class PriorChoice:
    """The prior to invert.

    Attributes:
        path: its checkpoint.
        how: a sentence saying how it was chosen (given, found as ``latest``, or trained here).
        head_model: ``"builtin"`` or the FLAME pickle it was trained with (the tracker must use it too).
        n_shape: its identity coefficients S.
        n_expr: its expression coefficients E.
        map_resolution: side of its UV maps (the INSTA data's ``uv_size``).
        steps: optimiser steps it trained (None when the checkpoint does not say).
    """

    path: Path
    how: str
    head_model: str
    n_shape: int
    n_expr: int
    map_resolution: int
    steps: int | None


def describe_prior(path: Path, how: str) -> PriorChoice:
    """Read the head model, coefficient counts and map size a SynShot prior checkpoint was written for.

    Raises:
        FileNotFoundError: naming ``path``.
        ValueError: naming ``path``: unreadable, or not a SynShot prior (no ``net.map_resolution``).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"prior checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # torch raises several unrelated types for a truncated or foreign file
        raise ValueError(f"cannot read the prior checkpoint {path}: {err}") from err
    hp: dict[str, Any] = dict(state.get("hyper_parameters") or {}) if isinstance(state, dict) else {}
    net = dict(hp.get("net") or {})
    if "map_resolution" not in net:
        raise ValueError(f"{path} is not a SynShot prior checkpoint (its hyper-parameters hold no net.map_resolution)")
    return PriorChoice(Path(path), how, str(hp.get("head_model", "builtin")), int(hp.get("n_shape", 20)),
                       int(hp.get("n_expr", 15)), int(net["map_resolution"]), state.get("global_step"))


#: the prior the project ships (``make shipped-prior``; :mod:`avatar_lightning.demo.ship`)
SHIPPED_PRIOR = Path("priors/demo_prior.ckpt")


def resolve_prior(spec: str, runs_dir: str, prior_config: str, out: Path, seed: int = 0,
                  shipped: Path | None = SHIPPED_PRIOR) -> PriorChoice:
    """The prior checkpoint to invert.

    Args:
        spec: a ``.ckpt`` path, or ``"latest"``: the newest trained SynShot prior under ``runs_dir``
            (as ``experiments/invert.yaml`` finds it); when there is none, the ``shipped`` prior, and
            without one ``prior_config`` is trained here as ``make demo RETRAIN=1`` trains it
            (``avatar_lightning.demo.train_prior``), into ``out/prior.ckpt``.
        runs_dir: where ``"latest"`` looks.
        prior_config: the config trained when no prior exists.
        out: the demo's output folder.
        seed: seed of that training.
        shipped: the shipped prior (relative paths: from the working directory, the repository root);
            None: never use it.

    Raises:
        FileNotFoundError: an explicit path does not exist (named).
        ValueError: ``"latest"`` is an under-trained prior (named, see ``find_prior_checkpoint``).
    """
    if spec != "latest":
        return describe_prior(find_prior_checkpoint(spec, runs_dir), f"given: {spec}")
    try:
        path = find_prior_checkpoint("latest", runs_dir)
    except FileNotFoundError:
        if shipped is not None and Path(shipped).is_file():
            return describe_prior(Path(shipped), f"the shipped prior {shipped} (no SynShot prior under {runs_dir}/)")
        from avatar_lightning.demo import train_prior

        path = train_prior(prior_config, [f"--seed_everything={seed}"], out)
        return describe_prior(path, f"trained here from {prior_config} (no SynShot prior under {runs_dir}/)")
    return describe_prior(path, f"prior_checkpoint=latest under {runs_dir}/ (the newest trained SynShot prior)")
