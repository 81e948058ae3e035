"""Few-shot frame selection: progressive farthest-point sampling in 3DMM expression space.

SynShot (Sec. 4, "Evaluation") selects K training frames, K from the Fibonacci numbers
{F_n}_{n=1..16} = {1, ..., 987}, by progressive farthest-point sampling in expression space, and
evaluates on the last 600 frames of each INSTA sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fibonacci_counts(max_count: int = 987) -> list[int]:
    """The distinct Fibonacci numbers 1, 2, 3, 5, ... up to ``max_count`` (SynShot's frame counts).

    F_1 = F_2 = 1, so the 16 terms F_1..F_16 give 15 distinct counts ending at 987.
    """
    counts, a, b = [], 1, 2
    while a <= max_count:
        counts.append(a)
        a, b = b, a + b
    return counts


def farthest_point_sampling(points: Tensor, k: int, start: int | None = None) -> Tensor:
    """Progressive farthest-point sampling: each pick maximises its distance to those already picked.

    The order is progressive: the first ``j`` picks of a ``k``-selection are the ``j``-selection,
    so the few-shot training sets for increasing ``k`` are nested (as in SynShot's frame sweep).

    Args:
        points: Tensor  # [N, D] e.g. expression coefficients per frame
        k: number of points to pick, 1 <= k <= N.
        start: index of the first pick; by default the point nearest the mean (the most
            "average" expression), which makes the selection deterministic.

    Returns:
        Tensor  # [k] long, distinct indices in pick order
    """
    if points.ndim != 2:
        raise ValueError(f"points must be [N, D], got {list(points.shape)}")
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"cannot pick k={k} of N={n} points")
    pts = points.double()
    if start is None:
        start = int(torch.cdist(pts.mean(0, keepdim=True), pts)[0].argmin())
    picks = torch.empty(k, dtype=torch.long, device=points.device)
    picks[0] = start
    # distance of every point to its nearest pick so far; picked points have 0 and are never re-picked
    nearest = torch.cdist(pts[start : start + 1], pts)[0]
    for j in range(1, k):
        nxt = int(nearest.argmax())
        picks[j] = nxt
        nearest = torch.minimum(nearest, torch.cdist(pts[nxt : nxt + 1], pts)[0])
    return picks


def select_few_shot(expr: Tensor, k: int | None, where: str = "") -> Tensor:
    """Indices of the ``k`` frames to train on (all frames, in order, when ``k`` is None).

    Args:
        expr: Tensor  # [N, E] expression coefficients of the candidate training frames
        k: few-shot count, or None for all.
        where: the sequence, named in the error when it has fewer than ``k`` training frames.

    Returns:
        Tensor  # [k] or [N] long
    """
    if k is None:
        return torch.arange(expr.shape[0])
    if not 1 <= k <= expr.shape[0]:
        raise ValueError(f"{where}: few_shot={k} but the training split has {expr.shape[0]} frames")
    return farthest_point_sampling(expr, k)
