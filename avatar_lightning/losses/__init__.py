"""Loss terms (photometric, perceptual, geometric, regularisers)."""

from avatar_lightning.losses.photometric import LPIPS, PhotometricLoss, PhotometricTerms, l1_loss, ssim
from avatar_lightning.losses.regularizers import GaussianRegularizer, RegularizerTerms, geometry_l1

__all__ = [
    "LPIPS",
    "GaussianRegularizer",
    "PhotometricLoss",
    "PhotometricTerms",
    "RegularizerTerms",
    "geometry_l1",
    "l1_loss",
    "ssim",
]
