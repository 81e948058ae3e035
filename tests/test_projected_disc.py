"""DINO ViT loading, projected discriminator (3DRealHead §IV-B, StyleGAN-T), hinge loss, DiffAugment, head crop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avatar_lightning.losses.adversarial import d_hinge_loss, diff_augment, g_hinge_loss, logit_sign_stats
from avatar_lightning.losses.identity import mask_boxes
from avatar_lightning.models.projected_disc import (
    BatchNormLocal,
    DinoBackbone,
    FrozenBackbone,
    ProjectedDiscriminator,
    crop_head_pair,
    crop_to_head,
)
from avatar_lightning.models.vit import ViT, load_dino_vit

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCK_KEYS = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
              "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
# facebookresearch/dino vision_transformer.py (vit_small) == timm vit_small_patch16_224.dino (num_classes=0)
DINO_KEYS = {"cls_token": (1, 1, 384), "pos_embed": (1, 197, 384), "patch_embed.proj.weight": (384, 3, 16, 16),
             "patch_embed.proj.bias": (384,), "norm.weight": (384,), "norm.bias": (384,),
             **{f"blocks.{i}.{k}": None for i in range(12) for k in BLOCK_KEYS}}


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised ViT-S/16 saved as a bare DINO-style state dict."""
    torch.manual_seed(0)
    state = ViT().state_dict()
    path = tmp_path_factory.mktemp("dino") / "dino_deitsmall16_pretrain.pth"
    torch.save(state, path)
    return path, state


def tiny_vit() -> ViT:
    torch.manual_seed(0)
    return ViT(dim=32, depth=4, heads=2)


# ---------------------------------------------------------------- ViT


def test_vit_key_names_match_dino() -> None:
    state = ViT().state_dict()
    assert set(state) == set(DINO_KEYS)
    for key, shape in DINO_KEYS.items():
        assert shape is None or tuple(state[key].shape) == shape, key
    assert tuple(state["blocks.0.attn.qkv.weight"].shape) == (1152, 384)
    assert tuple(state["blocks.11.mlp.fc1.weight"].shape) == (1536, 384)


def test_attention_matches_explicit_softmax() -> None:
    torch.manual_seed(0)
    vit = ViT(dim=12, depth=1, heads=3).double()
    attn, x = vit.blocks[0].attn, torch.randn(2, 5, 12, dtype=torch.float64)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)  # DINO's own reshape
    weights = ((q @ k.transpose(-2, -1)) * 4**-0.5).softmax(dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attn(x), expected)


def test_forward_features_taps() -> None:
    vit = tiny_vit().eval()
    x = torch.randn(2, 3, 224, 224)
    feats = vit.forward_features(x, taps=(0, 2, 3))
    assert [tuple(f.shape) for f in feats] == [(2, 197, 32)] * 4
    h = vit.tokens(x)
    torch.testing.assert_close(feats[0], h)  # embedded tokens, after the positional embedding
    outs = []
    for block in vit.blocks:
        h = block(h)
        outs.append(h)
    for f, i in zip(feats[1:], (0, 2, 3), strict=True):
        torch.testing.assert_close(f, outs[i])  # before the final norm
    # other sizes interpolate pos_embed: 160×128 → 10×8 patches + CLS
    assert [tuple(f.shape) for f in vit.forward_features(torch.randn(1, 3, 160, 128), taps=(1,))] == [(1, 81, 32)] * 2
    with pytest.raises(ValueError, match="taps"):
        vit.forward_features(x, taps=(4,))
    with pytest.raises(ValueError, match="multiples of 16"):
        vit.forward_features(torch.randn(1, 3, 100, 100), taps=(0,))


def test_load_dino_vit_round_trip(dino_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = dino_file
    vit = load_dino_vit(path)
    reference = ViT()
    reference.load_state_dict(state)
    x = torch.randn(1, 3, 224, 224)
    assert not vit.training
    torch.testing.assert_close(vit(x), reference.eval()(x), rtol=0, atol=0)
    feats = vit.forward_features(x)
    assert [tuple(f.shape) for f in feats] == [(1, 197, 384)] * 5


@pytest.mark.parametrize("wrap", ["teacher", "model", "state_dict"])
def test_load_dino_vit_unwraps_and_strips(tmp_path: Path, wrap: str) -> None:
    torch.manual_seed(1)
    state = ViT().state_dict()
    wrapped = {f"module.backbone.{k}": v for k, v in state.items()}
    wrapped["module.head.last_layer.weight"] = torch.zeros(3, 4)  # DINO projection head: dropped
    path = tmp_path / "ckpt.pth"
    torch.save({wrap: wrapped, "epoch": 100}, path)
    vit = load_dino_vit(path)
    torch.testing.assert_close(vit.pos_embed, state["pos_embed"])
    torch.testing.assert_close(vit.blocks[7].mlp.fc2.weight, state["blocks.7.mlp.fc2.weight"])


def test_load_dino_vit_errors_name_file_and_keys(tmp_path: Path) -> None:
    state = ViT().state_dict()
    del state["blocks.3.attn.qkv.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="broken.pth") as err:
        load_dino_vit(path)
    assert "blocks.3.attn.qkv.bias" in str(err.value) and "extra.weight" in str(err.value)
    missing = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_dino_vit(missing)


# ---------------------------------------------------------------- projected discriminator


@pytest.mark.parametrize("kind", ["alex", "dino"])
def test_generator_gradient_flows_through_frozen_backbone(kind: str) -> None:
    torch.manual_seed(0)
    backbone = "alex" if kind == "alex" else DinoBackbone(tiny_vit(), taps=(0, 1, 2, 3))
    disc = ProjectedDiscriminator(backbone)
    disc.train()
    assert not disc.backbone.training and all(h.training for h in disc.heads)
    fake = torch.rand(2, 3, 128, 128, requires_grad=True)
    g_hinge_loss(disc(fake)).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    for name, p in disc.backbone.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    assert all(p.grad is not None for p in disc.heads.parameters())
    disc.backbone.train()  # even called directly
    assert not disc.backbone.training


def test_logit_count_per_backbone() -> None:
    disc = ProjectedDiscriminator("alex").eval()
    assert disc(torch.rand(1, 3, 224, 224)).shape == (1, 55**2 + 27**2 + 3 * 13**2)  # relu1..5 token counts
    dino = ProjectedDiscriminator(DinoBackbone(tiny_vit(), taps=(0, 1, 2, 3))).eval()
    assert dino(torch.rand(1, 3, 224, 224)).shape == (1, 5 * 196)  # CLS folded into the patch tokens


def test_dino_backbone_from_file(dino_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    disc = ProjectedDiscriminator("dino", dino_weights=str(dino_file[0])).eval()
    assert disc.backbone.channels == (384,) * 5
    assert disc(torch.rand(1, 3, 224, 224)).shape == (1, 980)
    with pytest.raises(ValueError, match="needs weights"):
        ProjectedDiscriminator("dino")
    with pytest.raises(ValueError, match="backbone must be"):
        ProjectedDiscriminator("resnet")
    with pytest.raises(ValueError, match="dino_weights given"):
        ProjectedDiscriminator("alex", dino_weights=str(dino_file[0]))


class SpyBackbone(FrozenBackbone):
    """Records the range of what it is fed; one tap of 3 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.channels, self.seen = (3,), []
        self.freeze()

    def features(self, x01: torch.Tensor) -> list[torch.Tensor]:
        self.seen.append((x01.amin().item(), x01.amax().item(), tuple(x01.shape)))
        return [x01.flatten(2).transpose(1, 2)]


def test_input_range_is_mapped_to_unit_interval_before_the_backbone() -> None:
    x01 = torch.rand(2, 3, 64, 64)
    d01, d11 = ProjectedDiscriminator(SpyBackbone()), ProjectedDiscriminator(SpyBackbone(), input_range=(-1, 1))
    d11.load_state_dict(d01.state_dict())
    out01, out11 = d01.eval()(x01), d11.eval()(x01 * 2 - 1)
    torch.testing.assert_close(out01, out11)
    lo, hi, shape = d11.backbone.seen[0]
    assert 0.0 <= lo < 0.1 and 0.9 < hi <= 1.0 and shape == (2, 3, 224, 224)


def test_batchnorm_local_normalises_each_virtual_batch() -> None:
    torch.manual_seed(0)
    bn, x = BatchNormLocal(4, virtual_batch=8), 3 + 2 * torch.randn(10, 4, 6)
    torch.testing.assert_close(bn(x), torch.cat([bn(x[:8]), bn(x[8:])]))
    y = bn(x[:8])
    torch.testing.assert_close(y.mean(dim=(0, 2)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2), unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- losses and augmentation


def test_hinge_losses_on_hand_computed_logits() -> None:
    real, fake = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([[-2.0, 0.0, 1.5]])
    # relu(1 - real) = [0, 0.5, 2] → 2.5/3; relu(1 + fake) = [0, 1, 2.5] → 3.5/3
    torch.testing.assert_close(d_hinge_loss(real, fake), torch.tensor(2.0))
    torch.testing.assert_close(g_hinge_loss(fake), torch.tensor(0.5 / 3))
    stats = logit_sign_stats(real, fake)
    torch.testing.assert_close(stats.real_positive, torch.tensor(2 / 3))
    torch.testing.assert_close(stats.fake_negative, torch.tensor(1 / 3))  # 0 is not negative


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_diff_augment_pairs_share_the_draw() -> None:
    torch.manual_seed(0)
    real, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    policy = ("color", "translation", "cutout")
    out = diff_augment(real, policy, _gen(3))
    assert out.shape == real.shape
    torch.testing.assert_close(out, diff_augment(real, policy, _gen(3)))
    assert not torch.allclose(out, diff_augment(real, policy, _gen(4)))
    # translation and cutout are linear in the image: equal draws ⇒ aug(a + b) = aug(a) + aug(b)
    spatial = ("translation", "cutout")
    torch.testing.assert_close(diff_augment(real + fake, spatial, _gen(5)),
                               diff_augment(real, spatial, _gen(5)) + diff_augment(fake, spatial, _gen(5)))
    # colour on flat images is a pure brightness shift: equal draws ⇒ equal shift for both images
    flat_a, flat_b = torch.full((4, 3, 8, 8), 0.2), torch.full((4, 3, 8, 8), -0.4)
    shift_a = diff_augment(flat_a, ("color",), _gen(6)) - flat_a
    torch.testing.assert_close(shift_a, diff_augment(flat_b, ("color",), _gen(6)) - flat_b)
    assert shift_a.abs().amax() <= 0.5 and shift_a[:, 0, 0, 0].std() > 0  # per-sample draws in ±0.5


def test_diff_augment_translation_is_an_integer_shift() -> None:
    x = torch.zeros(6, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = diff_augment(x, ("translation",), _gen(0))
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(6))  # a 2-px shift cannot push it out
    ys, xs = (out[:, 0] == 1).nonzero()[:, 1], (out[:, 0] == 1).nonzero()[:, 2]
    assert ((ys - 8).abs() <= 2).all() and ((xs - 8).abs() <= 2).all()  # round(16/8) = 2


def test_diff_augment_is_differentiable_and_checks_policy() -> None:
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    diff_augment(x, ("color", "translation", "cutout"), _gen(0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="policy"):
        diff_augment(x, ("zoom",))


def test_head_crop_uses_the_real_mask_box_for_both() -> None:
    torch.manual_seed(0)
    real = torch.rand(2, 3, 64, 80)
    fake = (2 * real).requires_grad_(True)
    mask = torch.zeros(2, 1, 64, 80)
    mask[0, :, 10:30, 20:36] = 1  # 20 tall, 16 wide
    mask[1, :, 30:60, 40:70] = 1
    crops = crop_head_pair(real, fake, mask, margin=0.1, size=32)
    assert crops.real.shape == crops.fake.shape == (2, 3, 32, 32)
    torch.testing.assert_close(crops.boxes, mask_boxes(mask, 0.1))
    torch.testing.assert_close(crops.boxes[0], torch.tensor([16.0, 8.0, 40.0, 32.0]))  # side 20·1.2 around (28, 20)
    torch.testing.assert_close(crops.fake, 2 * crops.real)  # same box ⇒ same resampling
    torch.testing.assert_close(crop_to_head(fake, mask, 32, margin=0.1), crops.fake)
    # a 24-pixel box sampled at 24 × 24 is the plain slice of those pixels
    torch.testing.assert_close(crop_to_head(real, mask, 24)[0], real[0, :, 8:32, 16:40], atol=1e-5, rtol=0)
    crops.fake.sum().backward()
    assert fake.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="crop_head_pair"):
        crop_head_pair(real, fake[:, :, :32], mask)
