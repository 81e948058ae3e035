"""Simulated tracking error: perturbed parameters and derived UV inputs, untouched targets."""

from __future__ import annotations

import pytest
import torch

from avatar_lightning.head.uv import expression_map
from data_modules.synthetic import SyntheticDataModule
from data_modules.tracking_noise import TrackingNoise
from tests.test_synth_generate import tiny_dm  # noqa: F401  (session fixture: one tiny generation)


def test_parse_validates_and_drops_zero_noise() -> None:
    assert TrackingNoise.parse(None) is None
    assert TrackingNoise.parse({"shape": 0.0}) is None
    assert TrackingNoise.parse({"pose": 0.02}) == TrackingNoise(pose=0.02)
    with pytest.raises(ValueError, match="unknown keys.*'rotation'"):
        TrackingNoise.parse({"rotation": 0.1})
    with pytest.raises(ValueError, match="tracking_noise.expr must be ≥ 0"):
        TrackingNoise.parse({"expr": -1.0})


def test_noise_size_sharing_and_determinism() -> None:
    noise = TrackingNoise(shape=0.5, expr=0.3, pose=0.02, translation=0.0)
    sample = {"shape": torch.zeros(2000), "expr": torch.zeros(2000), "pose": torch.zeros(1000, 3),
              "translation": torch.zeros(3), "image": torch.ones(3, 4, 4)}
    a, b = noise.frame(sample, identity=7, frame=0), noise.frame(sample, identity=7, frame=1)
    assert torch.equal(a["shape"], b["shape"])  # one shape error per subject
    assert not torch.equal(a["expr"], b["expr"])  # a new expression error per frame
    assert float(a["shape"].std()) == pytest.approx(0.5, rel=0.1)  # the stated σ
    assert float(a["expr"].std()) == pytest.approx(0.3, rel=0.1)
    assert float(a["pose"].std()) == pytest.approx(0.02, rel=0.1)
    assert torch.equal(a["translation"], sample["translation"]) and a["image"] is sample["image"]
    assert torch.equal(noise.frame(sample, 7, 0)["expr"], a["expr"])  # every method gets the same error
    assert not torch.equal(noise.frame(sample, 8, 0)["shape"], a["shape"])


def test_fewshot_split_with_noise(tiny_dm: SyntheticDataModule) -> None:  # noqa: F811
    clean = tiny_dm.fewshot()
    noisy = tiny_dm.fewshot(tracking_noise={"shape": 0.5, "expr": 0.5, "pose": 0.05})
    for key in ("image", "mask", "K", "world_to_cam"):  # what the methods are fitted to stays the truth
        assert torch.equal(noisy.inputs[key], clean.inputs[key])
    for key in ("shape", "pose", "uv_position", "uv_texture"):
        assert not torch.equal(noisy.inputs[key], clean.inputs[key]), key
    sample, truth = noisy.evaluation[1], clean.evaluation[1]
    assert torch.equal(sample["image"], truth["image"]) and not torch.equal(sample["expr"], truth["expr"])
    assert torch.equal(sample["shape"], noisy.inputs["shape"][0])  # the subject's one shape error
    head, raster = tiny_dm.uv._head_and_raster()
    expected = expression_map(head, raster, sample["expr"][None].to(head.v_template))[0]
    torch.testing.assert_close(sample["uv_expression"], expected.to(sample["uv_expression"].dtype))
