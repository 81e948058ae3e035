"""Few-shot frame selection (SynShot): Fibonacci counts and progressive farthest-point sampling."""

from __future__ import annotations

import pytest
import torch

from data_modules.few_shot import farthest_point_sampling, fibonacci_counts, select_few_shot


def slow_fps(points: list[list[float]], k: int, start: int) -> list[int]:
    """Obviously-correct reference: each pick maximises the distance to its nearest earlier pick."""
    def dist(a, b):
        return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5

    picks = [start]
    while len(picks) < k:
        best = max((i for i in range(len(points)) if i not in picks),
                   key=lambda i: (min(dist(points[i], points[p]) for p in picks), -i))
        picks.append(best)
    return picks


def test_fibonacci_counts_are_synshots_1_to_987():
    counts = fibonacci_counts()
    assert counts[:6] == [1, 2, 3, 5, 8, 13] and counts[-1] == 987 and len(counts) == 15


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fps_matches_reference(seed):
    pts = torch.randn(40, 5, generator=torch.Generator().manual_seed(seed))
    picks = farthest_point_sampling(pts, 12)
    assert picks.tolist() == slow_fps(pts.tolist(), 12, int(picks[0]))
    assert len(set(picks.tolist())) == 12
    # the default start is the point nearest the mean
    assert int(picks[0]) == int((pts - pts.mean(0)).norm(dim=1).argmin())


def test_fps_is_progressive_and_reaches_outliers():
    pts = torch.randn(50, 3, generator=torch.Generator().manual_seed(3))
    pts[17] = 50.0  # an extreme expression
    big = farthest_point_sampling(pts, 20)
    for k in (1, 2, 5, 13):
        assert farthest_point_sampling(pts, k).tolist() == big[:k].tolist()
    assert int(big[1]) == 17


def test_select_and_errors():
    expr = torch.randn(10, 4)
    assert select_few_shot(expr, None).tolist() == list(range(10))
    assert select_few_shot(expr, 10).sort().values.tolist() == list(range(10))
    with pytest.raises(ValueError, match="actor_3: few_shot=11 but the training split has 10 frames"):
        select_few_shot(expr, 11, "actor_3")
    with pytest.raises(ValueError, match="k=11 of N=10"):
        farthest_point_sampling(expr, 11)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        farthest_point_sampling(torch.randn(3), 1)
