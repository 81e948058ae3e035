"""LightningDataModules yielding the shared batch schema (``avatar_lightning.batch``)."""

from data_modules.insta import INSTADataModule
from data_modules.nersemble import NeRSembleDataModule
from data_modules.synthetic import SyntheticDataModule as SyntheticDataModule

__all__ = ["INSTADataModule", "NeRSembleDataModule"]
