"""avatar-lightning: few-shot drivable 3D Gaussian head avatars on PyTorch Lightning.

Rooms (see DESIGN.md): ``render`` (Gaussians, cameras, the one rasteriser), ``head`` (FLAME-format
morphable model, UV toolkit, posing), ``models`` (plain ``nn.Module`` networks), ``losses`` and
``metrics``, ``synth`` (procedural synthetic heads), ``lit`` (the LightningModules).
"""

__version__ = "0.1.0"
