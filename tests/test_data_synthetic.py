"""SyntheticDataModule: identity splits, schema-valid batches with cached UV inputs, the few-shot view."""

from __future__ import annotations

import pytest
import torch

from avatar_lightning.batch import validate_batch
from data_modules.synthetic import SyntheticDataModule, fewshot_cameras
from tests.test_synth_generate import TINY, tiny_dm  # noqa: F401  (session fixture: one tiny generation)


def test_splits_are_disjoint_identities(tiny_dm: SyntheticDataModule) -> None:  # noqa: F811
    splits = tiny_dm.split_identities()
    assert splits == {"train": [0], "val": [1], "test": [2]}
    seen = {split: {int(s["identity"]) for s in tiny_dm.dataset(split)} for split in splits}
    assert seen == {k: set(v) for k, v in splits.items()}
    assert tiny_dm.image_height == tiny_dm.image_width == 16 and tiny_dm.n_identities == 3


def test_batches_follow_the_schema_with_uv_inputs(tiny_dm: SyntheticDataModule) -> None:  # noqa: F811
    batch = next(iter(tiny_dm.train_dataloader()))
    dims = validate_batch(batch, require_uv=True)
    assert dims["B"] == 2 and dims["V"] == 3 and dims["H"] == dims["W"] == 16 and dims["h"] == 16
    assert dims["S"] == tiny_dm.n_shape and dims["E"] == tiny_dm.n_expr
    assert float(batch["uv_texture"].std()) > 0.01 and float(batch["uv_position"].abs().max()) > 0.05
    neutral = batch["frame"] == 0
    # Expression maps are zero exactly for the neutral expression.
    assert bool((batch["uv_expression"][neutral] == 0).all()) and bool((batch["uv_expression"][~neutral] != 0).any())
    # Images are composited on the sample's background: masked-out pixels equal it.
    bg = batch["background"][:, None, :, None, None].expand_as(batch["image"])
    out = (batch["mask"] < 1e-3).expand_as(batch["image"])
    assert torch.allclose(batch["image"][out], bg[out], atol=1.5 / 255)
    val = next(iter(tiny_dm.val_dataloader()))
    validate_batch(val, require_uv=True)
    assert torch.equal(val["K"][0], val["K"][1])  # fixed, spread views for validation


def test_uv_cache_is_reused_not_recomputed(tiny_dm: SyntheticDataModule, monkeypatch) -> None:  # noqa: F811
    calls = []
    from avatar_lightning.synth import uv_cache

    monkeypatch.setattr(uv_cache.UVCache, "build", lambda self, *a, **k: calls.append(a))
    tiny_dm.prepare_data()  # dataset complete and UV inputs cached: nothing to do
    assert calls == []


def test_fewshot_view_of_a_held_out_identity(tiny_dm: SyntheticDataModule) -> None:  # noqa: F811
    few = tiny_dm.fewshot()
    assert few.identity == 2 and len(few.input_cameras) == 3
    assert all(bool(tiny_dm.rig.frontal[c]) for c in few.input_cameras)
    dims = validate_batch(few.inputs, require_uv=True)
    assert dims["B"] == 1 and dims["V"] == 3 and int(few.inputs["frame"][0]) == 0
    full = tiny_dm.uv.inputs(2, 0)["uv_texture"]
    assert not torch.equal(few.inputs["uv_texture"][0], full)  # only the input views were back-projected
    assert len(few.evaluation) == tiny_dm.config.expressions
    sample = few.evaluation[1]
    assert sample["image"].shape[0] == 28 - 3
    inputs = few.inputs["world_to_cam"][0]
    assert not any(torch.equal(w, x) for w in sample["world_to_cam"] for x in inputs)  # evaluation views are novel


def test_fewshot_cameras_are_distinct_and_frontal(tiny_dm: SyntheticDataModule) -> None:  # noqa: F811
    cams = fewshot_cameras(tiny_dm.rig, 3)
    assert len(set(cams)) == 3


def test_bad_arguments_fail_clearly(tmp_path) -> None:
    with pytest.raises(ValueError, match="no training identity"):
        SyntheticDataModule(root=str(tmp_path), **{**TINY, "identities": 2})
    with pytest.raises(ValueError, match="views"):
        SyntheticDataModule(root=str(tmp_path), **{**TINY, "views": 29})
    dm = SyntheticDataModule(root=str(tmp_path), **TINY)
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        dm.setup("fit")


def test_every_init_argument_is_configurable_from_the_cli() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(SyntheticDataModule, "data")
    cfg = parser.parse_args(["--data.identities=5", "--data.image_size=[32, 24]", "--data.views=2"])
    assert cfg.data.identities == 5 and list(cfg.data.image_size) == [32, 24] and cfg.data.views == 2
    dm = SyntheticDataModule(**{k: v for k, v in vars(cfg.data).items()})
    assert (dm.image_height, dm.image_width) == (32, 24)


def test_validation_identities_get_a_fewshot_split_too(tiny_dm: SyntheticDataModule) -> None:  # noqa: F811
    val = tiny_dm.split_identities()["val"][0]
    few = tiny_dm.fewshot(val)  # settings are tuned on validation identities, never on test ones
    assert few.identity == val and few.inputs["uv_texture"].shape[0] == 1
