"""What a checkpoint says about itself: the network shape it was written for, and its dataset.

A module refuses weights written for another shape (:func:`refuse_other_shape`), a prior's
checkpoint records the DataModule it was trained on (:func:`dataset_config`, written by
:class:`avatar_lightning.lit.base.AvatarModule` under ``checkpoint["dataset"]``), and the few-shot
data reads it back (:func:`recorded_dataset`) to take its subject from the prior's own held-out
identities. :func:`find_prior_checkpoint` resolves ``"latest"`` to the newest prior of a kind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

log = logging.getLogger(__name__)

#: the checkpoint key under which a module records the DataModule it was fitted on
DATASET_KEY = "dataset"


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


def _plain(value: Any) -> Any:
    """A YAML/JSON-able copy (dicts, lists, numbers, strings, None) that ``weights_only`` loads read."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def dataset_config(datamodule: LightningDataModule | None) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of a DataModule that saved its hyper-parameters, else None.

    The init args are its ``hparams`` (every argument, defaults included), so the config rebuilds
    the same dataset without the YAML it came from.
    """
    if datamodule is None or not datamodule.hparams:
        return None
    init_args = {k: v for k, v in datamodule.hparams.items() if not k.startswith("_")}  # LightningCLI's _class_path
    cls = type(datamodule)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": _plain(init_args)}


def recorded_dataset(path: str | os.PathLike) -> dict[str, Any]:
    """The dataset config a checkpoint recorded (:func:`dataset_config` of the DataModule it was fitted on).

    Raises:
        ValueError: naming the checkpoint when it records none (written outside a Trainer with a
            DataModule, or by an older version).
    """
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    config = state.get(DATASET_KEY)
    saved = dict(state.get("datamodule_hyper_parameters") or {})
    if not config and "_class_path" in saved:  # written through LightningCLI before "dataset" was recorded
        config = {"class_path": saved.pop("_class_path"),
                  "init_args": {k: v for k, v in saved.items() if not k.startswith("_")}}
    if not config:
        raise ValueError(f"{path} records no dataset (it was written without a DataModule, or by an older "
                         f"version): give the subject's data explicitly, data.init_args.source={{class_path, "
                         f"init_args}}")
    return config


#: What identifies each kind of prior in a checkpoint's state dict: its identity encoder.
PRIOR_MARKERS = {"synshot": "net.enc_id.", "realhead": "net.encoder_id."}
#: The config that trains each kind (for messages).
PRIOR_CONFIGS = {"synshot": "experiments/prior.yaml", "realhead": "experiments/realhead_prior.yaml"}


def find_prior_checkpoint(spec: str | os.PathLike = "latest", runs_dir: str | os.PathLike = "runs",
                          min_steps: int = 100, allow_untrained: bool = False, kind: str = "synshot") -> Path:
    """Resolve the prior checkpoint to invert or enroll from, and say which one it is (path, step, run config).

    Args:
        spec: a ``.ckpt`` path, or ``"latest"``: the newest checkpoint under ``runs_dir`` that holds
            a prior of ``kind`` (its state dict has that prior's identity encoder, :data:`PRIOR_MARKERS`).
        runs_dir: where ``lightning fit -c experiments/prior.yaml`` (or ``realhead_prior.yaml``) writes its runs.
        min_steps: ``"latest"`` refuses a prior trained for fewer optimiser steps than this (a shrunk
            or smoke-test run's checkpoint is newer than a real one and would otherwise be inverted
            silently). A checkpoint that records no step (not written by Lightning) is taken, with
            its step reported as unknown.
        allow_untrained: take an under-trained ``"latest"`` anyway. A path given as ``spec`` is the
            user's explicit choice and is never refused (only warned about).
        kind: ``"synshot"`` (the inversion's) or ``"realhead"`` (3DRealHead enrollment's).

    Raises:
        FileNotFoundError: naming the path, or ``runs_dir`` and what was looked for.
        ValueError: ``"latest"`` is an under-trained prior, naming it, its step and how to proceed; an
            unknown ``kind``.
    """
    if kind not in PRIOR_MARKERS:
        raise ValueError(f"find_prior_checkpoint: kind must be one of {sorted(PRIOR_MARKERS)}, got {kind!r}")
    marker, config = PRIOR_MARKERS[kind], PRIOR_CONFIGS[kind]
    def load(path: Path) -> dict[str, Any] | None:
        try:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except Exception as err:  # a half-copied or foreign file: skip it, say so
            log.warning("skipping unreadable checkpoint %s (%s)", path, err)
            return None

    def describe(path: Path, state: dict[str, Any]) -> str:
        step = state.get("global_step")
        config = next((d / "config.yaml" for d in (path.parent, path.parent.parent) if (d / "config.yaml").is_file()),
                      None)
        net = dict(state.get("hyper_parameters", {}).get("net") or {})
        size = {k: net[k] for k in ("map_resolution", "feature_channels") if k in net}
        return (f"{path} (global_step {'unknown' if step is None else step}, epoch {state.get('epoch', 'unknown')}, "
                f"net {size or 'unknown'}, config {config or 'not found beside it'})")

    if str(spec) != "latest":
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"prior checkpoint not found: {path}")
        state = load(path) or {}
        rank_zero_info(f"prior checkpoint: {describe(path, state)}")
        if state.get("global_step") is not None and state["global_step"] < min_steps:
            rank_zero_warn(f"the prior {path} was trained for {state['global_step']} steps only (< {min_steps})")
        return path
    root = Path(runs_dir)
    candidates = sorted(root.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    for path in candidates:
        state = load(path)
        if state is None or not any(k.startswith(marker) for k in state.get("state_dict", {})) or (
                "prior_hparams" in state.get("hyper_parameters", {})):
            continue
        step = state.get("global_step")
        if step is not None and step < min_steps and not allow_untrained:
            raise ValueError(f"prior_checkpoint=latest found {describe(path, state)}: trained for {step} steps "
                             f"(< {min_steps}), which looks like a shrunk or interrupted run, not a trained prior. "
                             f"Train one (lightning fit -c {config}), or pass the checkpoint you mean "
                             f"as prior_checkpoint=PATH (an explicit path is used as given).")
        rank_zero_info(f"prior_checkpoint=latest is {describe(path, state)}")
        return path
    raise FileNotFoundError(f"no {kind} prior checkpoint (*.ckpt with {marker.rstrip('.')} weights) under "
                            f"{root.resolve()}; train one first: lightning fit -c {config}, or pass "
                            f"prior_checkpoint=PATH")
