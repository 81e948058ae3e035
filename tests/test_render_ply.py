"""3DGS PLY export (Inria layout, FORMATS.md) and its reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar_lightning.render import Gaussians, load_ply, save_ply
from avatar_lightning.render.ply import PLY_FIELDS


def scene(n: int = 30, k: int = 16) -> Gaussians:
    gen = torch.Generator().manual_seed(0)
    return Gaussians(means=torch.randn(n, 3, generator=gen), quats=torch.randn(n, 4, generator=gen),
                     scales=0.01 + torch.rand(n, 3, generator=gen),
                     opacities=0.02 + 0.96 * torch.rand(n, generator=gen),
                     sh=torch.randn(n, k, 3, generator=gen))


def header(path) -> list[str]:
    lines = []
    with open(path, "rb") as f:
        while (line := f.readline().decode().strip()) != "end_header":
            lines.append(line)
    return lines


def test_header_is_the_inria_layout(tmp_path):
    path = tmp_path / "g.ply"
    save_ply(path, scene(7))
    lines = header(path)
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 7"]
    assert lines[3:] == [f"property float {name}" for name in PLY_FIELDS]
    assert PLY_FIELDS[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert PLY_FIELDS[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert PLY_FIELDS[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert path.stat().st_size == len("\n".join(lines + ["end_header"]) + "\n") + 7 * 62 * 4
    assert [p.name for p in tmp_path.iterdir()] == ["g.ply"]  # atomic write leaves no temp file


def test_round_trip(tmp_path):
    g = scene()
    save_ply(tmp_path / "g.ply", g)
    back = load_ply(tmp_path / "g.ply")
    for name in ("means", "quats", "scales", "opacities", "sh"):
        torch.testing.assert_close(getattr(back, name), getattr(g, name), rtol=1e-5, atol=1e-6)


def test_values_are_logit_log_wxyz_and_channel_major(tmp_path):
    g = scene(3, k=4)
    g.sh.zero_()
    g.sh[:, 1, 0] = 1.0  # R of the first higher-order coefficient -> f_rest_0
    g.sh[:, 2, 1] = 2.0  # G of the second -> f_rest_15 + 1
    path = tmp_path / "g.ply"
    save_ply(path, g)
    raw = np.fromfile(path, dtype="<f4", offset=len("\n".join(header(path) + ["end_header"]) + "\n"))
    raw = torch.from_numpy(raw.reshape(3, 62))
    col = {name: raw[:, i] for i, name in enumerate(PLY_FIELDS)}
    assert torch.all(col["f_rest_0"] == 1) and torch.all(col["f_rest_16"] == 2)
    assert sum(int(col[f"f_rest_{i}"].abs().sum() > 0) for i in range(45)) == 2  # degree 1 padded with zeros
    torch.testing.assert_close(col["opacity"], torch.logit(g.opacities))
    torch.testing.assert_close(col["scale_1"], torch.log(g.scales[:, 1]))
    torch.testing.assert_close(col["rot_0"], g.quats[:, 0])
    assert load_ply(path).sh.shape == (3, 16, 3)


def test_reader_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    with pytest.raises(ValueError, match="bad.ply.*binary_little_endian"):
        load_ply(bad)
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nend_header\n\0\0\0\0")
    with pytest.raises(ValueError, match="missing vertex properties"):
        load_ply(bad)
    with pytest.raises(ValueError, match="unbatched"):
        save_ply(tmp_path / "b.ply", scene().map(lambda t: t[None]))
