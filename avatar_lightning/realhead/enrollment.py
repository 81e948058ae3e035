"""Building blocks of 3DRealHead enrollment (paper §IV-C1, appendix B) that need no Lightning.

The phases of identity skip maps, the per-image colour affine, the map regulariser of Eq. 8, and
reading the two checkpoints enrollment and driving meet (the prior's, the enrolled avatar's) with
errors that name the field and the file. :class:`~avatar_lightning.lit.realhead_enroll.RealHeadEnrollment`
puts them together. Dimension letters: B batch, V views, R UV side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

PHASE_ORDERS = ("coarse_first", "fine_first", "joint")


def phase_levels(levels: int, order: str) -> list[list[int]]:
    """Identity skip maps (indices, finest = 0) optimised in each phase (paper appendix B).

    Args:
        levels: L, the number of skip maps.
        order: one of :data:`PHASE_ORDERS`.

    Returns:
        Two lists (``coarse_first``: the L − L//2 coarsest, then the L//2 finest; ``fine_first`` the
        reverse) or one (``joint``: all maps).

    Raises:
        ValueError: an unknown order.
    """
    fine, coarse = list(range(levels // 2)), list(range(levels // 2, levels))
    orders = {"coarse_first": [coarse, fine], "fine_first": [fine, coarse], "joint": [list(range(levels))]}
    if order not in orders:
        raise ValueError(f"RealHeadEnrollment.phase_order must be one of {PHASE_ORDERS}, got {order!r}")
    return orders[order]


def apply_colour_affine(rgb: Tensor, affine: Tensor) -> Tensor:
    """Per-view colour transform ``A_v · rgb + b_v`` (paper appendix B's colour-shift matrix).

    Args:
        rgb: Tensor  # [B, V, 3, H, W]
        affine: Tensor  # [V, 3, 4] (A_v | b_v); the identity is ``[I | 0]``.

    Returns:
        Tensor  # [B, V, 3, H, W]
    """
    out = torch.einsum("vij,bvjhw->bvihw", affine[:, :, :3], rgb)
    return out + affine[None, :, :, 3, None, None]


def map_regulariser(raw: Tensor, raw_init: Tensor, valid: Tensor) -> Tensor:
    """Mean squared distance of the raw decoder maps to their initial values over valid texels (Eq. 8).

    Args:
        raw: Tensor  # [B, 59, R, R]
        raw_init: Tensor  # [B or 1, 59, R, R]
        valid: BoolTensor  # [R, R] texels that carry a Gaussian.

    Returns:
        Scalar: Σ_valid ‖raw − raw_init‖² / (B · 59 · #valid).
    """
    w = valid.to(raw.dtype)
    return ((raw - raw_init) ** 2 * w).sum() / (w.sum().clamp_min(1) * raw.shape[0] * raw.shape[1])


def read_prior_checkpoint(path: str | None) -> dict[str, Any]:
    """Load a RealHeadPrior checkpoint (CPU); the enrollment resolves ``"latest"`` before calling this.

    Raises:
        ValueError: ``path`` unset or ``"latest"``, or the file is not a RealHeadPrior checkpoint (no
            ``net.encoder_id`` weights), naming the field and the file.
        FileNotFoundError: naming the file.
    """
    if not path or str(path) == "latest":
        raise ValueError(f"RealHeadEnrollment.prior_checkpoint: give the path of a RealHeadPrior checkpoint "
                         f"(lightning fit -c experiments/realhead_prior.yaml writes them) or latest, got {path!r}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"RealHeadEnrollment.prior_checkpoint: file not found: {file}")
    state = torch.load(file, map_location="cpu", weights_only=False)
    if not any(k.startswith("net.encoder_id.") for k in state.get("state_dict", {})):
        raise ValueError(f"RealHeadEnrollment.prior_checkpoint: {file} is not a RealHeadPrior checkpoint "
                         f"(no net.encoder_id weights)")
    return state


def read_avatar_checkpoint(path: str | None) -> dict[str, Any]:
    """Load an enrollment checkpoint (``avatar.ckpt`` written by :class:`RealHeadEnrollment`), CPU.

    Raises:
        FileNotFoundError: naming the file.
        ValueError: the file is not a RealHeadEnrollment checkpoint (no identity maps), naming it.
    """
    file = Path(str(path)).expanduser()
    if not path or not file.is_file():
        raise FileNotFoundError(f"avatar_checkpoint: file not found: {file} (lightning fit -c experiments/enroll.yaml "
                                f"writes <output_dir>/avatar.ckpt)")
    state = torch.load(file, map_location="cpu", weights_only=False)
    if "identity.0" not in state.get("state_dict", {}):
        raise ValueError(f"avatar_checkpoint: {file} is not a RealHeadEnrollment checkpoint (no identity maps)")
    return state


def prior_hyper_parameters(state: dict[str, Any]) -> dict[str, Any]:
    """The prior's init arguments from its checkpoint (LightningCLI's ``_``-keys dropped)."""
    return {k: v for k, v in (state.get("hyper_parameters") or {}).items() if not k.startswith("_")}
