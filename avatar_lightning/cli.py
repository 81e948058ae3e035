"""The ``lightning`` console script: one :class:`LightningCLI` in subclass mode.

Every YAML names its model and data by ``class_path``; configs stack (``-c base.yaml -c exp.yaml``)::

    lightning fit -c experiments/prior.yaml
    lightning validate -c experiments/prior.yaml --ckpt_path runs/.../last.ckpt
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

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
