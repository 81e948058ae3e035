"""The ``lightning`` console script: one :class:`LightningCLI` in subclass mode.

Every YAML names its model and data by ``class_path``; configs stack (``-c base.yaml -c exp.yaml``)::

    lightning fit -c experiments/prior.yaml
    lightning fit -c experiments/prior.yaml --ckpt_path last     # resume the newest run under default_root_dir
    lightning validate -c experiments/prior.yaml --ckpt_path runs/.../last.ckpt

What the data decides reaches the model through ``link_arguments`` (:data:`DATA_LINKS`: head
model, coefficient counts, UV map size), so configs never copy those values by hand. A link applies
when the chosen model has the field; a DataModule that does not state the value leaves the model's
own. The few-shot data of an inversion or baseline decides through its subject's dataset (by
default the one the prior was trained on, read from the checkpoint the model's
``prior_checkpoint`` names, :data:`MODEL_LINKS`).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from avatar_lightning.lit.fewshot_data import FewShotDataModule, subject_source

#: Where runs (TensorBoard logs, checkpoints) go unless a config says otherwise.
DEFAULT_ROOT_DIR = "runs"

#: What the data decides: (data init argument, model target). Add a row when a model takes another.
DATA_LINKS = (
    ("head_model", "model.init_args.head_model"),
    ("n_shape", "model.init_args.n_shape"),
    ("n_expr", "model.init_args.n_expr"),
    ("uv_size", "model.init_args.net.map_resolution"),  # SynShot's maps are the data's UV inputs
    ("uv_size", "model.init_args.uv_size"),  # 3DRealHead's
)
#: What the model decides for the data: the prior an inversion inverts is its data's default subject source.
MODEL_LINKS = (
    ("model.init_args.prior_checkpoint", "data.init_args.prior_checkpoint"),
    ("model.init_args.runs_dir", "data.init_args.runs_dir"),
)


def _import(class_path: str) -> Any:
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def config_value(config: dict[str, Any], field: str) -> Any:
    """``field`` of a ``{class_path, init_args}`` config: as given, else the class's default (None: neither)."""
    init_args = config.get("init_args") or {}
    if field in init_args:
        return init_args[field]
    parameter = inspect.signature(_import(config["class_path"])).parameters.get(field)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def data_value(field: str) -> Callable[[Namespace | None, Any], Any]:
    """The ``compute_fn`` of a data link ``(data, model's own value) -> value``: ``field`` of the parsed
    data config, or of the subject's dataset for :class:`FewShotDataModule` (its ``source``, else its
    prior's recorded dataset); the model's own value when the data does not state one."""

    def value(data: Namespace | None, own: Any) -> Any:
        if data is None:
            return own
        args = data.init_args.as_dict()
        if field in args:
            return args[field]
        data_class = _import(data.class_path)
        if issubclass(data_class, FewShotDataModule):
            found = config_value(subject_source(args["source"], args["prior_checkpoint"], args["runs_dir"],
                                                data_class.prior_kind), field)
            return own if found is None else found
        return own

    value.__name__ = f"data_{field}"
    return value


class AvatarCLI(LightningCLI):
    """LightningCLI with the project's defaults.

    Model and data are chosen by ``class_path`` (subclass mode). The trainer defaults write
    TensorBoard logs and checkpoints under ``runs/``; every value can be overridden in YAML.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        trainer_defaults = {"default_root_dir": DEFAULT_ROOT_DIR}
        trainer_defaults.update(kwargs.pop("trainer_defaults", {}))
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=trainer_defaults,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model -> data links first: jsonargparse applies links in the order they are added, and
        # the data values of a few-shot fit depend on the prior the model names.
        for source, target in MODEL_LINKS:
            parser.link_arguments(source, target)
        for field, target in DATA_LINKS:  # the target is a source too: skipped when the model lacks it
            parser.link_arguments(("data", target), target, compute_fn=data_value(field))

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") == "last":
            try:
                kwargs["ckpt_path"] = str(find_last_checkpoint(self.trainer.default_root_dir))
            except FileNotFoundError as err:
                if subcommand != "fit":
                    raise
                # like Lightning: an auto-resume script may pass `last` on its very first run
                rank_zero_warn(f"{err}; training starts from scratch")
                kwargs["ckpt_path"] = None
        return kwargs


def find_last_checkpoint(root: str | Path) -> Path:
    """The newest ``last.ckpt`` (or ``last-vN.ckpt``) in ``root/lightning_logs/version_N/checkpoints``
    or ``root/checkpoints``, by modification time.

    Lightning's own ``ckpt_path="last"`` only looks in the *new* run's checkpoint folder (a fresh
    ``version_N+1``, empty), so a CLI resume would silently start from scratch; this finds the
    previous run's checkpoint instead.

    Raises:
        FileNotFoundError: naming ``root`` when it holds no ``last.ckpt``.
    """
    root = Path(root)
    candidates = [*root.glob("lightning_logs/version_*/checkpoints/last*.ckpt"), *root.glob("checkpoints/last*.ckpt")]
    found = sorted((p for p in candidates if p.is_file() and re.fullmatch(r"last(-v\d+)?\.ckpt", p.name)),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no last.ckpt under {root} (looked in lightning_logs/version_N/checkpoints); "
                                f"pass the checkpoint's path instead")
    return found[-1]


def main(args: list[str] | None = None) -> AvatarCLI:
    """Run the CLI (``args=None`` reads ``sys.argv``). Returns the CLI object (for tests)."""
    if torch.cuda.is_available():
        # TF32 tensor cores for float32 matmuls on Ampere+ (Lightning warns otherwise).
        torch.set_float32_matmul_precision("high")
    return AvatarCLI(args=args)


def run() -> None:
    """The ``lightning`` console script. Returns None: the wrapper passes the return value to
    ``sys.exit``, and anything but None/0 would make a successful run exit with status 1."""
    main()


if __name__ == "__main__":
    run()
