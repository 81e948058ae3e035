"""Atomic writers and image I/O."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avatar_lightning import io


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_path_keeps_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(KeyboardInterrupt), io.atomic_path(target) as tmp:
        tmp.write_text("{broken")
        raise KeyboardInterrupt
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()


def test_image_round_trip(tmp_path: Path) -> None:
    img = torch.rand(3, 5, 7)
    io.save_image(tmp_path / "a.png", img)
    back = io.load_image(tmp_path / "a.png")
    assert back.shape == (3, 5, 7)
    assert (back - img).abs().max() <= 0.5 / 255 + 1e-6


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.png"):
        io.load_image(tmp_path / "missing.png")
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="corrupt.png"):
        io.load_image(bad)


def test_config_hash_is_order_independent() -> None:
    assert io.config_hash({"a": 1, "b": [1, 2]}) == io.config_hash({"b": [1, 2], "a": 1})
    assert io.config_hash({"a": 1}) != io.config_hash({"a": 2})


def test_atomic_files_get_default_permissions(tmp_path: Path) -> None:
    import os

    mask = os.umask(0o022)
    try:
        io.write_json(tmp_path / "a.json", {})
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
