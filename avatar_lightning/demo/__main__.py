"""``python -m avatar_lightning.demo``."""

from avatar_lightning.demo.run import main

main()
