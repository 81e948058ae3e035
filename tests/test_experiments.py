"""Every shipped ``experiments/*.yaml`` parses and instantiates through the CLI.

Configs that stack on a base (``# stack-on: <file>`` on their first line) are parsed on top of it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar_lightning.cli import AvatarCLI

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CONFIGS = sorted(EXPERIMENTS.glob("**/*.yaml"))


def config_stack(path: Path) -> list[str]:
    """The ``-c`` arguments for a config, following ``# stack-on:`` headers to the base."""
    first = path.read_text().splitlines()[:1]
    args = ["-c", str(path)]
    if first and first[0].startswith("# stack-on:"):
        base = (path.parent / first[0].split(":", 1)[1].strip()).resolve()
        args = config_stack(base) + args
    return args


def test_experiments_folder_exists() -> None:
    assert EXPERIMENTS.is_dir()


@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(c.relative_to(EXPERIMENTS)) for c in CONFIGS])
def test_config_instantiates(cfg: Path, tmp_path: Path) -> None:
    # Paper-scale configs ask for 8 GPUs with DDP and bf16; instantiate them on this CPU.
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32"]
    cli = AvatarCLI(args=[*config_stack(cfg), *cpu, f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.model is not None and cli.datamodule is not None



@pytest.mark.parametrize(("name", "field", "value"), [
    ("prior_paper.yaml", "map_resolution", 512),
    ("prior_paper.yaml", "feature_channels", 128),
    ("ablations/f32.yaml", "feature_channels", 32),
    ("ablations/f32.yaml", "map_resolution", 512),
    ("ablations/without_vq.yaml", "use_vq", False),
])
def test_stacked_configs_take_effect(name: str, field: str, value: object, tmp_path: Path) -> None:
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32"]
    cli = AvatarCLI(args=[*config_stack(EXPERIMENTS / name), *cpu, f"--trainer.default_root_dir={tmp_path}"],
                    run=False)
    assert getattr(cli.model.net.config, field) == value
