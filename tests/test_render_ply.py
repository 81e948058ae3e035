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
    with pytest.raises(ValueError, match=r"bad.ply\): missing vertex properties \['y', 'z', 'f_dc_0'"):
        load_ply(bad)
    bad.write_bytes(b"PLY\nformat binary_little_endian 1.0\nend_header\n")
    with pytest.raises(ValueError, match=r"bad.ply\): damaged header: .*expected 'ply'"):
        load_ply(bad)
    with pytest.raises(ValueError, match="unbatched"):
        save_ply(tmp_path / "b.ply", scene().map(lambda t: t[None]))


# --- reading any valid 3DGS PLY, written here by hand (not by the code under test) -------------

def inria_names(n_rest: int) -> list[str]:
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_by_hand(path, names: list[str], rows: np.ndarray, fmt: str = "binary_little_endian",
                  types: dict[str, str] | None = None, before: str = "", after: str = "",
                  body_before: bytes = b"", body_after: bytes = b"") -> None:
    """A PLY with one float column per name (``types`` overrides), optional elements around ``vertex``."""
    types = types or {}
    props = "".join(f"property {types.get(p, 'float')} {p}\n" for p in names)
    head = (f"ply\nformat {fmt} 1.0\ncomment written by hand\n{before}"
            f"element vertex {len(rows)}\n{props}{after}end_header\n")
    if fmt == "ascii":
        body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in rows).encode()
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        body = rows.astype(order + "f4").tobytes()
    path.write_bytes(head.encode() + body_before + body + body_after)


def expected_sh(rows: np.ndarray, names: list[str], n_rest: int) -> np.ndarray:
    """``[N, 1 + n_rest/3, 3]`` from f_dc and channel-major f_rest, by index arithmetic."""
    col = {p: rows[:, i] for i, p in enumerate(names)}
    k = n_rest // 3
    sh = np.zeros((len(rows), 1 + k, 3), dtype=np.float32)
    for c in range(3):
        sh[:, 0, c] = col[f"f_dc_{c}"]
        for j in range(k):
            sh[:, 1 + j, c] = col[f"f_rest_{c * k + j}"]
    return sh


@pytest.mark.parametrize("n_rest", [0, 9, 24, 45])
@pytest.mark.parametrize("fmt", ["binary_little_endian", "binary_big_endian", "ascii"])
def test_reads_every_sh_degree_and_format(tmp_path, n_rest, fmt):
    names = inria_names(n_rest)
    rows = np.random.default_rng(n_rest).normal(size=(5, len(names))).astype(np.float32)
    write_by_hand(tmp_path / "g.ply", names, rows, fmt=fmt)
    g = load_ply(tmp_path / "g.ply")
    col = {p: rows[:, i] for i, p in enumerate(names)}
    assert g.sh.shape == (5, 1 + n_rest // 3, 3) and g.sh_degree == {0: 0, 9: 1, 24: 2, 45: 3}[n_rest]
    np.testing.assert_allclose(g.sh.numpy(), expected_sh(rows, names, n_rest), rtol=1e-6)
    np.testing.assert_allclose(g.means.numpy(), rows[:, :3], rtol=1e-6)
    np.testing.assert_allclose(g.quats[:, 0].numpy(), col["rot_0"], rtol=1e-6)
    np.testing.assert_allclose(g.scales[:, 2].numpy(), np.exp(col["scale_2"]), rtol=1e-5)
    np.testing.assert_allclose(g.opacities.numpy(), 1 / (1 + np.exp(-col["opacity"])), rtol=1e-5)


def test_any_property_order_other_elements_and_extra_properties(tmp_path):
    names = inria_names(9)
    rows = np.random.default_rng(1).normal(size=(4, len(names))).astype(np.float32)
    write_by_hand(tmp_path / "plain.ply", names, rows)
    perm = np.random.default_rng(2).permutation(len(names))
    shuffled = [names[i] for i in perm] + ["extra"]
    rows_shuffled = np.concatenate([rows[:, perm], np.full((4, 1), 7, np.float32)], axis=1)
    # a 2-row 'meta' element (one uchar, one float) before vertex, a face with a list after it
    before = "element meta 2\nproperty uchar tag\nproperty float w\n"
    after = "element face 1\nproperty list uchar int vertex_indices\n"
    meta = np.array([(1, 0.5), (2, 1.5)], dtype=[("tag", "u1"), ("w", "<f4")]).tobytes()
    face = np.uint8(3).tobytes() + np.array([0, 1, 2], "<i4").tobytes()
    write_by_hand(tmp_path / "mixed.ply", shuffled, rows_shuffled, before=before, after=after,
                  body_before=meta, body_after=face)
    a, b = load_ply(tmp_path / "plain.ply"), load_ply(tmp_path / "mixed.ply")
    for name in ("means", "quats", "scales", "opacities", "sh"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=0, atol=0)
    np.testing.assert_allclose(a.sh.numpy(), expected_sh(rows, names, 9), rtol=1e-6)


def test_double_properties_are_read(tmp_path):
    names = inria_names(0)
    rows = np.random.default_rng(3).normal(size=(2, len(names)))
    head = ("ply\nformat binary_little_endian 1.0\nelement vertex 2\n"
            + "".join(f"property double {p}\n" for p in names) + "end_header\n")
    (tmp_path / "d.ply").write_bytes(head.encode() + rows.astype("<f8").tobytes())
    np.testing.assert_allclose(load_ply(tmp_path / "d.ply").means.numpy(), rows[:, :3], rtol=1e-6)


def _damaged(tmp_path, kind: str):
    names = inria_names(45)
    rows = np.zeros((4, len(names)), np.float32)
    path = tmp_path / f"{kind}.ply"
    if kind == "truncated":
        write_by_hand(path, names, rows)
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "no_end_header":
        path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\n")
    elif kind == "int_property":  # x and rot_3 declared int: integers cannot hold positions or rotations
        props = "".join(f"property {'int' if p in ('x', 'rot_3') else 'float'} {p}\n" for p in names)
        path.write_bytes(f"ply\nformat ascii 1.0\nelement vertex 4\n{props}end_header\n".encode()
                         + (" ".join(["0"] * len(names)) + "\n").encode() * 4)
    elif kind == "list_property":  # f_dc_0 as a one-element list
        props = "".join(f"property {'list uchar float' if p == 'f_dc_0' else 'float'} {p}\n" for p in names)
        row = " ".join("1 0" if p == "f_dc_0" else "0" for p in names) + "\n"
        path.write_bytes(f"ply\nformat ascii 1.0\nelement vertex 4\n{props}end_header\n".encode() + row.encode() * 4)
    elif kind == "unknown_type":
        write_by_hand(path, names, rows, types={"opacity": "flot"})
    elif kind == "rest_count":
        write_by_hand(path, inria_names(10), np.zeros((4, 27), np.float32))
    elif kind == "rest_gap":
        names = [p for p in names if p != "f_rest_3"] + ["f_rest_45"]
        write_by_hand(path, names, rows)
    elif kind == "ascii_garbage":
        write_by_hand(path, names, rows, fmt="ascii")
        path.write_bytes(path.read_bytes().replace(b"0.0", b"abc", 1 + 62))
    elif kind == "no_vertex":
        path.write_bytes(b"ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
    return path


@pytest.mark.parametrize("kind, what", [
    ("truncated", r"truncated: its header declares 4 'vertex' rows but the body ends in row 3"),
    ("no_end_header", "no 'end_header'"),
    ("int_property", r"must be float or double, got \{'x': 'int32', 'rot_3': 'int32'\}"),
    ("list_property", "must be float or double.*f_dc_0"),
    ("unknown_type", "damaged header.*flot"),
    ("rest_count", r"f_rest_9.*not f_rest_0..f_rest_K-1 with K in \(0, 9, 24, 45\)"),
    ("rest_gap", "f_rest_45.*not f_rest_0..f_rest_K-1"),
    ("ascii_garbage", "damaged body.*malformed"),
    ("no_vertex", "no 'vertex' element"),
])
def test_damaged_files_name_the_file_and_the_fault(tmp_path, kind, what):
    path = _damaged(tmp_path, kind)
    with pytest.raises(ValueError, match=rf"load_ply\({path}\): .*{what}"):
        load_ply(path)


@pytest.mark.parametrize("field, index, value, what", [
    ("means", (2, 1), float("nan"), "means holds 1 non-finite"),
    ("sh", (0, 3, 2), float("inf"), "sh holds 1 non-finite"),
    ("scales", (1, 0), 0.0, "1 Gaussians have a scale <= 0"),
    ("scales", (4, 2), -0.1, "1 Gaussians have a scale <= 0"),
    ("opacities", (3,), 1.5, r"opacities outside \[0, 1\]"),
    ("quats", (5,), 0.0, "1 Gaussians have a zero quaternion"),
])
def test_writer_refuses_values_no_viewer_can_show(tmp_path, field, index, value, what):
    path = tmp_path / "g.ply"
    save_ply(path, scene(8))
    before = path.read_bytes()
    g = scene(8)
    getattr(g, field)[index] = value
    with pytest.raises(ValueError, match=rf"save_ply\({path}\): refusing to write: .*{what}"):
        save_ply(path, g)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["g.ply"]
