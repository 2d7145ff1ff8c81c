"""Datasets: sources (files or synthetic), splits, and the LightningDataModule.

``CategorySet`` imports nothing heavy, so a bad ``category=`` is reported before torch and Lightning load;
the data module and dataset load on first use.
"""

from typing import Any

from stablesdg.data.categories import CategorySet

__all__ = ["CategorySet", "DefectDataModule", "DefectImageDataset"]


def __getattr__(name: str) -> Any:
    if name in ("DefectDataModule", "DefectImageDataset"):
        from stablesdg.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
