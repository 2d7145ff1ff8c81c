"""The set-up every stage that works on one category shares: the dataset, and the category's images in a split
(the settings checks they share are in ``stablesdg.stages.settings``)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from stablesdg.data import DefectDataModule, DefectImageDataset
from stablesdg.errors import UserError
from stablesdg.stages.settings import category_missing


def category_data(cfg: DictConfig, verb: str) -> tuple[DefectDataModule, str]:
    """The set-up dataset and ``cfg.category`` as its abbreviation; without a category, ``category_missing``
    ("stage=<name> <verb> one category: add category=<...>") listing the dataset's classes."""
    dm: DefectDataModule = instantiate(cfg.dataset)
    dm.setup()
    if cfg.category is None:
        raise category_missing(cfg.stage.name, verb, dm.categories.abbreviations)
    return dm, dm.categories.resolve(cfg.category)


def category_images(dm: DefectDataModule, split: str, category: str, alpha: float | None, key: str) -> DefectImageDataset:
    """The images of ``category`` in ``split`` (only its α-subset when ``alpha`` is set); a one-line ``UserError``
    when there are none, saying whether the α-subset (``key``, e.g. ``stage.alpha``) or the split's share in
    ``dataset.split.fractions`` left them out."""
    images = dm.dataset(split, category=category, alpha=alpha)
    if len(images) == 0:
        in_split = len(dm.select(split, category=category))
        if in_split:
            raise UserError(f"{key}={alpha} leaves none of the {in_split} {split} images of {category}; "
                            f"raise {key} (each class keeps round({key} x its count))")
        raise UserError(f"there are no {split} images of {category} "
                        f"(dataset {dm.name}, dataset.split.fractions={dm.split_fractions})")
    return images
