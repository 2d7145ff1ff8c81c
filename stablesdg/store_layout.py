"""The names the artifact store keeps for its own folders, and the one-line refusal of a dataset, class or variant
that would take one of them (it would write among the store's own files, and the report and listings would pass it
over)."""
from __future__ import annotations

import os
from pathlib import Path

from stablesdg.errors import UserError

ALL_CATEGORIES = "all"  # <dataset>/all/: the stages that read every class (inspect, classify, export, pipeline)
SPLITS_DIR = "splits"  # <dataset>/splits/: a dataset's persisted splits (dataset.split_dir)
SWEEPS_DIR = "sweeps"  # <dataset>/sweeps/<variant>/: a sweep's aggregate and the (s, ω) it chose per class
CACHE_DIR = "_cache"  # <dataset>/<category>/_cache/: cached latents, real-image features, the dataset's scan
REPORT_DIR = "report"  # <store>/report/: the report's tables and figures (its default --out)
TUNED_FILE = "tuned_generation.yaml"  # in a sweep's folder: the (s, ω) it chose per class

# setting -> the names at its level of the store that are the store's own, and what each folder holds
RESERVED = {
    "dataset": {REPORT_DIR: "<store>/report holds the report's tables"},
    "category": {ALL_CATEGORIES: "<dataset>/all holds the stages that read every class",
                 SPLITS_DIR: "<dataset>/splits holds the dataset's splits",
                 SWEEPS_DIR: "<dataset>/sweeps holds what each sweep chose"},
    "variant": {CACHE_DIR: "<dataset>/<category>/_cache holds each class's caches"},
}


def sweep_folder(store: str | os.PathLike, dataset: str, variant: str) -> Path:
    """``<store>/<dataset>/sweeps/<variant>``: the folder of the sweep of ``variant``, its matrices and ``TUNED_FILE``."""
    return Path(store) / dataset / SWEEPS_DIR / variant


def cache_folder(store: str | os.PathLike, dataset: str, category: str | None) -> Path:
    """``<store>/<dataset>/<category>/_cache``: the folder of a class's caches (``all``'s for every class's)."""
    return Path(store) / dataset / (category or ALL_CATEGORIES) / CACHE_DIR


def require_unreserved(key: str, value: object) -> None:
    """A one-line ``UserError`` when ``value``, as ``key`` (``dataset`` or ``dataset.name``, ``category``,
    ``variant``), would name a folder the store keeps for its own (``RESERVED``)."""
    held = RESERVED.get(key.removesuffix(".name"), {}).get(str(value))
    if held is not None:
        raise UserError(f"{key}={value!r} cannot name an artifact directory: {held}; choose another name")


def require_unreserved_classes(abbreviations: list[str]) -> None:
    """A one-line ``UserError`` when a class's abbreviation would be its folder in the store and is one the store
    keeps for its own (``all``, ``splits``, ``sweeps``), naming ``dataset.classes`` as the way to another."""
    for name in abbreviations:
        held = RESERVED["category"].get(name)
        if held is not None:
            raise UserError(f"class {name!r} cannot name its folder in the artifact store: {held}; give each class "
                            f"a short name with dataset.classes, e.g. 'dataset.classes={{{name[:2].capitalize()}: "
                            f"{name}, ...}}'")
