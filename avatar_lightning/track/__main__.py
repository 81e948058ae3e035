"""``python -m avatar_lightning.track INPUT... --out DIR``: see :mod:`avatar_lightning.track.cli`."""

from avatar_lightning.track.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
