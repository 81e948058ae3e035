"""RealHeadEnrollment (paper §IV-C1): what each phase trains (by gradients after real optimiser steps),
what stays frozen and in eval mode, the map regulariser, the colour affine, and refusals naming the field."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from avatar_lightning.lit.realhead_enroll import RealHeadEnrollment
from avatar_lightning.realhead.enrollment import apply_colour_affine, map_regulariser, phase_levels
from tests.realhead_fixtures import quiet_trainer, tiny_prior_fixture  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


class GradientLog(Callback):
    """Per optimiser step: the phase, the names of parameters with a non-zero gradient, and whether any
    module of the prior network was in training mode."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, set[str], bool]] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        named = {n for n, p in pl_module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        training = any(m.training for m in pl_module.net.modules())
        self.steps.append((int(pl_module.phase), named, training))


def _enrollment(prior, **kwargs) -> RealHeadEnrollment:
    return RealHeadEnrollment(prior_checkpoint=str(prior.checkpoint), lpips_weight=0.0, render_backend="torch",
                              phase1_steps_per_frame=1, **kwargs)


def test_phase_levels_split_the_maps_coarse_first_by_default() -> None:
    assert phase_levels(6, "coarse_first") == [[3, 4, 5], [0, 1, 2]]  # paper: 3 of 6 maps per phase
    assert phase_levels(6, "fine_first") == [[0, 1, 2], [3, 4, 5]]
    assert phase_levels(3, "coarse_first") == [[1, 2], [0]]
    assert phase_levels(4, "joint") == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="phase_order"):
        phase_levels(4, "random")


def test_each_phase_trains_only_its_identity_maps_and_the_final_layer_in_the_last(tiny_prior, tmp_path) -> None:
    torch.manual_seed(0)
    model = _enrollment(tiny_prior)
    log = GradientLog()
    prior_state = torch.load(tiny_prior.checkpoint, weights_only=False)["state_dict"]
    quiet_trainer(tmp_path, 5, callbacks=[log]).fit(model, tiny_prior.fewshot_data(views=3))
    phase1, phase2 = {"identity.1", "identity.2"}, {"identity.0", "net.to_maps.weight", "net.to_maps.bias"}
    assert [s[0] for s in log.steps] == [1, 1, 1, 2, 2]  # phase 1 lasts 1 step per input image
    assert all(names == phase1 for phase, names, _ in log.steps if phase == 1), log.steps
    assert all(names == phase2 for phase, names, _ in log.steps if phase == 2), log.steps
    assert not any(training for *_, training in log.steps)  # the frozen prior never left eval mode
    net = {f"net.{k}": v for k, v in model.net.state_dict().items()}
    changed = {k for k, v in net.items() if not torch.equal(v, prior_state[k])}
    assert changed == {"net.to_maps.weight", "net.to_maps.bias"}
    initial = model.net.encode_identity(model.inputs["uv_identity"])
    assert all(not torch.equal(p, e) for p, e in zip(model.identity, initial, strict=True))


def test_regulariser_is_zero_at_initialisation_and_grows_with_the_change(tiny_prior) -> None:
    model = _enrollment(tiny_prior)
    model.configure_model()
    inputs = tiny_prior.datamodule().fewshot(views=1).inputs
    model.capture_identity(inputs)
    with torch.no_grad():
        out = model(inputs)
        assert model.compute_losses(inputs, out)["reg_maps"] == 0
        model.net.to_maps.bias.add_(0.5)
        out = model(inputs)
    assert model.compute_losses(inputs, out)["reg_maps"] == pytest.approx(0.25, rel=1e-4)  # 0.5² on every texel
    valid = torch.zeros(4, 4, dtype=torch.bool)
    valid[0, 0] = True
    raw = torch.zeros(1, 59, 4, 4)
    raw[:, :, 1:] = 9.0  # invalid texels do not count
    assert map_regulariser(raw, torch.zeros_like(raw), valid) == 0


def test_colour_affine_is_per_input_image_and_trained(tiny_prior, tmp_path) -> None:
    rgb = torch.rand(1, 2, 3, 4, 4)
    affine = torch.eye(3, 4).repeat(2, 1, 1)
    assert torch.equal(apply_colour_affine(rgb, affine), rgb)
    affine[1, :, :3] *= 0.5
    affine[1, :, 3] = 0.1
    out = apply_colour_affine(rgb, affine)
    assert torch.equal(out[:, 0], rgb[:, 0]) and torch.allclose(out[:, 1], 0.5 * rgb[:, 1] + 0.1)
    model = _enrollment(tiny_prior, colour_affine=True)
    quiet_trainer(tmp_path, 2).fit(model, tiny_prior.fewshot_data(views=3))
    assert model.colour.shape == (3, 3, 4) and not torch.equal(model.colour, torch.eye(3, 4).repeat(3, 1, 1))


def test_missing_prior_and_other_head_model_are_refused_naming_the_field(tiny_prior, tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="prior_checkpoint: file not found: .*nope.ckpt"):
        RealHeadEnrollment(prior_checkpoint=str(tmp_path / "nope.ckpt")).configure_model()
    monkeypatch.chdir(tmp_path)  # no runs/ here: latest finds no RealHeadPrior (a SynShot one would not count)
    with pytest.raises(FileNotFoundError, match="no realhead prior checkpoint .*realhead_prior.yaml"):
        RealHeadEnrollment(prior_checkpoint="latest").configure_model()
    with pytest.raises(ValueError, match="head_model: checkpoint 'builtin', config 'flame2023.pkl'"):
        _enrollment(tiny_prior, head_model="flame2023.pkl").configure_model()
    with pytest.raises(ValueError, match="n_expr: checkpoint 15, config 100"):
        _enrollment(tiny_prior, n_expr=100).configure_model()
    other = tmp_path / "synshot.ckpt"
    torch.save({"state_dict": {"net.enc_id.weight": torch.zeros(1)}, "hyper_parameters": {}}, other)
    with pytest.raises(ValueError, match="not a RealHeadPrior checkpoint"):
        RealHeadEnrollment(prior_checkpoint=str(other)).configure_model()


def test_inputs_must_start_with_the_frontal_view(tiny_prior) -> None:
    model = _enrollment(tiny_prior)
    model.configure_model()
    inputs = tiny_prior.datamodule().fewshot(views=3).inputs
    side_first = {k: v[:, [1, 0, 2]] if k in ("image", "mask", "K", "world_to_cam") else v for k, v in inputs.items()}
    with pytest.raises(ValueError, match="RealHeadEnrollment inputs: view 0 is not a frontal camera"):
        model.capture_identity(side_first)
    model.capture_identity(inputs)
    assert bool(model.identity_captured)


def test_checkpoint_is_small_and_restores_the_enrolled_avatar(tiny_prior, tmp_path) -> None:
    torch.manual_seed(0)
    model = _enrollment(tiny_prior, phase_order="joint")
    trainer = quiet_trainer(tmp_path, 2)
    trainer.fit(model, tiny_prior.fewshot_data(views=1))
    path = tmp_path / "avatar.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert {k for k in ckpt["state_dict"] if k.startswith("net.")} == {"net.to_maps.weight", "net.to_maps.bias"}
    assert ckpt["enrollment"]["identity"] == 2 and ckpt["enrollment"]["dataset"]["init_args"]["uv_size"] == 32
    loaded = RealHeadEnrollment.load_from_checkpoint(path, map_location="cpu")
    assert not loaded.net.training
    for a, b in zip(loaded.state_dict().items(), model.state_dict().items(), strict=True):
        assert a[0] == b[0] and torch.equal(a[1], b[1]), a[0]
