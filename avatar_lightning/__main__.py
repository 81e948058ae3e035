"""``python -m avatar_lightning`` is the same entry point as the ``lightning`` console script."""

from avatar_lightning.cli import run

if __name__ == "__main__":
    run()
