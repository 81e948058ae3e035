"""Element-wise vector quantisation q(z) of a latent grid (SynShot Eq. 1; van den Oord et al. VQ-VAE).

Each code z_ij ∈ R^n is replaced by its nearest codebook entry. Gradients pass straight through
(z + sg(q − z)). The codebook learns either through the codebook loss ``‖q − sg(z)‖²`` or, with
``update="ema"``, through exponential moving averages of assigned encoder outputs (no gradient).
Codes left unused are restarted from random encoder outputs. Statistics that drive codebook
updates are all-reduced across processes when ``torch.distributed`` is initialised, and restart
values are broadcast from rank 0, so every replica keeps an identical codebook under DDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


@dataclass
class VQOutput:
    """What a quantiser returns.

    Attributes:
        quantized: straight-through quantised latents [B, n, h, w] (forward = codebook entries).
        indices: codebook index per latent cell [B, h, w] (long).
        loss: codebook_loss + commitment_loss, scalar.
        codebook_loss: ‖q − sg(z)‖² mean (zero with EMA updates, where the codebook has no gradient).
        commitment_loss: β·‖z − sg(q)‖² mean.
        perplexity: exp(entropy) of this batch's code histogram (1 … K), for logging.
        usage: fraction of the K codes used in this batch, for logging.
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    perplexity: Tensor
    usage: Tensor


def _all_reduce_sum(x: Tensor) -> Tensor:
    """Sum over processes when a process group is up; the identity otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def _broadcast(x: Tensor) -> Tensor:
    """Rank 0's value everywhere when a process group is up."""
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(x, src=0)
    return x


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser with a learned codebook of K entries of dimension n.

    Args:
        num_codes: K, the codebook size.
        code_dim: n, the dimension of each latent code.
        beta: β, weight of the commitment loss (VQ-VAE uses 0.25).
        update: ``"loss"`` learns the codebook by gradient of the codebook loss; ``"ema"`` by
            exponential moving averages of the encoder outputs assigned to each code.
        ema_decay: decay of the EMA statistics (``update="ema"``).
        eps: Laplace smoothing of EMA cluster sizes.
        restart_dead_codes: replace codes whose running usage falls below ``dead_threshold``
            times the mean running usage with random encoder outputs of the current batch
            (training only).
        dead_threshold: fraction of the average code's running (EMA) assignment count under
            which a code counts as dead; relative, so it does not depend on batch or grid size.
        usage_decay: decay of the running per-code usage used to find dead codes; with 0.95 a
            code never chosen is restarted after ≈ 68 steps (a 1,500-step CPU run has to recover
            from collapse early: 0.99 with an absolute threshold took ≈ 700 steps and left > 90% of
            the codes unused).
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        beta: float = 0.25,
        update: Literal["loss", "ema"] = "loss",
        ema_decay: float = 0.99,
        eps: float = 1e-5,
        restart_dead_codes: bool = True,
        dead_threshold: float = 0.03,
        usage_decay: float = 0.95,
    ) -> None:
        super().__init__()
        if update not in ("loss", "ema"):
            raise ValueError(f"VectorQuantizer.update must be 'loss' or 'ema', got {update!r}")
        self.num_codes, self.code_dim, self.beta = num_codes, code_dim, beta
        self.update, self.ema_decay, self.eps = update, ema_decay, eps
        self.restart_dead_codes, self.dead_threshold, self.usage_decay = restart_dead_codes, dead_threshold, usage_decay
        init = torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if update == "ema":
            # A buffer, not a Parameter: the optimiser must not touch an EMA codebook.
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        # Set to the first training batch's mean count M/K for every code (``usage_started`` flags
        # that), so the restart horizon ≈ log(dead_threshold) / log(usage_decay) steps whatever M/K is.
        self.register_buffer("running_usage", torch.ones(num_codes))
        self.register_buffer("usage_started", torch.zeros((), dtype=torch.bool))
        self._usage_known_started = False  # host-side copy: no device sync per step once it is True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # Checkpoints from before ``usage_started`` existed had their usage statistics running already.
        state_dict.setdefault(prefix + "usage_started", torch.ones((), dtype=torch.bool))
        self._usage_known_started = False  # re-read the loaded flag on the next training step
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, z: Tensor) -> VQOutput:
        """Quantise z: [B, n, h, w] → :class:`VQOutput`."""
        if z.shape[1] != self.code_dim:
            raise ValueError(f"VectorQuantizer expects z of shape [B, {self.code_dim}, h, w], got {list(z.shape)}")
        b, _, h, w = z.shape
        flat = rearrange(z, "b n h w -> (b h w) n").float()
        indices = self.nearest(flat)
        counts = torch.bincount(indices, minlength=self.num_codes).to(flat.dtype)
        # Look up with the codebook the indices were chosen against, then update it (as VQ-VAE-2 and
        # taming-transformers do): updating first would hand a cell whose code is restarted this step a
        # random encoder output instead of the code its index names. Indexing copies, so the in-place
        # update below cannot reach ``q_flat``.
        q_flat = self.codebook[indices]
        if self.training:
            self._update_codebook(flat.detach(), indices, counts)
        q = rearrange(q_flat, "(b h w) n -> b n h w", b=b, h=h, w=w).to(z.dtype)
        codebook_loss = F.mse_loss(q, z.detach()) if self.update == "loss" else z.new_zeros(())
        commitment_loss = self.beta * F.mse_loss(z, q.detach())
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
        return VQOutput(
            quantized=z + (q - z).detach(),
            indices=indices.view(b, h, w),
            loss=codebook_loss + commitment_loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=perplexity,
            usage=(counts > 0).float().mean(),
        )

    @torch.no_grad()
    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest codebook entry for each row of flat: [M, n] → [M] (long)."""
        codebook = self.codebook.float()
        # ‖z‖² − 2 z·e + ‖e‖² avoids materialising the [M, K, n] difference tensor.
        dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)
        return dist2.argmin(dim=1)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codebook entries for an index grid: [B, h, w] (long) → [B, n, h, w]."""
        return rearrange(self.codebook[indices], "b h w n -> b n h w")

    @torch.no_grad()
    def _update_codebook(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        """EMA update and/or dead-code restarts from this batch's detached encoder outputs.

        Args:
            flat: encoder outputs [M, n].
            indices: their assigned codes [M].
            counts: local assignment histogram [K].
        """
        counts = _all_reduce_sum(counts.clone())
        if not self._usage_known_started and not bool(self.usage_started):
            self.running_usage.fill_(float(counts.mean()))
            self.usage_started.fill_(True)
        self._usage_known_started = True
        self.running_usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        if self.update == "ema":
            sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)
            sums = _all_reduce_sum(sums)
            self.ema_count.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
            self.ema_sum.mul_(self.ema_decay).add_(sums, alpha=1 - self.ema_decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
            self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        if self.restart_dead_codes:
            self._restart(flat)

    @torch.no_grad()
    def _restart(self, flat: Tensor) -> None:
        """Move dead codes onto random encoder outputs (rank 0's choice, broadcast to all ranks)."""
        dead = self.running_usage < self.dead_threshold * self.running_usage.mean()
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        picks = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
        # A little noise keeps several restarted codes from landing on the very same vector.
        fresh = _broadcast(flat[picks] + 1e-3 * flat.std() * torch.randn_like(flat[picks]))
        self.codebook.data[dead] = fresh.to(self.codebook.dtype)
        self.running_usage[dead] = self.running_usage.mean()  # a fresh code gets the full horizon again
        if self.update == "ema":
            self.ema_count[dead] = 1.0
            self.ema_sum[dead] = fresh


class PassThroughQuantizer(nn.Module):
    """The "w/o VQ" ablation of SynShot Table 1: latents pass unquantised, all VQ losses are zero.

    Args:
        code_dim: n, only checked against the input.
    """

    def __init__(self, code_dim: int) -> None:
        super().__init__()
        self.code_dim = code_dim

    def forward(self, z: Tensor) -> VQOutput:
        """z: [B, n, h, w] → :class:`VQOutput` with ``quantized = z`` and index −1 everywhere."""
        if z.shape[1] != self.code_dim:
            raise ValueError(f"PassThroughQuantizer expects z of shape [B, {self.code_dim}, h, w], got {list(z.shape)}")
        zero = z.new_zeros(())
        b, _, h, w = z.shape
        indices = torch.full((b, h, w), -1, dtype=torch.long, device=z.device)
        return VQOutput(z, indices, zero, zero, zero, perplexity=zero, usage=zero)
