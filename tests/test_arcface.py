"""ArcFace iResNet, its checkpoint loader and the identity losses.

No pretrained ArcFace is available here: every test uses a small randomly initialised iResNet
(or a freshly built full-size one for the layout check) — they test wiring and maths, not
face-recognition quality.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from avatar_lightning.losses.identity import IdentityLoss, crop_resize, mask_boxes
from avatar_lightning.models.arcface import IResNet, iresnet, load_arcface


def tiny_net(seed: int = 0) -> IResNet:
    """A randomly initialised 4-stage iResNet small enough for CPU tests (not a face recogniser)."""
    torch.manual_seed(seed)
    return IResNet(layers=(1, 1, 1, 1), widths=(8, 16, 16, 32), num_features=32, input_size=32).eval()


def insightface_state_shapes(layers: tuple[int, int, int, int], features: int = 512) -> dict[str, tuple]:
    """Names and shapes of insightface's ``arcface_torch/backbones/iresnet.py`` state dict, written
    from its layer description (not from our module): stem conv3x3 3->64, BN, PReLU; four stages of
    IBasicBlock (BN, conv3x3, BN, PReLU, conv3x3 with the stage's stride 2 on the first block, BN;
    a conv1x1 + BN shortcut on each stage's first block); BN2d, FC from 512·7·7, BN1d."""
    shapes: dict[str, tuple] = {}

    def bn(name: str, c: int) -> None:
        shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                       f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})

    shapes["conv1.weight"] = (64, 3, 3, 3)
    bn("bn1", 64)
    shapes["prelu.weight"] = (64,)
    inplanes = 64
    for stage, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512), strict=True), start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            bn(f"{p}.bn1", inplanes)
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.prelu.weight"] = (planes,)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn3", planes)
            if i == 0:  # stride 2 on every stage's first block
                shapes[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes)
            inplanes = planes
    bn("bn2", 512)
    shapes["fc.weight"], shapes["fc.bias"] = (features, 512 * 7 * 7), (features,)
    bn("features", features)
    return shapes


@pytest.mark.parametrize(("arch", "layers", "millions"), [("iresnet50", (3, 4, 14, 3), 43.59),
                                                          ("iresnet100", (3, 13, 30, 3), 65.16)])
def test_published_layouts_match_insightface(arch: str, layers: tuple, millions: float) -> None:
    """Every name and shape of an insightface checkpoint, and the zoo's parameter counts
    (r50 = 43.59 M, r100 = 65.16 M), so real checkpoints load strictly."""
    net = iresnet(arch)
    reference = insightface_state_shapes(layers)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == reference
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_reference = sum(math.prod(s) for k, s in reference.items() if not k.endswith(buffers))
    assert sum(p.numel() for p in net.parameters()) == n_reference
    assert round(n_reference / 1e6, 2) == millions
    assert not net.features.weight.requires_grad


def test_forward_shapes_and_features() -> None:
    net = tiny_net()
    out = net.forward_features(torch.rand(2, 3, 32, 32))
    assert out.embedding.shape == (2, 32)
    assert [f.shape[1:] for f in out.features] == [(8, 32, 32), (8, 16, 16), (16, 8, 8), (16, 4, 4), (32, 2, 2)]
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        net(torch.rand(1, 3, 64, 64))


def test_loader_names_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "backbone.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/backbone.pth"):
        load_arcface(missing)
    with pytest.raises(ValueError, match="checkpoint path"):
        IdentityLoss(checkpoint=None)


def test_loader_round_trip_strips_ddp_prefix(tmp_path: Path) -> None:
    # a randomly initialised iresnet18-layout net with small widths stands in for a real checkpoint
    kwargs = {"widths": (8, 16, 16, 32), "num_features": 32, "input_size": 32}
    torch.manual_seed(3)
    net18 = IResNet(layers=(2, 2, 2, 2), **kwargs).eval()
    path = tmp_path / "backbone.pth"
    torch.save(net18.state_dict(), path)
    loaded = load_arcface(path, arch="iresnet18", **kwargs)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x), net18(x))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    torch.save({"model": {f"module.{k}": v for k, v in net18.state_dict().items()}}, path)
    assert torch.allclose(load_arcface(path, arch="iresnet18", **kwargs)(x), net18(x))
    with pytest.raises(RuntimeError, match="backbone.pth is not an insightface iresnet34"):
        load_arcface(path, arch="iresnet34", **kwargs)


def test_mask_boxes_square_and_margin() -> None:
    mask = torch.zeros(2, 1, 20, 30)
    mask[0, 0, 4:10, 6:18] = 1  # 6 rows x 12 cols -> square side 12 centred at (12, 7)
    boxes = mask_boxes(mask, margin=0.25)
    side = 12 * 1.5
    assert torch.allclose(boxes[0], torch.tensor([12 - side / 2, 7 - side / 2, 12 + side / 2, 7 + side / 2]))
    assert torch.equal(boxes[1], torch.tensor([0.0, 0.0, 30.0, 20.0]))  # empty mask -> whole image


def test_crop_resize_matches_slicing() -> None:
    img = torch.rand(2, 3, 16, 24)
    assert torch.allclose(crop_resize(img, torch.tensor([[0.0, 0, 24, 16]] * 2), 16)[..., :, :],
                          torch.nn.functional.interpolate(img, size=(16, 16), mode="bilinear", align_corners=False),
                          atol=1e-5)
    boxes = torch.tensor([[4.0, 2, 12, 10], [10.0, 5, 18, 13]])  # 8x8 boxes, integer edges
    crops = crop_resize(img, boxes, 8)
    assert torch.allclose(crops[0], img[0, :, 2:10, 4:12], atol=1e-5)
    assert torch.allclose(crops[1], img[1, :, 5:13, 10:18], atol=1e-5)


def test_identity_losses_zero_on_equal_images_and_differentiable() -> None:
    loss = IdentityLoss(net=tiny_net(), feature_layers=(0, 2, 4))
    target = torch.rand(2, 3, 40, 40)
    mask = torch.zeros(2, 1, 40, 40)
    mask[:, :, 8:32, 10:30] = 1
    same = loss(target.clone(), target, mask)
    assert same.id.abs() < 1e-5 and same.arc.abs() < 1e-10
    render = torch.rand(2, 3, 40, 40, requires_grad=True)
    out = loss(render, target, mask)
    assert out.id > 1e-3 and out.arc > 0
    (out.id + out.arc).backward()
    assert render.grad is not None and render.grad.abs().sum() > 0
    # pixels far outside the face box cannot influence the crop
    assert render.grad[:, :, 0, 0].abs().sum() == 0
    assert all(p.grad is None for p in loss.net.parameters())


def test_identity_loss_net_stays_in_eval_mode() -> None:
    loss = IdentityLoss(net=tiny_net())
    loss.train()
    assert loss.training and not loss.net.training
    x = torch.rand(3, 3, 32, 32)
    before = loss.net.bn1.running_mean.clone()
    loss(x, x.flip(0))
    assert torch.equal(before, loss.net.bn1.running_mean)  # BN statistics untouched
