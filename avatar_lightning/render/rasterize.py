"""``rasterize()``: the one entry point every model, baseline and generator renders through."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .project import project
from .raster_torch import composite
from .types import Cameras, Gaussians, RenderOutput

BACKENDS = ("auto", "torch", "gsplat", "inria")


@dataclass
class _Batched:
    gaussians: Gaussians  # fields [B, N, ...]
    cameras: Cameras  # [B, C, ...]
    background: Tensor  # [B, C, 3]
    squeeze: bool  # the caller passed unbatched Gaussians: drop B again


def _batch(gaussians: Gaussians, cameras: Cameras, background: Tensor | None) -> _Batched:
    """Bring inputs to the batched layout ``[B, C]`` (see :func:`rasterize` for the accepted shapes)."""
    if not gaussians.batched and cameras.batched:
        raise ValueError("rasterize: cameras are batched [B, C, ...] but gaussians are not [B, N, ...]; "
                         "pass one Gaussian set per avatar (e.g. gaussians.map(lambda t: t.expand(B, *t.shape)))")
    squeeze = not gaussians.batched
    g = gaussians.map(lambda t: t[None]) if squeeze else gaussians
    b = g.means.shape[0]
    cameras = cameras.to(g.means)  # the Gaussians set dtype and device
    if not cameras.batched:
        cameras = replace(cameras, K=cameras.K.expand(b, *cameras.K.shape),
                          world_to_cam=cameras.world_to_cam.expand(b, *cameras.world_to_cam.shape))
    if cameras.K.shape[0] != b:
        raise ValueError(f"rasterize: {b} Gaussian sets but cameras have B={cameras.K.shape[0]}")
    c = cameras.num_cameras
    ref = g.means
    bg = torch.zeros(3, dtype=ref.dtype, device=ref.device) if background is None else background.to(ref)
    shapes = {(3,): lambda t: t.expand(b, c, 3)}
    if squeeze:
        shapes[(c, 3)] = lambda t: t[None]
    else:
        shapes[(b, 3)] = lambda t: t[:, None].expand(b, c, 3)
        shapes[(b, c, 3)] = lambda t: t
    if tuple(bg.shape) not in shapes:
        raise ValueError(f"rasterize: background must be one of {sorted(shapes)} here, got {tuple(bg.shape)}")
    return _Batched(gaussians=g, cameras=cameras, background=shapes[tuple(bg.shape)](bg), squeeze=squeeze)


def _unbatch(out: RenderOutput, b: int, c: int, squeeze: bool) -> RenderOutput:
    def fix(t: Tensor) -> Tensor:
        t = t.unflatten(0, (b, c))
        return t[0] if squeeze else t

    return RenderOutput(rgb=fix(out.rgb), alpha=fix(out.alpha), depth=fix(out.depth))


def rasterize_torch(gaussians: Gaussians, cameras: Cameras, background: Tensor,
                    sh_degree: int | None = None, tile_size: int | None = None) -> RenderOutput:
    """The pure-torch backend on batched inputs; outputs are ``[B·C, ch, H, W]``.

    Args:
        gaussians: fields ``[B, N, ...]``.
        cameras: ``[B, C, ...]``.
        background: Tensor  # [B, C, 3]
        sh_degree: SH degree to evaluate (default: all that ``sh`` holds).
        tile_size: tile edge in pixels (default: raster_torch.TILE_SIZE).
    """
    proj = project(gaussians, cameras, sh_degree)
    rgb, depth, trans = composite(proj.means2d, proj.conics, proj.colors, proj.opacities, proj.depths,
                                  cameras.width, cameras.height, tile_size=tile_size)
    bg = background.flatten(0, 1)[:, :, None, None]  # [V,3,1,1]
    return RenderOutput(rgb=rgb + trans * bg, alpha=1 - trans, depth=depth)


def resolve_backend(backend: str, gaussians: Gaussians) -> str:
    """The backend ``rasterize`` will use for these Gaussians ("auto" resolved).

    "auto" is gsplat on CUDA when gsplat is installed, the Gaussians are float32 and no opacity
    exceeds 0.99 (the only case in which gsplat's α cap differs, see backends.py); otherwise torch.
    It never picks inria.
    """
    if backend not in BACKENDS:
        raise ValueError(f"rasterize: backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if gaussians.means.device.type != "cuda":
        return "torch"
    from .backends import gsplat_available, gsplat_semantics_match

    same = gaussians.means.dtype == torch.float32 and gsplat_semantics_match(gaussians)  # gsplat is float32-only
    return choose_auto("cuda", gsplat_available(), same)


def choose_auto(device_type: str, gsplat_installed: bool, gsplat_same_result: bool) -> str:
    """The "auto" rule: gsplat only on CUDA, when installed and when it computes the same α."""
    return "gsplat" if device_type == "cuda" and gsplat_installed and gsplat_same_result else "torch"


def rasterize(gaussians: Gaussians, cameras: Cameras, background: Tensor | None = None,
              backend: str = "auto", sh_degree: int | None = None) -> RenderOutput:
    """Render Gaussians into every camera (differentiable w.r.t. every Gaussian field).

    Shapes accepted:

    ======================  =====================  =======================  ====================
    gaussians               cameras                background               outputs
    ======================  =====================  =======================  ====================
    ``[N, ...]``            ``[C, ...]``           None, [3] or [C, 3]      ``[C, ch, H, W]``
    ``[B, N, ...]``         ``[B, C, ...]``        None, [3], [B, 3],       ``[B, C, ch, H, W]``
                            or ``[C, ...]``        or [B, C, 3]
                            (shared by all B)
    ======================  =====================  =======================  ====================

    Args:
        gaussians: the Gaussians (see :class:`Gaussians`).
        cameras: OpenCV pinhole cameras.
        background: colour behind the Gaussians; None = black.
        backend: "torch" (anywhere), "gsplat" (CUDA, ``pip install -e .[gpu]``), "inria"
            (CUDA, ``diff_gaussian_rasterization`` if the user installed it; centred principal
            point only), or "auto" (see :func:`resolve_backend`): never a backend whose result
            differs from the contract in DESIGN.md.
        sh_degree: SH degree to evaluate; defaults to the highest ``gaussians.sh`` holds
            (lower it for the progressive SH schedule of 3DGS).

    Returns:
        :class:`RenderOutput` with rgb ``[..., 3, H, W]``, alpha and depth ``[..., 1, H, W]``.
    """
    if sh_degree is not None and not 0 <= sh_degree <= gaussians.sh_degree:
        raise ValueError(f"rasterize: sh_degree={sh_degree} but gaussians.sh holds degree {gaussians.sh_degree}")
    batched = _batch(gaussians, cameras, background)
    name = resolve_backend(backend, batched.gaussians)
    b, c = batched.cameras.K.shape[:2]
    if name == "torch":
        out = rasterize_torch(batched.gaussians, batched.cameras, batched.background, sh_degree)
    else:
        from .backends import rasterize_gsplat, rasterize_inria

        fn = rasterize_gsplat if name == "gsplat" else rasterize_inria
        out = fn(batched.gaussians, batched.cameras, batched.background, sh_degree)
    return _unbatch(out, b, c, batched.squeeze)
