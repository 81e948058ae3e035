"""ArcFace face-recognition backbone (iResNet, insightface ``arcface_torch``) and its checkpoint loader.

SynShot §3.3 follows Lattas et al. and adds two ArcFace-based inversion objectives (identity
cosine loss and a feature loss on intermediate activations, see
:mod:`avatar_lightning.losses.identity`). The network here reproduces the ``arcface_torch``
iResNet layout parameter for parameter, so a ``backbone.pth`` trained by insightface (e.g.
``glint360k_cosface_r100_fp16_0.1/backbone.pth`` or ``ms1mv3_arcface_r50_fp16/backbone.pth``)
loads with ``strict=True``. No weights ship with this project and none can be downloaded here:
:func:`load_arcface` takes the path of a file the user already has.

Input convention of those checkpoints: aligned RGB face crops of 112×112 pixels, normalised as
``(x - 0.5) / 0.5`` from [0, 1] (insightface ``inference.py``); :meth:`IResNet.normalize` does it.

Crops here are *not* aligned the insightface way (a similarity warp of five detected landmarks onto
the ArcFace template): :mod:`avatar_lightning.losses.identity` cuts a square box around the target's
foreground mask and resamples it differentiably. Why: the loss compares a render with its target
seen by the same camera, so one shared box treats both alike, and it needs no landmark detector in
the training loop (the shipped YuNet detector runs in ONNX, outside autograd, and would have to run
on every step). The cost: roll and scale differ from the template's, so absolute
embeddings (and L_id values) are not comparable with insightface's numbers; only the render–target
difference is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

#: blocks per stage of the published backbones (insightface ``backbones/iresnet.py``).
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN → conv3×3 → BN → PReLU → conv3×3(stride) → BN (+ shortcut).

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the second convolution (2 at the first block of each stage).
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


@dataclass
class ArcFaceOutput:
    """What :meth:`IResNet.forward_features` returns.

    Attributes:
        embedding: identity embedding before L2 normalisation, ``[B, D]`` (D = 512 for the
            published models).
        features: activations after the stem and after each of the four stages,
            ``[B, C_j, H_j, W_j]`` for j = 0..4 (the layers of the ArcFace feature loss).
    """

    embedding: Tensor
    features: list[Tensor]


class IResNet(nn.Module):
    """insightface's iResNet with the same module names, so its checkpoints load unchanged.

    Args:
        layers: residual blocks per stage, e.g. ``(3, 4, 14, 3)`` for iResNet-50.
        widths: channels of the four stages; the published models use ``(64, 128, 256, 512)``.
            Smaller widths only exist for tests (randomly initialised, never a real checkpoint).
        num_features: embedding size D.
        input_size: side of the square input crop (112 for the published models). Four stride-2
            stages reduce it by 16, which fixes the size of the final ``fc`` layer.
        dropout: dropout before ``fc`` (0 at inference).
    """

    def __init__(self, layers: tuple[int, int, int, int] = IRESNET_LAYERS["iresnet50"],
                 widths: tuple[int, int, int, int] = (64, 128, 256, 512), num_features: int = 512,
                 input_size: int = 112, dropout: float = 0.0) -> None:
        super().__init__()
        if input_size % 16 != 0:
            raise ValueError(f"IResNet.input_size must be a multiple of 16, got {input_size}")
        self.input_size = input_size
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        stages, inplanes = [], widths[0]
        for n_blocks, planes in zip(layers, widths, strict=True):
            blocks = [IBasicBlock(inplanes, planes, stride=2)]
            blocks += [IBasicBlock(planes, planes) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        side = input_size // 16
        self.fc = nn.Linear(widths[3] * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # as in insightface: a fixed-scale output BN
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)

    @staticmethod
    def normalize(images: Tensor) -> Tensor:
        """Map RGB in [0, 1] to the checkpoints' input range [-1, 1]. ``images``: ``[B, 3, H, W]``."""
        return (images - 0.5) / 0.5

    def forward_features(self, x: Tensor) -> ArcFaceOutput:
        """Run the network on normalised crops.

        Args:
            x: ``[B, 3, S, S]`` with S = ``input_size``, already :meth:`normalize`-d.

        Returns:
            :class:`ArcFaceOutput` with the embedding and the five intermediate activations.
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"IResNet expects [B, 3, {self.input_size}, {self.input_size}], got {list(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        feats = [x]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            feats.append(x)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return ArcFaceOutput(embedding=self.features(self.fc(x)), features=feats)

    def forward(self, x: Tensor) -> Tensor:
        """Embedding ``[B, D]`` of normalised crops ``[B, 3, S, S]``."""
        return self.forward_features(x).embedding


def iresnet(arch: str = "iresnet50", **kwargs) -> IResNet:
    """Build a published iResNet variant by name (``iresnet18|34|50|100``), randomly initialised."""
    if arch not in IRESNET_LAYERS:
        raise ValueError(f"unknown ArcFace backbone {arch!r}; expected one of {sorted(IRESNET_LAYERS)}")
    return IResNet(layers=IRESNET_LAYERS[arch], **kwargs)


def load_arcface(path: str | os.PathLike, arch: str = "iresnet100", map_location: str | torch.device = "cpu",
                 **kwargs) -> IResNet:
    """Load a user-supplied insightface ``arcface_torch`` checkpoint into a frozen, eval-mode iResNet.

    Args:
        path: the ``backbone.pth`` file (a plain state dict, or a dict holding one under
            ``state_dict``/``model``; a ``module.`` prefix from DDP training is stripped).
        arch: which backbone the file holds (``iresnet50`` or ``iresnet100`` for the public models).
        map_location: where tensors are loaded; move the module afterwards as usual.
        **kwargs: further :class:`IResNet` arguments (``num_features``, ``input_size``).

    Returns:
        The network with ``requires_grad=False`` everywhere and ``eval()`` set: a loss network.

    Raises:
        FileNotFoundError: naming ``path`` when it does not exist (no weights ship with the project).
        RuntimeError: naming ``path`` and the mismatching keys when the file is not that backbone.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"ArcFace checkpoint not found: {path}. Pass the path of an insightface arcface_torch "
            f"backbone.pth ({arch}) that you have downloaded yourself; none ships with avatar-lightning, "
            "and configs that do not set the identity-loss weights do not need it."
        )
    state = torch.load(path, map_location=map_location, weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = iresnet(arch, **kwargs)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"{path} is not an insightface {arch} backbone: {err}") from err
    return net.eval().requires_grad_(False)
