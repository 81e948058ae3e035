"""The ``lightning`` entry point: parses configs, runs fit, prints help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from avatar_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]

TRIVIAL = """
model:
  class_path: tests.dummy.DummyRegression
  init_args:
    lr: 0.05
data:
  class_path: tests.dummy.DummyData
  init_args:
    n: 16
    batch_size: 4
trainer:
  accelerator: cpu
  max_epochs: 1
  enable_progress_bar: false
"""


def test_fit_runs_the_trainer(tmp_path: Path) -> None:
    cfg = tmp_path / "trivial.yaml"
    cfg.write_text(TRIVIAL)
    cli = main(["fit", "-c", str(cfg), "--trainer.fast_dev_run=2", f"--trainer.default_root_dir={tmp_path}"])
    assert cli.model.hparams.lr == 0.05
    assert cli.datamodule.hparams.batch_size == 4
    assert cli.trainer.state.finished
    assert cli.model.steps_run == 2
    assert cli.trainer.global_step == 2


def test_full_epoch_learns(tmp_path: Path) -> None:
    cfg = tmp_path / "trivial.yaml"
    cfg.write_text(TRIVIAL)
    cli = main(
        ["fit", "-c", str(cfg), "--trainer.max_epochs=40", f"--trainer.default_root_dir={tmp_path}",
         "--trainer.logger=false", "--trainer.enable_checkpointing=false"]
    )
    w = cli.model.layer.weight.item()
    b = cli.model.layer.bias.item()
    assert abs(w - 2) < 0.1 and abs(b - 1) < 0.1, (w, b)


def test_bad_class_path_is_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TRIVIAL.replace("tests.dummy.DummyRegression", "tests.dummy.NoSuchModule"))
    with pytest.raises(SystemExit) as err:
        main(["fit", "-c", str(cfg)])
    assert err.value.code != 0


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["validate", "--help"]])
def test_help_prints(argv: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "avatar_lightning", *argv], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()
    if argv[0] == "fit":
        assert "--model" in out.stdout and "--data" in out.stdout


def test_console_script_installed() -> None:
    script = Path(sys.executable).parent / "lightning"
    assert script.exists(), "the `lightning` console script is missing: run `make install`"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "fit" in out.stdout and "predict" in out.stdout


def test_console_script_fit_exits_zero(tmp_path: Path) -> None:
    """A successful `lightning fit` exits with status 0 and prints nothing of its return value."""
    cfg = tmp_path / "trivial.yaml"
    cfg.write_text(TRIVIAL)
    script = Path(sys.executable).parent / "lightning"
    out = subprocess.run([str(script), "fit", "-c", str(cfg), "--trainer.fast_dev_run=1",
                          f"--trainer.default_root_dir={tmp_path}"], capture_output=True, text=True, cwd=REPO,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})  # tests.dummy importable
    assert out.returncode == 0, out.stderr[-2000:]
    assert "AvatarCLI object" not in out.stderr + out.stdout


def test_fit_with_ckpt_path_last_and_no_previous_run_starts_fresh(tmp_path: Path) -> None:
    cfg = tmp_path / "trivial.yaml"
    cfg.write_text(TRIVIAL)
    with pytest.warns(UserWarning, match="no last.ckpt under"):
        cli = main(["fit", "-c", str(cfg), "--ckpt_path=last", f"--trainer.default_root_dir={tmp_path / 'r'}"])
    assert cli.trainer.state.finished and cli.model.steps_run == 4


def test_find_last_checkpoint_looks_only_at_run_checkpoints(tmp_path: Path) -> None:
    import os as _os

    from avatar_lightning.cli import find_last_checkpoint

    old = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    new = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last-v1.ckpt"
    stray = tmp_path / "data" / "last.ckpt"  # not a run's checkpoint folder
    other = tmp_path / "lightning_logs" / "version_2" / "checkpoints" / "lastly.ckpt"
    for i, path in enumerate((old, new, stray, other)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        _os.utime(path, (1000 + i, 1000 + i))
    assert find_last_checkpoint(tmp_path) == new
