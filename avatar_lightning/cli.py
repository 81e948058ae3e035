"""The ``lightning`` console script: one :class:`LightningCLI` in subclass mode.

Every YAML names its model and data by ``class_path``; configs stack (``-c base.yaml -c exp.yaml``)::

    lightning fit -c experiments/prior.yaml
    lightning fit -c experiments/prior.yaml --ckpt_path last     # resume the newest run under default_root_dir
    lightning validate -c experiments/prior.yaml --ckpt_path runs/.../last.ckpt
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

#: Where runs (TensorBoard logs, checkpoints) go unless a config says otherwise.
DEFAULT_ROOT_DIR = "runs"


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
