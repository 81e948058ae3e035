"""LightningDataModules yielding the shared batch schema (``avatar_lightning.batch``)."""
