"""Datasets: sources (files or synthetic), splits, and the LightningDataModule."""

from stablesdg.data.categories import CategorySet
from stablesdg.data.datamodule import DefectDataModule, DefectImageDataset

__all__ = ["CategorySet", "DefectDataModule", "DefectImageDataset"]
