"""Projection and SH against gsplat's own pure-PyTorch reference (``gsplat.cuda._torch_impl``).

gsplat imports on CPU (``pip install -e .[gpu]``), so these run without CUDA wherever it is
installed, and are skipped otherwise. Compositing in that reference needs CUDA/nerfacc, so it is
compared only in the gpu-marked parity test of test_render_backends.py.
"""

from __future__ import annotations

import pytest
import torch

from avatar_lightning.render import Cameras, eval_sh, quat_to_rotmat
from avatar_lightning.render.project import covariance_3d, project
from tests.test_render_raster import make_cameras, make_scene, with_hard_cases

timpl = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat not installed (pip install -e .[gpu])")


def test_projection_matches_gsplat_torch_reference():
    g = with_hard_cases(make_scene(60))
    cams = make_cameras()
    ours = project(g.map(lambda t: t[None]), Cameras(K=cams.K[None], world_to_cam=cams.world_to_cam[None],
                                                    width=cams.width, height=cams.height))
    radii, means2d, depths, conics, _ = timpl._fully_fused_projection(
        g.means, covariance_3d(g.quats, g.scales), cams.world_to_cam, cams.K, cams.width, cams.height)
    # gsplat also drops Gaussians whose 3.33σ box misses the image; compare where it keeps them
    kept = (radii > 0).all(-1)
    assert kept.sum() > 100
    torch.testing.assert_close(ours.means2d[kept], means2d[kept])
    torch.testing.assert_close(ours.conics[kept], conics[kept])
    torch.testing.assert_close(ours.depths, depths)
    assert torch.all(ours.opacities[kept] > 0)
    assert torch.all(ours.opacities[depths < cams.near] == 0)


def test_sh_and_rotations_match_gsplat_torch_reference():
    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(100, 3, generator=gen, dtype=torch.float64)
    sh = torch.randn(100, 16, 3, generator=gen, dtype=torch.float64)
    for deg in range(4):
        torch.testing.assert_close(eval_sh(deg, sh, dirs), timpl._spherical_harmonics(deg, dirs, sh))
    q = torch.randn(100, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(quat_to_rotmat(q), timpl._quat_to_rotmat(q))
