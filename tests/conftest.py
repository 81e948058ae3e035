"""Test-wide settings. Imported before torch, so the OpenMP wait policy applies (see avatar_lightning)."""

import avatar_lightning  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE before torch loads)
