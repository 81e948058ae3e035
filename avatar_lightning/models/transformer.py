"""A transformer over the quantised latent grid (SynShot §3.2 after Esser et al., "Taming Transformers").

SynShot: "We follow the approach of Esser et al. and use a transformer operating in a quantized
latent codebook space to better model long-range dependencies between encoded patches". In Taming
the transformer is a second-stage GPT over codebook *indices*, trained after the autoencoder, to
sample new images. SynShot trains end to end and never samples: its transformer sits inside the
autoencoder. So here it reads the quantised grid q(z) [B, n, h, w] as h·w tokens in raster order,
mixes them with full (bidirectional) self-attention — every latent cell sees the whole head —
and returns a residual correction of the same shape that the decoders consume. The block design
follows minGPT (pre-LayerNorm attention and 4× GELU MLP on a residual stream, learned positional
embedding, final LayerNorm); ``causal=True`` restores GPT's triangular mask.

The output projection starts at zero, so an untrained transformer is the identity and the
autoencoder trains from a well-posed start.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class SelfAttention(nn.Module):
    """Multi-head self-attention over a token sequence.

    Args:
        dim: token width.
        heads: number of heads; must divide ``dim``.
        dropout: attention and residual dropout.
        causal: mask attention to earlier tokens (GPT) instead of all tokens.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, causal: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer width {dim} must be divisible by heads={heads}")
        self.heads, self.dropout, self.causal = heads, dropout, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, D] → [B, T, D]."""
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.heads)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x)) with a 4× GELU MLP."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, causal: bool = False) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout, causal)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, D] → [B, T, D]."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class LatentTransformer(nn.Module):
    """Residual transformer over a quantised latent grid.

    Args:
        code_dim: n, channels of the latent grid.
        latent_resolution: h (= w) of the grid; sets the number of positional embeddings.
        width: token width D inside the transformer.
        depth: number of blocks.
        heads: attention heads.
        dropout: embedding, attention and residual dropout.
        causal: GPT-style masking in raster order (Taming's sampler); SynShot's use needs False.
    """

    def __init__(
        self,
        code_dim: int,
        latent_resolution: int,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.latent_resolution = latent_resolution
        self.embed = nn.Linear(code_dim, width)
        self.pos = nn.Parameter(torch.zeros(1, latent_resolution**2, width))
        nn.init.normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[TransformerBlock(width, heads, dropout, causal) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width)
        self.out = nn.Linear(width, code_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, q: Tensor) -> Tensor:
        """q: [B, n, h, w] → q + correction, [B, n, h, w]."""
        b, _, h, w = q.shape
        if h * w != self.pos.shape[1]:
            raise ValueError(
                f"LatentTransformer was built for a {self.latent_resolution}² latent grid, got {h}×{w}"
            )
        tokens = self.drop(self.embed(rearrange(q, "b n h w -> b (h w) n")) + self.pos)
        delta = self.out(self.ln_f(self.blocks(tokens)))
        return q + rearrange(delta, "b (h w) n -> b n h w", h=h, w=w)
