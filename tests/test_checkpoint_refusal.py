"""A checkpoint written for another model or input shape is refused, naming the fields (issue 14)."""

from __future__ import annotations

import pytest
import torch

from avatar_lightning.lit.baseline import GaussianAvatarBaseline
from avatar_lightning.lit.checkpoint import refuse_other_shape
from tests.test_lit_prior import _prior


def test_refuse_other_shape_names_every_differing_field() -> None:
    saved = {"n_expr": 15, "regions": ["face"], "part_samples": {"face": 8}, "lr": 1.0}
    refuse_other_shape("M", saved, {"n_expr": 15, "regions": ("face",), "part_samples": {"face": 8}, "lr": 2.0},
                       ("n_expr", "regions", "part_samples", "missing"))  # YAML lists equal tuples; lr not shaping
    with pytest.raises(ValueError, match=r"M: .*n_expr: checkpoint 15, config 10; part_samples: checkpoint"):
        refuse_other_shape("M", saved, {"n_expr": 10, "regions": ["face"], "part_samples": {"face": 9}},
                           ("n_expr", "regions", "part_samples"))


def test_baseline_refuses_a_checkpoint_of_another_head_or_sh_degree() -> None:
    trained = GaussianAvatarBaseline(n_shape=20, n_expr=15, sh_degree=1)
    checkpoint = {"hyper_parameters": dict(trained.hparams), "state_dict": trained.state_dict()}
    GaussianAvatarBaseline(n_shape=20, n_expr=15, sh_degree=1).on_load_checkpoint(checkpoint)  # same: fine
    for other, field in (({"n_expr": 10}, "n_expr"), ({"sh_degree": 2}, "sh_degree"),
                         ({"regions": ["face"]}, "regions")):
        module = GaussianAvatarBaseline(**{"n_shape": 20, "n_expr": 15, "sh_degree": 1, **other})
        with pytest.raises(ValueError, match=f"GaussianAvatarBaseline: .*{field}: checkpoint"):
            module.on_load_checkpoint({"hyper_parameters": dict(trained.hparams),
                                       "state_dict": dict(trained.state_dict())})


def test_prior_refuses_another_head_model_or_coefficient_count() -> None:
    trained = _prior()
    checkpoint = {"hyper_parameters": dict(trained.hparams), "state_dict": {}}
    with pytest.raises(ValueError, match="n_expr: checkpoint 15, config 10"):
        _prior(n_expr=10).on_load_checkpoint({**checkpoint, "state_dict": {}})
    with pytest.raises(ValueError, match="head_model: checkpoint 'builtin', config '/x/flame.pkl'"):
        module = _prior()
        module.hparams["head_model"] = "/x/flame.pkl"  # as a config naming another head would
        module.on_load_checkpoint({**checkpoint, "state_dict": {}})
    _prior().on_load_checkpoint({**checkpoint, "state_dict": {}})  # the same shape loads
    assert torch.is_tensor(next(iter(trained.state_dict().values())))


def test_inversion_refuses_resuming_on_another_prior_network() -> None:
    from avatar_lightning.lit.inversion import SynShotInversion

    ours = dict(_prior().hparams)
    module = SynShotInversion(prior_hparams=ours, render_backend="torch")
    other = {**ours, "part_samples": {"face": 12, "hair": 8}}
    with pytest.raises(ValueError, match=r"SynShotInversion \(its prior\): .*part_samples"):
        module.on_load_checkpoint({"hyper_parameters": {"prior_hparams": other}, "state_dict": {}})
