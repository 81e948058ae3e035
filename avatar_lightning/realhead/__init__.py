"""3DRealHead (seed 003): UV conditioning inputs, and later the prior, enrollment and driving.

Design: ``shared/REALHEAD.md``. Networks live in :mod:`avatar_lightning.models` (Style U-Net,
projected discriminator); this package holds what is specific to the method's data.
"""
