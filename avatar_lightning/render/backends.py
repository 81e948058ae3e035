"""CUDA backends: gsplat (``pip install -e .[gpu]``) and Inria's ``diff_gaussian_rasterization``.

Both are imported lazily so the package works without them. Known deviations from the contract
(DESIGN.md), read from their sources, and how each is handled:

* gsplat 1.5.3 caps α at 0.999 (not 0.99) and stops when ``T·(1−α) <= 1e-4`` (not ``<``). The
  second is a measure-zero tie; the first changes pixels where ``o·exp(−σ) > 0.99``, i.e. only when
  some opacity exceeds 0.99. ``backend="auto"`` therefore uses gsplat only when every opacity is
  ≤ 0.99 (then both backends compute the same α) and the torch backend otherwise. An explicit
  ``backend="gsplat"`` is honoured and warns once when an opacity exceeds 0.99.
* Inria has no principal point (it is always the image centre), culls at a fixed near plane of 0.2
  and only evaluates a Gaussian in the tiles its 3σ square touches (tails with α < ~0.011·o can be
  cut where the contract keeps every α ≥ 1/255). The backend refuses off-centre cameras and
  Gaussians in ``near ≤ z ≤ 0.2``, culls ``z < near`` / ``z > far`` itself, and is never chosen by
  ``"auto"``. Alpha and depth come from a second pass with precomputed colours ``(z, 1, 0)``.
"""

from __future__ import annotations

import importlib.util
import warnings

import einops
import torch
from torch import Tensor

from .raster_torch import ALPHA_MAX
from .rotations import normalize_quat
from .types import Cameras, Gaussians, RenderOutput

INRIA_NEAR = 0.2  # hard-coded in diff_gaussian_rasterization's in_frustum()
_warned = set()


def gsplat_available() -> bool:
    """True when ``gsplat`` is importable (it renders only on CUDA)."""
    return importlib.util.find_spec("gsplat") is not None


def _require_cuda(name: str, t: Tensor) -> None:
    if t.device.type != "cuda":
        raise RuntimeError(f"rasterize(backend={name!r}) renders only CUDA tensors, got device {t.device}; "
                           "use backend='torch' (or 'auto') on CPU")


def gsplat_semantics_match(gaussians: Gaussians) -> bool:
    """Whether gsplat's 0.999 α cap can matter: False iff some opacity exceeds 0.99."""
    return bool(gaussians.opacities.max() <= ALPHA_MAX) if gaussians.opacities.numel() else True


def rasterize_gsplat(gaussians: Gaussians, cameras: Cameras, background: Tensor,
                     sh_degree: int | None = None) -> RenderOutput:
    """gsplat 1.5.3 ``rasterization`` (classic, unpacked) on batched inputs → ``[B·C, ch, H, W]``."""
    _require_cuda("gsplat", gaussians.means)
    if gaussians.means.dtype != torch.float32:
        raise TypeError(f"rasterize(backend='gsplat') renders float32 only, got {gaussians.means.dtype}; "
                        "use backend='torch' for other dtypes")
    try:
        from gsplat import rasterization
    except ImportError as err:
        raise ImportError("rasterize(backend='gsplat') needs gsplat==1.5.3: `pip install -e .[gpu]`") from err
    if not gsplat_semantics_match(gaussians) and "gsplat" not in _warned:
        _warned.add("gsplat")
        warnings.warn("gsplat caps alpha at 0.999 where the contract (and backend='torch') caps it at 0.99; "
                      "with opacities > 0.99 the images differ slightly", stacklevel=3)
    g = gaussians
    deg = g.sh_degree if sh_degree is None else sh_degree
    renders, alphas, _ = rasterization(
        means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities, colors=g.sh,
        viewmats=cameras.world_to_cam, Ks=cameras.K, width=cameras.width, height=cameras.height,
        near_plane=cameras.near, far_plane=cameras.far, eps2d=0.3, sh_degree=deg, packed=False,
        backgrounds=background, render_mode="RGB+D", rasterize_mode="classic", camera_model="pinhole")
    renders = einops.rearrange(renders, "b c h w ch -> (b c) ch h w")
    return RenderOutput(rgb=renders[:, :3], alpha=einops.rearrange(alphas, "b c h w 1 -> (b c) 1 h w"),
                        depth=renders[:, 3:4])


def _inria_check(cameras: Cameras, depths: Tensor) -> None:
    K = cameras.K
    off_x = (K[..., 0, 2] - 0.5 * cameras.width).abs().max().item()
    off_y = (K[..., 1, 2] - 0.5 * cameras.height).abs().max().item()
    if max(off_x, off_y) > 1e-3:
        raise ValueError(f"rasterize(backend='inria'): diff_gaussian_rasterization has no principal point; "
                         f"these cameras are off-centre by up to ({off_x:.3g}, {off_y:.3g}) px. "
                         "Use backend='torch' or 'gsplat'.")
    if K[..., 0, 1].abs().max() > 0:
        raise ValueError("rasterize(backend='inria'): skewed intrinsics (K[0, 1] != 0) are not supported")
    between = (depths >= cameras.near) & (depths <= INRIA_NEAR)
    if cameras.near < INRIA_NEAR and bool(between.any()):
        raise ValueError(f"rasterize(backend='inria'): {int(between.sum())} Gaussians lie between near="
                         f"{cameras.near} and Inria's fixed near plane {INRIA_NEAR}, which it would cull. "
                         "Use backend='torch' or 'gsplat'.")


def _inria_projection(tan_x: float, tan_y: float, znear: float = 0.01, zfar: float = 100.0, **kw) -> Tensor:
    """Inria's ``getProjectionMatrix`` (symmetric frustum, z in [0, 1])."""
    P = torch.zeros(4, 4, **kw)
    P[0, 0], P[1, 1] = 1 / tan_x, 1 / tan_y
    P[3, 2] = 1.0
    P[2, 2] = zfar / (zfar - znear)
    P[2, 3] = -(zfar * znear) / (zfar - znear)
    return P


def _inria_pass(g: Gaussians, b: int, view: Tensor, tan: tuple[float, float], opac: Tensor, deg: int,
                cameras: Cameras, bg: Tensor, **colour) -> Tensor:
    """One ``GaussianRasterizer`` call for avatar ``b`` seen by ``view`` (world_to_cam ``[4, 4]``)."""
    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

    proj = _inria_projection(*tan, device=view.device) @ view
    fields = dict(image_height=cameras.height, image_width=cameras.width, tanfovx=tan[0], tanfovy=tan[1],
                  bg=bg.float(), scale_modifier=1.0, viewmatrix=view.T.contiguous(), projmatrix=proj.T.contiguous(),
                  sh_degree=deg, campos=torch.linalg.inv(view)[:3, 3], prefiltered=False, debug=False,
                  antialiasing=False)
    # releases differ in which settings exist (tanfov*, antialiasing): pass the ones this one declares
    settings = GaussianRasterizationSettings(**{k: fields[k] for k in GaussianRasterizationSettings._fields})
    out = GaussianRasterizer(settings)(  # Inria's CUDA does not normalise quaternions: do it here
        means3D=g.means[b], means2D=torch.zeros_like(g.means[b]), opacities=opac[:, None],
        scales=g.scales[b], rotations=normalize_quat(g.quats[b]), cov3D_precomp=None, **colour)
    return out[0]  # forks differ in what follows the image; the image always comes first


def rasterize_inria(gaussians: Gaussians, cameras: Cameras, background: Tensor,
                    sh_degree: int | None = None) -> RenderOutput:
    """Inria ``GaussianRasterizer``, one call per (avatar, camera), on batched inputs → ``[B·C, ch, H, W]``."""
    g = gaussians
    w2c = cameras.world_to_cam
    depths = torch.einsum("bcj,bnj->bcn", w2c[..., 2, :3], g.means) + w2c[..., 2, 3, None]  # [B,C,N]
    _inria_check(cameras, depths)
    _require_cuda("inria", gaussians.means)
    if importlib.util.find_spec("diff_gaussian_rasterization") is None:
        raise ImportError("rasterize(backend='inria') needs Inria's diff_gaussian_rasterization, which this "
                          "project does not install; use backend='gsplat' (`pip install -e .[gpu]`)")
    deg = g.sh_degree if sh_degree is None else sh_degree
    outs = []
    for b, c in ((b, c) for b in range(w2c.shape[0]) for c in range(w2c.shape[1])):
        z = depths[b, c]
        # cull z < near / z > far the contract's way: opacity 0 never reaches α >= 1/255
        opac = torch.where((z >= cameras.near) & (z <= cameras.far), g.opacities[b], torch.zeros_like(z))
        tan = (0.5 * cameras.width / cameras.K[b, c, 0, 0].item(), 0.5 * cameras.height / cameras.K[b, c, 1, 1].item())
        view = w2c[b, c].float()
        rgb = _inria_pass(g, b, view, tan, opac, deg, cameras, background[b, c],
                          shs=g.sh[b, : (deg + 1) ** 2].contiguous(), colors_precomp=None)
        aux = _inria_pass(g, b, view, tan, opac, deg, cameras, torch.zeros_like(background[b, c]), shs=None,
                          colors_precomp=torch.stack([z, torch.ones_like(z), torch.zeros_like(z)], -1))
        outs.append((rgb, aux[1:2], aux[0:1]))
    return RenderOutput(*(torch.stack([o[i] for o in outs]) for i in range(3)))
