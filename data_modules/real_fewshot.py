"""Few-shot splits of real monocular sequences (INSTA layout, the tracker's output).

A monocular sequence shows one subject in T frames, each with its own camera (the tracked head pose
is in the camera: INSTA and metrical-tracker keep FLAME's global pose at zero), expression and
jaw/eye pose. The few-shot inputs are K of those frames, served as the V = K views of **one**
schema sample (:class:`~avatar_lightning.lit.fewshot_data.FewShotSplit`): the inversion fits one
sample's views every step. The rigid motion between the frames is exact (it is in the cameras),
but the batch schema holds one expression per sample (``expr [B, E]``, ``pose [B, 5, 3]``), so the
input frames share the **mean** of their expressions and jaw/eye poses: exact for one photo, close
for consecutive video frames (the default inputs are the first K), and the spread is logged.

The texture (``uv_texture``) is back-projected from each input frame through its own posed mesh
(its own expression and jaw) and merged by visibility weight; no other frame contributes. Held-out
frames keep their own parameters and get ``uv_position`` / ``uv_expression`` derived from them and
the inputs' texture as ``uv_texture``, so an evaluation item carries nothing of its own image but
the target it is scored against.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from avatar_lightning.head.texture import backproject_texture
from avatar_lightning.head.uv import expression_map, position_map, uv_rasterize
from data_modules.real_common import FlameParams, Sample, load_view_pixels
from data_modules.tracking_noise import NoisyTracking, TrackingNoise

log = logging.getLogger(__name__)


def fewshot_frames(n: int, inputs: int | Sequence[int], n_eval: int, where: str = "sequence"
                   ) -> tuple[list[int], list[int]]:
    """Positions (0-based, in time order) of the input frames and of the held-out frames.

    Args:
        n: frames in the sequence.
        inputs: K, the first K frames before the held-out ones (fewer when fewer frames are left:
            a single photo gets K = 1, said in the log); or explicit positions.
        n_eval: held-out frames: the last ``n_eval`` (INSTA's protocol), minus any explicit input.
        where: names the sequence in messages.

    Returns:
        (input positions, held-out positions)

    Raises:
        ValueError: ``n_eval`` outside [0, n), K < 1, no frame left for the inputs, or an explicit
            position outside the sequence or repeated.
    """
    if not 0 <= n_eval < n:
        raise ValueError(f"{where}: {n_eval} held-out frames must be in [0, {n}) for a sequence of {n} frames "
                         "(at least one frame must remain as an input)")
    held = list(range(n - n_eval, n))
    if isinstance(inputs, int):
        if inputs < 1:
            raise ValueError(f"{where}: fewshot inputs must be ≥ 1, got {inputs}")
        k = min(inputs, n - n_eval)
        if k < inputs:
            log.info("%s: %d frame(s) before the %d held-out ones: %d input frame(s) instead of %d",
                     where, n - n_eval, n_eval, k, inputs)
        return list(range(k)), held
    picks = [int(i) for i in inputs]
    if not picks or len(set(picks)) != len(picks) or any(not 0 <= i < n for i in picks):
        raise ValueError(f"{where}: input frames {picks} must be distinct positions in [0, {n})")
    return picks, [i for i in held if i not in picks]


def mean_params(flames: Sequence[FlameParams]) -> FlameParams:
    """One set of parameters for frames served as views of one sample: the mean of each field
    (axis-angle poses are averaged as vectors: the frames' jaw and eye rotations are small)."""
    def mean(key: str) -> Tensor:
        return torch.stack([getattr(f, key) for f in flames]).mean(0)

    return FlameParams(shape=mean("shape"), expr=mean("expr"), pose=mean("pose"), translation=mean("translation"))


class UVMaps:
    """The prior's UV inputs for real frames: one head model and UV raster, built once.

    Args:
        head: :class:`~avatar_lightning.head.HeadModel` with the data's S and E.
        uv_size: side h = w of the maps.
    """

    def __init__(self, head, uv_size: int) -> None:
        self.head = head
        self.raster = uv_rasterize(head.uv_coords, head.uv_faces, uv_size)

    @torch.no_grad()
    def derive(self, shape: Tensor, expr: Tensor) -> dict[str, Tensor]:
        """``uv_position`` (neutral identity, x_verts) and ``uv_expression`` (x_exp) of ``shape`` [S]
        and ``expr`` [E]; each ``[3, h, w]``."""
        s, e = shape[None].to(self.head.v_template), expr[None].to(self.head.v_template)
        neutral = self.head.canonical(s, torch.zeros_like(e))[0]
        return {"uv_position": position_map(self.raster, neutral, self.head.faces).to(shape.dtype),
                "uv_expression": expression_map(self.head, self.raster, e)[0].to(shape.dtype)}

    @torch.no_grad()
    def texture(self, flames: Sequence[FlameParams], images: Tensor, masks: Tensor, K: Tensor,
                world_to_cam: Tensor) -> Tensor:
        """Texture back-projected from several frames, each through its own posed mesh.

        Args:
            flames: the F frames' parameters.
            images: Tensor  # [F, 3, H, W]
            masks: Tensor  # [F, 1, H, W] foreground (texels landing outside are ignored)
            K: Tensor  # [F, 3, 3]
            world_to_cam: Tensor  # [F, 4, 4] OpenCV

        Returns:
            Tensor  # [3, h, w] visibility-weighted mean colour over the frames (0 where none sees it)
        """
        return merged_texture(self.head, self.raster, flames, images, masks, K, world_to_cam)


@torch.no_grad()
def merged_texture(head, raster, flames: Sequence[FlameParams], images: Tensor, masks: Tensor, K: Tensor,
                   world_to_cam: Tensor) -> Tensor:
    """F frames back-projected onto UV, each through its own posed mesh, merged by visibility weight.

    Args:
        head: :class:`~avatar_lightning.head.HeadModel`.
        raster: its UV raster (the output's side).
        flames: the F frames' parameters.
        images: Tensor  # [F, C, H, W] (RGB or per-pixel features)
        masks: Tensor  # [F, 1, H, W] foreground (texels landing outside are ignored)
        K: Tensor  # [F, 3, 3]
        world_to_cam: Tensor  # [F, 4, 4] OpenCV

    Returns:
        Tensor  # [C, h, w] weighted mean over the frames, 0 where no frame sees a texel.
    """
    acc, wsum = 0.0, 0.0
    for k, f in enumerate(flames):
        s = f.shape[None].to(head.v_template)
        out = head(s, f.expr[None].to(s), f.pose[None].to(s), f.translation[None].to(s))
        baked = backproject_texture(raster, out.vertices[0], head.faces, images[k:k + 1].to(s),
                                    K[k:k + 1].to(s), world_to_cam[k:k + 1].to(s), masks[k:k + 1].to(s))
        acc, wsum = acc + baked.texture * baked.weight, wsum + baked.weight
    return (acc / torch.as_tensor(wsum).clamp_min(1e-8)).to(images.dtype)


def _frame_params(sample: Sample, noise: TrackingNoise | None) -> FlameParams:
    f = sample.flame
    if noise is None:
        return f
    noisy = noise.frame({"shape": f.shape, "expr": f.expr, "pose": f.pose, "translation": f.translation},
                        sample.identity, sample.frame)
    return FlameParams(shape=noisy["shape"], expr=noisy["expr"], pose=noisy["pose"], translation=noisy["translation"])


def input_sample(samples: Sequence[Sample], factor: int, background: Tensor, size: tuple[int, int] | None,
                 maps: UVMaps | None, noise: TrackingNoise | None = None) -> dict[str, Tensor]:
    """The few-shot input: every view of the input frames as the V views of one sample (B = 1).

    Args:
        samples: the input frames (monocular: one view each).
        factor: image down-sampling factor.
        background: Tensor  # [3] the images are composited on it.
        size: (H, W) every view is brought to (the dataset's common size).
        maps: builds the UV inputs; None leaves the ``uv_*`` keys out.
        noise: simulated tracking error applied to each frame's parameters (and so to the maps).

    Returns:
        Schema batch with B = 1 and V = the input views; ``expr`` / ``pose`` / ``translation`` are the
        frames' mean (module docstring), ``frame`` the first input frame's number.
    """
    views = [(s, v) for s in samples for v in s.views]
    pixels = [load_view_pixels(v, factor, background, None, size) for _, v in views]
    flames = [_frame_params(s, noise) for s, _ in views]
    shared = mean_params(flames)
    item = {"image": torch.stack([p.image for p in pixels]), "mask": torch.stack([p.mask for p in pixels]),
            "K": torch.stack([p.K for p in pixels]), "world_to_cam": torch.stack([v.world_to_cam for _, v in views]),
            "shape": shared.shape, "expr": shared.expr, "pose": shared.pose, "translation": shared.translation,
            "identity": torch.tensor(samples[0].identity), "frame": torch.tensor(samples[0].frame),
            "background": background}
    if len(flames) > 1:
        spread_e = max(float((f.expr - shared.expr).abs().max()) for f in flames)
        spread_j = max(float((f.pose[2] - shared.pose[2]).norm()) for f in flames)
        log.info("few-shot inputs (frames %s) share their mean expression: largest coefficient deviation %.3f, "
                 "jaw %.3f rad", [s.frame for s in samples], spread_e, spread_j)
    if maps is not None:
        item["uv_texture"] = maps.texture(flames, item["image"], item["mask"], item["K"], item["world_to_cam"])
        item.update(maps.derive(shared.shape, shared.expr))
    return {k: v[None] for k, v in item.items()}


class HeldOutFrames(Dataset):
    """Held-out frames as schema samples (no batch dim) with the UV inputs the prior reads.

    Args:
        base: the frames' items without ``uv_*`` keys (e.g. a ``RealHeadDataset`` with ``uv=None``).
        texture: Tensor  # [3, h, w] the subject's texture from the input frames, served as every
            item's ``uv_texture``; None with ``maps`` None.
        maps: derives ``uv_position`` / ``uv_expression`` from each item's own parameters; None: no UV keys.
    """

    def __init__(self, base: Dataset, texture: Tensor | None, maps: UVMaps | None) -> None:
        self.base, self.texture, self.maps = base, texture, maps

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = dict(self.base[index])
        if self.maps is not None:
            item.update(self.maps.derive(item["shape"], item["expr"]), uv_texture=self.texture)
        return item


def held_out_frames(base: Dataset, inputs: dict[str, Tensor], maps: UVMaps | None,
                    noise: TrackingNoise | None = None) -> Dataset:
    """:class:`HeldOutFrames` over ``base`` (with ``noise`` applied to each frame's parameters first),
    serving the texture of the input batch ``inputs``."""
    if noise is not None:
        base = NoisyTracking(base, noise)
    return HeldOutFrames(base, inputs["uv_texture"][0] if maps is not None else None, maps)
