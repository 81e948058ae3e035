"""Plain-torch ViT-S/16 with the key names of DINO's published weights (DINO anchor, Caron et al. 2021).

The module tree mirrors ``facebookresearch/dino`` ``vision_transformer.py`` (``vit_small``: embed 384, depth
12, 6 heads, MLP ×4, qkv bias, LayerNorm eps 1e-6, exact GELU), which is also timm's ``VisionTransformer`` for
``vit_small_patch16_224.dino`` (its default config has ``num_classes=0``: no ``head.*`` keys). So both
``dino_deitsmall16_pretrain.pth`` and a saved timm state dict load into :class:`ViT` unchanged:
``cls_token``, ``pos_embed``, ``patch_embed.proj.{weight,bias}``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}.{weight,bias}``, ``norm.{weight,bias}``. Used by the projected discriminator (3DRealHead
§IV-B) and the DINO mouth-feature ablation (Table III). Neither timm nor a download is needed.

Shapes: B batch, H W image size (multiples of the patch size), N = 1 + (H/16)(W/16) tokens (CLS first),
D embedding width.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

_WRAPPERS = ("teacher", "model", "state_dict")  # DINO full checkpoints keep the backbone under "teacher"
_PREFIXES = ("module.", "backbone.")  # DDP and DINO's MultiCropWrapper


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (DINO / timm key names)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # [B, N, D]
        """x: ``[B, N, D]`` → ``[B, N, D]``."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return self.proj(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)"))


class Mlp(nn.Module):
    """``fc1`` → GELU → ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:  # [B, N, D]
        """x: ``[B, N, D]`` → ``[B, N, D]``."""
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:  # [B, N, D]
        """x: ``[B, N, D]`` → ``[B, N, D]``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch × patch`` conv (``patch_embed.proj``)."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:  # [B, 3, H, W]
        """x: ``[B, 3, H, W]`` → ``[B, (H/p)(W/p), D]`` patch tokens, row-major."""
        return rearrange(self.proj(x), "b d h w -> b (h w) d")


class ViT(nn.Module):
    """Vision Transformer, DINO's ``VisionTransformer`` without classifier (DINO anchor; defaults ViT-S/16).

    Inputs are ImageNet-normalised RGB (``(x01 − mean) / std``); the caller normalises.

    Args:
        img_size: training resolution of ``pos_embed`` (224); other sizes interpolate it.
        patch: patch size (16).
        dim: embedding width D (384).
        depth: number of blocks (12).
        heads: attention heads (6).
        mlp_ratio: MLP hidden width / D (4).
    """

    def __init__(self, img_size: int = 224, patch: int = 16, dim: int = 384, depth: int = 12, heads: int = 6,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.patch, self.grid = patch, img_size // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """``pos_embed`` for a ``grid_h × grid_w`` patch grid, bicubically resized if needed (DINO), ``[1, N, D]``."""
        if (grid_h, grid_w) == (self.grid, self.grid):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = rearrange(patch_pos, "1 (h w) d -> 1 d h w", h=self.grid)
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, rearrange(patch_pos, "1 d h w -> 1 (h w) d")], dim=1)

    def tokens(self, x: Tensor) -> Tensor:  # [B, 3, H, W]
        """Patch embedding + CLS token + positional embedding: ``[B, N, D]``.

        Raises:
            ValueError: ``x`` is not ``[B, 3, H, W]`` with H, W multiples of the patch size.
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % self.patch or x.shape[3] % self.patch:
            raise ValueError(f"ViT: input must be [B, 3, H, W] with H, W multiples of {self.patch}, "
                             f"got {list(x.shape)}")
        patches = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self._pos_embed(x.shape[2] // self.patch, x.shape[3] // self.patch)

    def forward_features(self, x: Tensor, taps: Sequence[int] = (2, 5, 8, 11)) -> list[Tensor]:
        """Token features for the projected discriminator (StyleGAN-T anchor; 3DRealHead §IV-B).

        Args:
            x: ``[B, 3, H, W]`` ImageNet-normalised images.
            taps: block indices whose outputs (before the final norm) are returned.

        Returns:
            ``1 + len(taps)`` tensors ``[B, N, D]``: the embedded tokens (after the positional embedding),
            then each tapped block's output in the order of ``taps``.

        Raises:
            ValueError: bad input shape, or a tap outside ``[0, depth)``.
        """
        if not taps or any(not 0 <= t < len(self.blocks) for t in taps):
            raise ValueError(f"ViT.forward_features: taps {list(taps)} must lie in [0, {len(self.blocks)})")
        h = self.tokens(x)
        embedded, outputs = h, {}
        for i, block in enumerate(self.blocks[: max(taps) + 1]):  # blocks after the last tap are skipped
            h = block(h)
            outputs[i] = h
        return [embedded] + [outputs[t] for t in taps]

    def forward(self, x: Tensor) -> Tensor:  # [B, 3, H, W]
        """DINO's embedding: the normalised CLS token after all blocks, ``[B, D]``."""
        h = self.tokens(x)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)[:, 0]


def _unwrap_state_dict(obj: object) -> object:
    """Descend into ``teacher`` / ``model`` / ``state_dict`` wrappers until a tensor dict is left."""
    while isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        key = next((k for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj = obj[key]
    return obj


def _strip(key: str) -> str:
    """Remove leading ``module.`` / ``backbone.`` prefixes (any order, repeated)."""
    while key.startswith(_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def load_dino_vit(path: str | Path) -> ViT:
    """Load DINO ViT-S/16 weights from a torch file into a :class:`ViT` in eval mode (DINO anchor).

    Accepts ``dino_deitsmall16_pretrain.pth`` (a bare state dict), a saved timm ``vit_small_patch16_224.dino``
    state dict, and wrapped checkpoints: the tensors may sit under ``teacher`` / ``model`` / ``state_dict``
    and carry ``module.`` / ``backbone.`` prefixes. ``head.*`` keys (DINO's projection head, a timm
    classifier) are dropped: no feature path uses them. Read with ``weights_only=True`` (no code runs).

    Raises:
        FileNotFoundError: ``path`` does not exist (names it).
        ValueError: the file is not a torch state dict, or keys are missing / unexpected / mis-shaped
            (names the file and the keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DINO ViT weights: {path} does not exist (expected dino_deitsmall16_pretrain.pth "
                                "or a saved timm vit_small_patch16_224.dino state dict)")
    try:
        obj = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # torch.load raises several types (UnpicklingError, RuntimeError, EOFError)
        raise ValueError(f"DINO ViT weights {path}: not a readable torch state dict ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"DINO ViT weights {path}: expected a state dict, got {type(obj).__name__}")
    state = {_strip(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    model = ViT()
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"DINO ViT weights {path}: missing keys {missing[:10]}{' ...' * (len(missing) > 10)}; "
                         f"unexpected keys {unexpected[:10]}{' ...' * (len(unexpected) > 10)} "
                         "(expected ViT-S/16 keys as in dino_deitsmall16_pretrain.pth)")
    wrong = [f"{k} {list(v.shape)} != {list(expected[k].shape)}" for k, v in state.items()
             if v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"DINO ViT weights {path}: mis-shaped tensors {wrong[:10]} (is this ViT-S/16?)")
    model.load_state_dict(state)
    return model.eval()
