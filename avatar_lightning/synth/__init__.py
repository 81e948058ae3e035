"""Procedural synthetic head dataset generator (``python -m avatar_lightning.synth``), SynShot §3.4-style.

Modules: ``rig`` (14 frontal + 14 upper-hemisphere cameras), ``appearance`` (skin, lips, brows,
irises, hair style/colour, beard, light), ``texture`` (procedural UV textures), ``hair`` (bound
hair/beard Gaussian proxies), ``avatar`` (3DMM sampling, the Gaussians of a posed avatar),
``identity``, ``generate`` (resumable, parallel rendering), ``config`` (generator config and
manifest), ``layout`` (files on disk), ``uv_cache`` (the prior's cached UV inputs),
``contact_sheet`` (README figure).
"""

# ``generate`` (the function) is not re-exported here: it would shadow the ``generate`` module.
from avatar_lightning.synth.config import ConfigMismatchError, GeneratorConfig

__all__ = ["ConfigMismatchError", "GeneratorConfig"]
