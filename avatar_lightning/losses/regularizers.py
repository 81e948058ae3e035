"""Geometry loss and Gaussian regularisers of SynShot §3.2.

L_geom = δ·L1 on the position map x̂_verts and the expression map x̂_expr; L2 regularisation "on
position, scale, opacity, and the l ≥ 1 part of the spherical harmonics coefficients". Position,
scale and opacity are regularised as the regressed *offsets* (δφ, δσ, δα) — the quantities the
network adds to the initial Gaussians — so the penalty keeps primitives near their initialisation
rather than shrinking them towards the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from avatar_lightning.losses.photometric import l1_loss


def geometry_l1(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """L1 between predicted and target geometry maps.

    Args:
        pred: [B, 3, H, W] (x̂_verts or x̂_expr).
        target: [B, 3, H, W] (x_verts or x_exp).
        mask: [B, 1, H, W] valid texels (the UV layout leaves texels outside every triangle).

    Returns:
        Scalar.
    """
    return l1_loss(pred, target, mask)


@dataclass
class RegularizerTerms:
    """Unweighted mean squares and their weighted sum.

    Attributes:
        position: mean δφ².
        scale: mean δσ².
        opacity: mean δα².
        sh_rest: mean of the squared SH coefficients of bands l ≥ 1.
        total: weighted sum.
    """

    position: Tensor
    scale: Tensor
    opacity: Tensor
    sh_rest: Tensor
    total: Tensor


class GaussianRegularizer(nn.Module):
    """Weighted L2 penalties on regressed Gaussian offsets and higher SH bands.

    Args:
        position_weight: weight of mean δφ².
        scale_weight: weight of mean δσ².
        opacity_weight: weight of mean δα².
        sh_rest_weight: weight of the mean square of SH coefficients with l ≥ 1.
    """

    def __init__(
        self,
        position_weight: float = 0.01,
        scale_weight: float = 0.01,
        opacity_weight: float = 0.01,
        sh_rest_weight: float = 0.01,
    ) -> None:
        super().__init__()
        self.weights = (position_weight, scale_weight, opacity_weight, sh_rest_weight)

    def forward(self, position: Tensor, scale: Tensor, opacity: Tensor, sh: Tensor) -> RegularizerTerms:
        """Penalise offsets and view-dependent colour.

        Args:
            position: δφ [..., 3].
            scale: δσ [..., 3].
            opacity: δα [...] or [..., 1].
            sh: SH coefficients [N, K, 3] with K = (degree + 1)² ≥ 1; band 0 is coefficient 0.

        Returns:
            :class:`RegularizerTerms`.
        """
        if sh.ndim != 3 or sh.shape[-1] != 3:
            raise ValueError(f"GaussianRegularizer: sh must be [N, K, 3], got {list(sh.shape)}")
        terms = [position.pow(2).mean(), scale.pow(2).mean(), opacity.pow(2).mean()]
        terms.append(sh[:, 1:].pow(2).mean() if sh.shape[1] > 1 else sh.new_zeros(()))
        total = sum(w * t for w, t in zip(self.weights, terms, strict=True))
        return RegularizerTerms(*terms, total=total)
