"""avatar-lightning: few-shot drivable 3D Gaussian head avatars on PyTorch Lightning.

Rooms (see DESIGN.md): ``render`` (Gaussians, cameras, the one rasteriser), ``head`` (FLAME-format
morphable model, UV toolkit, posing), ``models`` (plain ``nn.Module`` networks), ``losses`` and
``metrics``, ``synth`` (procedural synthetic heads), ``lit`` (the LightningModules).
"""

import os

# OpenMP's default ACTIVE wait policy lets idle threads spin; on a busy 2-core machine that made the
# renderer's forward+backward 8x slower (benchmarks/render.py: 1.88 s ACTIVE vs 0.24 s PASSIVE).
# It only takes effect when this package is imported before torch (as the `lightning` script does).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
