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
    cli = AvatarCLI(args=["fit", *config_stack(cfg), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.model is not None and cli.datamodule is not None
