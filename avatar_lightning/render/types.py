"""The three dataclasses of the render contract: ``Gaussians``, ``Cameras``, ``RenderOutput``."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from .sh import sh_degree_from_bases


def _check(name: str, t: Tensor, trailing: tuple[int | None, ...], lead: tuple[int, ...] | None) -> None:
    """Raise a ValueError naming ``name`` unless ``t`` is ``[*lead, *trailing]`` (None = any)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() < len(trailing) or any(
            e is not None and s != e for s, e in zip(t.shape[t.dim() - len(trailing):], trailing, strict=True)):
        want = ", ".join("*" if e is None else str(e) for e in trailing)
        raise ValueError(f"{name}: expected shape [..., {want}], got {tuple(t.shape)}")
    if lead is not None and tuple(t.shape[: t.dim() - len(trailing)]) != lead:
        raise ValueError(f"{name}: leading dims {tuple(t.shape[: t.dim() - len(trailing)])} do not match {lead}")


@dataclass
class Gaussians:
    """A set of 3D Gaussians, optionally batched (one set per avatar).

    Unbatched shapes are shown; a batch of avatars adds a leading ``B`` to every field
    (``means [B, N, 3]`` …) and is rendered with cameras ``[B, C, ...]``.

    Attributes:
        means: Tensor  # [N, 3] world-space centres.
        quats: Tensor  # [N, 4] wxyz rotations, need not be normalised.
        scales: Tensor  # [N, 3] linear standard deviations along the local axes (> 0).
        opacities: Tensor  # [N] in [0, 1].
        sh: Tensor  # [N, K, 3] SH coefficients, K >= (degree+1)², degree = isqrt(K) - 1.
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh: Tensor

    def __post_init__(self) -> None:
        _check("Gaussians.means", self.means, (3,), None)
        lead = tuple(self.means.shape[:-1])
        if len(lead) not in (1, 2):
            raise ValueError(f"Gaussians.means: expected [N, 3] or [B, N, 3], got {tuple(self.means.shape)}")
        _check("Gaussians.quats", self.quats, (4,), lead)
        _check("Gaussians.scales", self.scales, (3,), lead)
        _check("Gaussians.opacities", self.opacities, (), lead)
        _check("Gaussians.sh", self.sh, (None, 3), lead)
        sh_degree_from_bases(self.sh.shape[-2])

    @property
    def batched(self) -> bool:
        """True when every field carries a leading avatar dimension ``B``."""
        return self.means.dim() == 3

    @property
    def num_gaussians(self) -> int:
        """``N``."""
        return self.means.shape[-2]

    @property
    def sh_degree(self) -> int:
        """SH degree implied by ``K``: ``isqrt(K) - 1`` (at most 3)."""
        return sh_degree_from_bases(self.sh.shape[-2])

    def __len__(self) -> int:
        return self.num_gaussians

    def __getitem__(self, index) -> Gaussians:
        """Select Gaussians along ``N`` (index, slice, bool mask or index tensor); keeps ``B``."""
        if self.batched:
            return Gaussians(**{f.name: getattr(self, f.name)[:, index] for f in fields(self)})
        return Gaussians(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def map(self, fn) -> Gaussians:
        """Apply ``fn`` (Tensor -> Tensor) to every field, e.g. ``g.map(lambda t: t.to(dev))``."""
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, *args, **kwargs) -> Gaussians:
        """``Tensor.to`` on every field."""
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> Gaussians:
        """Detached copy (shares storage)."""
        return self.map(Tensor.detach)

    @staticmethod
    def cat(items: list[Gaussians]) -> Gaussians:
        """Concatenate along ``N`` (e.g. face + hair parts). All items must share ``B`` and ``K``."""
        if not items:
            raise ValueError("Gaussians.cat: empty list")
        dim = 1 if items[0].batched else 0
        return Gaussians(**{f.name: torch.cat([getattr(g, f.name) for g in items], dim=dim)
                            for f in fields(Gaussians)})


@dataclass
class Cameras:
    """Pinhole cameras, OpenCV convention (x right, y down, z forward).

    Attributes:
        K: Tensor  # [C, 3, 3] intrinsics in pixels (fx, fy, cx, cy), or [B, C, 3, 3] per avatar.
        world_to_cam: Tensor  # [C, 4, 4] extrinsics, or [B, C, 4, 4].
        width: image width W in pixels.
        height: image height H in pixels.
        near: Gaussians with camera z < near are culled.
        far: Gaussians with camera z > far are culled.
    """

    K: Tensor
    world_to_cam: Tensor
    width: int
    height: int
    near: float = 0.01
    far: float = 1e10

    def __post_init__(self) -> None:
        _check("Cameras.K", self.K, (3, 3), None)
        lead = tuple(self.K.shape[:-2])
        if len(lead) not in (1, 2):
            raise ValueError(f"Cameras.K: expected [C, 3, 3] or [B, C, 3, 3], got {tuple(self.K.shape)}")
        _check("Cameras.world_to_cam", self.world_to_cam, (4, 4), lead)
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"Cameras: width/height must be positive, got {self.width}x{self.height}")
        if not 0 < self.near < self.far:
            raise ValueError(f"Cameras: need 0 < near < far, got near={self.near}, far={self.far}")

    @property
    def batched(self) -> bool:
        """True for ``[B, C, ...]`` cameras."""
        return self.K.dim() == 4

    @property
    def num_cameras(self) -> int:
        """``C``."""
        return self.K.shape[-3]

    @property
    def campos(self) -> Tensor:
        """Camera centres in world space.  ``[..., C, 3]``"""
        rot = self.world_to_cam[..., :3, :3]
        return -(rot.transpose(-1, -2) @ self.world_to_cam[..., :3, 3:]).squeeze(-1)

    def to(self, *args, **kwargs) -> Cameras:
        """``Tensor.to`` on ``K`` and ``world_to_cam``."""
        return replace(self, K=self.K.to(*args, **kwargs), world_to_cam=self.world_to_cam.to(*args, **kwargs))

    def __getitem__(self, index) -> Cameras:
        """Select cameras along ``C`` (keeps ``B`` when batched)."""
        if self.batched:
            return replace(self, K=self.K[:, index], world_to_cam=self.world_to_cam[:, index])
        return replace(self, K=self.K[index], world_to_cam=self.world_to_cam[index])


@dataclass
class RenderOutput:
    """What every backend returns. Shapes for unbatched input; batched input adds a leading ``B``.

    Attributes:
        rgb: Tensor  # [C, 3, H, W] = Σ αT·colour + T·background.
        alpha: Tensor  # [C, 1, H, W] = 1 − T (accumulated opacity).
        depth: Tensor  # [C, 1, H, W] = Σ αT·z (camera z, not normalised by alpha).
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
