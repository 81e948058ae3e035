"""Procedural synthetic head dataset generator (``python -m avatar_lightning.synth``)."""
