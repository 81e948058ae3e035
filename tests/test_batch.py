"""The shared batch schema validator."""

from __future__ import annotations

import pytest
import torch

from avatar_lightning.batch import validate_batch


def make_batch(B: int = 2, V: int = 3, H: int = 8, W: int = 6) -> dict[str, torch.Tensor]:
    return {
        "image": torch.rand(B, V, 3, H, W),
        "mask": torch.rand(B, V, 1, H, W),
        "K": torch.eye(3).expand(B, V, 3, 3).clone(),
        "world_to_cam": torch.eye(4).expand(B, V, 4, 4).clone(),
        "shape": torch.zeros(B, 20),
        "expr": torch.zeros(B, 15),
        "pose": torch.zeros(B, 5, 3),
        "translation": torch.zeros(B, 3),
        "identity": torch.arange(B),
        "frame": torch.zeros(B, dtype=torch.long),
        "background": torch.ones(B, 3),
    }


def test_valid_batch_binds_dims() -> None:
    dims = validate_batch(make_batch())
    assert dims == {"B": 2, "V": 3, "H": 8, "W": 6, "S": 20, "E": 15}


def test_missing_key_is_named() -> None:
    batch = make_batch()
    del batch["K"]
    with pytest.raises(ValueError, match="'K'"):
        validate_batch(batch)


def test_inconsistent_dims_are_named() -> None:
    batch = make_batch()
    batch["mask"] = torch.rand(2, 3, 1, 8, 7)
    with pytest.raises(ValueError, match="mask.*W=7"):
        validate_batch(batch)


def test_uv_keys_required_on_request() -> None:
    with pytest.raises(ValueError, match="uv_texture"):
        validate_batch(make_batch(), require_uv=True)
    batch = make_batch()
    for k in ("uv_texture", "uv_position", "uv_expression"):
        batch[k] = torch.rand(2, 3, 4, 4)
    assert validate_batch(batch, require_uv=True)["h"] == 4


def test_wrong_dtype() -> None:
    batch = make_batch()
    batch["identity"] = batch["identity"].float()
    with pytest.raises(ValueError, match="identity.*long"):
        validate_batch(batch)
