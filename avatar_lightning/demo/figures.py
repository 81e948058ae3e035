"""The demo's figures: target beside every method's render, and the inversion's loss curves (SynShot Fig. 11)."""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from avatar_lightning.demo.methods import FIGURE_SPLITS, Fit
from avatar_lightning.demo.tables import methods_in
from avatar_lightning.viz import enlarge, hstack_images, line_plot, make_grid


def side_by_side(fits: list[Fit], identities: list[int]) -> Tensor:
    """Rows per identity: target | each method's render (table order) for a novel view, then for a novel
    expression. Identities some method has no render of (a resumed fit) are left out."""
    methods = methods_in(fits)
    tiles = []
    for identity in identities:
        by_method = {f.method: f for f in fits if f.identity == identity}
        if len(by_method) != len(methods):
            continue
        for split in FIGURE_SPLITS:
            if all(split in f.renders for f in by_method.values()):
                tiles += [by_method[methods[0]].targets[split], *(by_method[m].renders[split] for m in methods)]
    if not tiles:
        return torch.ones(3, 8, 8)
    scale = max(1, 128 // tiles[0].shape[-1])  # small CPU renders: enlarge (nearest) to be readable
    return make_grid(enlarge(torch.stack(tiles), scale), ncol=2 * (1 + len(methods)))


def loss_curves(fits: list[Fit], size: tuple[int, int] = (640, 240)) -> Image.Image:
    """SynShot Fig. 11 from the logged inversion losses: stage 1 (left) and stage 2 (right) panels."""
    inversions = [f for f in fits if f.method == "inversion"]
    panels = [line_plot({f"id {f.identity}": [(s, v) for s, st, v in f.losses if st == stage] for f in inversions},
                        title=f"stage {stage}: {'E_id' if stage == 1 else 'decoders + regressors'}",
                        size=(size[0] // 2, size[1]))
              for stage in (1, 2)]
    return hstack_images(panels)
