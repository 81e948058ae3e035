"""Avatar outputs: MP4 round trip, metrics.json validation, and atomicity under crashes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_lightning.export import iter_rendered, read_video, side_by_side, write_metrics, write_video


def ramp_frames(n: int, h: int = 24, w: int = 32) -> torch.Tensor:
    """Flat frames whose grey level rises with the frame index (easy to check after lossy coding)."""
    return torch.linspace(0.1, 0.9, n)[:, None, None, None].expand(n, 3, h, w).contiguous()


def test_video_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "turntable.mp4"
    assert write_video(path, ramp_frames(6), fps=10) == 6
    back = read_video(path)
    assert back.shape == (6, 3, 24, 32)
    assert torch.allclose(back.mean(dim=(1, 2, 3)), torch.linspace(0.1, 0.9, 6), atol=0.03)
    assert [p.name for p in path.parent.iterdir()] == ["turntable.mp4"]  # no temp file left


def test_video_odd_sizes_and_arrays(tmp_path: Path) -> None:
    frames = [np.full((15, 21, 3), 128, np.uint8) for _ in range(3)]
    write_video(tmp_path / "odd.mp4", frames)
    assert read_video(tmp_path / "odd.mp4").shape == (3, 3, 16, 22)  # padded to even sides for yuv420p


def test_crashed_video_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "expr.mp4"
    write_video(path, ramp_frames(3))
    old = path.read_bytes()

    def crashing_frames():
        yield from ramp_frames(4)
        raise RuntimeError("renderer died")

    with pytest.raises(RuntimeError, match="renderer died"):
        write_video(path, crashing_frames())
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expr.mp4"]
    fresh = tmp_path / "never.mp4"
    with pytest.raises(RuntimeError):
        write_video(fresh, crashing_frames())
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["expr.mp4"]


def test_bad_frames_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "a.mp4", [])
    with pytest.raises(ValueError, match="frame 1"):
        write_video(tmp_path / "b.mp4", [torch.zeros(3, 8, 8), torch.zeros(3, 8, 10)])
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        write_video(tmp_path / "c.mp4", [torch.zeros(8, 8)])
    assert list(tmp_path.iterdir()) == []


def test_metrics_json(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    written = write_metrics(path, {"novel_view": {"psnr": torch.tensor(25.5), "ssim": np.float32(0.5)}, "n": 3})
    assert json.loads(path.read_text()) == written == {"n": 3, "novel_view": {"psnr": 25.5, "ssim": 0.5}}
    with pytest.raises(ValueError, match=r"metrics\.novel_view\.psnr is nan"):
        write_metrics(path, {"novel_view": {"psnr": float("nan")}})
    with pytest.raises(TypeError, match=r"metrics\.x"):
        write_metrics(path, {"x": object()})
    assert json.loads(path.read_text()) == written  # failed writes left the old file


def test_iter_rendered_is_lazy_and_detached() -> None:
    calls: list[int] = []
    w = torch.ones(1, requires_grad=True)

    def render(i: int) -> torch.Tensor:
        calls.append(i)
        return (w * i / 10).expand(3, 4, 4)

    gen = iter_rendered(render, 3)
    assert calls == []
    frames = list(gen)
    assert calls == [0, 1, 2] and not any(f.requires_grad for f in frames)


def test_side_by_side() -> None:
    a, b = torch.zeros(3, 4, 5), torch.ones(3, 4, 6)
    out = side_by_side(a, b, pad=2, pad_value=0.5)
    assert out.shape == (3, 4, 13)
    assert out[:, :, 5:7].eq(0.5).all() and out[:, :, 7:].eq(1).all()
    with pytest.raises(ValueError):
        side_by_side(a, torch.zeros(3, 5, 5))
