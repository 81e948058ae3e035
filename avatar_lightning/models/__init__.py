"""Plain ``nn.Module`` networks: encoders, quantiser, transformer, decoders, regressors."""

from avatar_lightning.models.quantizer import PassThroughQuantizer, VectorQuantizer, VQOutput
from avatar_lightning.models.regressors import GaussianOffsets, PartPrediction, PartRegressors
from avatar_lightning.models.synshot import (
    BranchCode,
    PriorMaps,
    PriorOutput,
    SynShotNet,
    SynShotNetConfig,
)
from avatar_lightning.models.transformer import LatentTransformer

__all__ = [
    "BranchCode",
    "GaussianOffsets",
    "LatentTransformer",
    "PartPrediction",
    "PartRegressors",
    "PassThroughQuantizer",
    "PriorMaps",
    "PriorOutput",
    "SynShotNet",
    "SynShotNetConfig",
    "VQOutput",
    "VectorQuantizer",
]
