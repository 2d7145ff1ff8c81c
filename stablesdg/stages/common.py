"""Checks and set-up every stage shares: positive settings, split names, and the dataset with the one category a
stage works on."""

from __future__ import annotations

import math
from typing import Iterable

from hydra.utils import instantiate
from omegaconf import DictConfig

from stablesdg.data import DefectDataModule, DefectImageDataset
from stablesdg.data.splits import SPLIT_NAMES
from stablesdg.errors import UserError, is_number, require_integer


def _require_integers(stage: DictConfig, keys: Iterable[str], minimum: int, wanted: str) -> None:
    for key in keys:
        require_integer(f"stage.{key}", stage[key], minimum, wanted)


def require_positive(stage: DictConfig, keys: Iterable[str]) -> None:
    """A one-line ``UserError`` naming the first of ``stage``'s ``keys`` that is not a positive integer (``1.5`` is
    not one; Python's ``int`` would have made it 1)."""
    _require_integers(stage, keys, 1, "a positive integer")


def require_non_negative(stage: DictConfig, keys: Iterable[str]) -> None:
    """As ``require_positive``, for counts where 0 means "none" (``stage.validation_every=0``: no validation grids)."""
    _require_integers(stage, keys, 0, "an integer >= 0 (0: none)")


def require_positive_number(stage: DictConfig, keys: Iterable[str]) -> None:
    """A one-line ``UserError`` naming the first of ``stage``'s ``keys`` that is not a finite number above 0 (a
    learning rate of 0 would train nothing, a negative one is refused by the optimiser with a stack trace, and nan or
    inf would train to nan weights without a word)."""
    for key in keys:
        value = stage[key]
        if not is_number(value) or not 0 < value < math.inf:
            raise UserError(f"stage.{key} must be a positive finite number, got {value}")


def require_split(stage: DictConfig, key: str) -> str:
    """``stage[key]`` when it names a split (train, val, test); else a one-line ``UserError`` naming ``key``."""
    split = stage[key]
    if split not in SPLIT_NAMES:
        raise UserError(f"stage.{key} must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    return split


def fill_prompt(template: str, word: str, key: str) -> str:
    """``template`` with its ``{}`` replaced by ``word``; a one-line ``UserError`` naming ``key`` when the template
    has no ``{}`` (the placeholder would never be in the prompt, so nothing would learn it) or other fields."""
    template = str(template)
    if "{}" not in template:
        raise UserError(f"{key}={template!r} has no {{}} for the placeholder; e.g. {key}='A photo of {{}}'")
    try:
        return template.format(word)
    except (IndexError, KeyError, ValueError) as err:
        raise UserError(f"{key}={template!r} must have one {{}} and no other braces ({err!r})") from err


def category_data(cfg: DictConfig, verb: str) -> tuple[DefectDataModule, str]:
    """The set-up dataset and ``cfg.category`` as its abbreviation; without a category, a ``UserError``
    ("stage=<name> <verb> one category: add category=<...>") listing the valid ones."""
    dm: DefectDataModule = instantiate(cfg.dataset)
    dm.setup()
    if cfg.category is None:
        raise UserError(f"stage={cfg.stage.name} {verb} one category: "
                        f"add category=<{', '.join(dm.categories.abbreviations)}>")
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
