"""Ship a trained SynShot demo prior with the project: a small checkpoint plus a record of how it was made.

``make demo`` inverts the shipped prior (``priors/demo_prior.ckpt``) unless the user retrains
(``make demo RETRAIN=1``): a prior trained here for longer than a demo run may take (issue 13:
the 1,500-step CPU prior is under-fitted and its result depends on the seed) and reproducible
bit for bit on every clone. ``make shipped-prior`` retrains it with the project's own config and
rewrites the files below.

Files (each written atomically):

- ``<out>.ckpt``: the Lightning checkpoint without optimiser, scheduler and loop state (inversion
  reads only the weights, hyper-parameters, step and the recorded dataset, which must equal
  ``experiments/demo_prior.yaml``'s data block so the demo's subjects are held out).
- ``<out>.json``: its SHA-256, ``global_step``, the training command, the SHA-256 of the run's
  resolved ``config.yaml`` (copied beside it as ``<out>.config.yaml``), the training loss curve
  (every logged epoch mean), and when given the prior report's held-out scores.

    python -m avatar_lightning.demo.ship RUN/checkpoints/last.ckpt --out priors/demo_prior \\
        --command "lightning fit -c experiments/demo_prior.yaml ..." [--report REPORT.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from avatar_lightning.io import atomic_path, write_bytes, write_json
from avatar_lightning.lit.checkpoint import PRIOR_MARKERS

#: checkpoint entries a shipped prior keeps (``dataset`` / ``module_class``: lit.base's records)
KEEP = ("state_dict", "hyper_parameters", "global_step", "epoch", "pytorch-lightning_version", "dataset",
        "module_class", "hparams_name")


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_config(checkpoint: Path) -> Path | None:
    """The ``config.yaml`` LightningCLI saved for the run that wrote ``checkpoint`` (None: not found)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent, checkpoint.parent.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def loss_curve(checkpoint: Path, tag: str = "train/loss_epoch") -> list[list[float]]:
    """``[[step, value], ...]`` of ``tag`` from the run's TensorBoard events (empty when there are none)."""
    folder = run_config(checkpoint)
    if folder is None:
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curve: list[list[float]] = []
    for events in sorted(folder.parent.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            curve += [[int(e.step), round(float(e.value), 5)] for e in acc.Scalars(tag)]
    return sorted(curve)


def ship(checkpoint: Path, out: Path, command: str, report: Path | None = None) -> dict[str, Any]:
    """Write ``out.ckpt``, ``out.json`` and ``out.config.yaml`` from a trained SynShot prior checkpoint.

    Args:
        checkpoint: the run's checkpoint (e.g. ``.../checkpoints/last.ckpt``).
        out: path without suffix (``priors/demo_prior``).
        command: the command that trained it (recorded as given).
        report: the prior report's ``prior_report.json`` (``python -m avatar_lightning.report``): its
            held-out and training-identity scores are recorded.

    Returns:
        The record written to ``out.json``.

    Raises:
        FileNotFoundError: naming a missing checkpoint or report.
        ValueError: naming ``checkpoint`` when it is no SynShot prior (no identity encoder weights).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    marker = PRIOR_MARKERS["synshot"]
    if not any(k.startswith(marker) for k in state.get("state_dict", {})):
        raise ValueError(f"{checkpoint} is not a SynShot prior checkpoint (no {marker} weights)")
    slim = {k: state[k] for k in KEEP if k in state}
    ckpt = out.with_suffix(".ckpt")
    with atomic_path(ckpt) as tmp:
        torch.save(slim, tmp)
    config = run_config(checkpoint)
    record: dict[str, Any] = {
        "checkpoint": ckpt.name, "sha256": sha256(ckpt), "bytes": ckpt.stat().st_size,
        "global_step": state.get("global_step"), "epoch": state.get("epoch"), "trained_from": str(checkpoint),
        "command": command, "dataset": state.get("dataset"),
        "config_sha256": sha256(config) if config is not None else None,
        "train_loss_epoch": loss_curve(checkpoint),
    }
    if config is not None:
        write_bytes(out.with_suffix(".config.yaml"), config.read_bytes())
        record["config"] = out.with_suffix(".config.yaml").name
    if report is not None:
        if not Path(report).is_file():
            raise FileNotFoundError(f"prior report not found: {report}")
        scores = json.loads(Path(report).read_text())
        record["report"] = {k: scores[k] for k in ("global_step", "held_out", "train") if k in scores}
    write_json(out.with_suffix(".json"), record)
    return record


def main(argv: list[str] | None = None) -> int:
    """Ship a prior; 0 on success, else print the error (naming the file) and return 1."""
    p = argparse.ArgumentParser(prog="python -m avatar_lightning.demo.ship", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="the trained prior's checkpoint")
    p.add_argument("--out", default="priors/demo_prior", help="output path without suffix")
    p.add_argument("--command", required=True, help="the command that trained it")
    p.add_argument("--report", default=None, help="the prior report's prior_report.json (held-out scores)")
    args = p.parse_args(argv)
    try:
        record = ship(Path(args.checkpoint), Path(args.out), args.command, Path(args.report) if args.report else None)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: record[k] for k in ("checkpoint", "sha256", "bytes", "global_step")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
