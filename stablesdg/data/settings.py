"""The checks of a dataset's settings that need no image read, importable without torch: the entry point runs them
before the heavy libraries load (a missing ``dataset.root`` is named in about a second, not after torch has loaded),
and ``DefectDataModule`` runs them again when it is built from the same settings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stablesdg.choices import ROOT_VARIABLES
from stablesdg.data.categories import require_class_map
from stablesdg.errors import UserError, is_integer, is_number, require_integer

BAD_FILE_POLICIES = ("error", "skip")  # dataset.on_bad_file
FITS = ("crop", "pad", "stretch")  # dataset.fit: how an image that is not square becomes one


def require_split_fractions(fractions: Sequence[Any]) -> list[float]:
    """``dataset.split.fractions`` as three floats (train, val, test); a one-line ``UserError`` unless they are three
    non-negative numbers summing to 1."""
    values = list(fractions) if isinstance(fractions, Sequence) and not isinstance(fractions, str) else [fractions]
    if len(values) != 3 or not all(is_number(f) and f >= 0 for f in values) \
            or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise UserError(f"dataset.split.fractions must be three non-negative numbers summing to 1, got {values}")
    return [float(f) for f in values]


def split_name(split: Mapping[str, Any] | None) -> str:
    """The name of the split ``dataset.split`` asks for, as its file under ``<dataset>/splits/`` is named
    (``split-seed0-0.8-0.1-0.1``; ``split-folders-seed0-…`` for the split a dataset's folders made): one name per
    seed, fractions and ``folders`` (defaults 0, 0.8/0.1/0.1 and false); a one-line ``UserError`` for values no split
    can have."""
    split = split or {}
    fractions = require_split_fractions(split.get("fractions", (0.8, 0.1, 0.1)))
    seed = require_integer("dataset.split.seed", split.get("seed", 0), 0, "an integer >= 0")
    folders = require_split_folders(split.get("folders", False))
    return f"split-{'folders-' if folders else ''}seed{seed}-{'-'.join(f'{f:g}' for f in fractions)}"


def require_split_folders(value: Any) -> bool:
    """``dataset.split.folders`` as a bool; a one-line ``UserError`` for anything but true or false."""
    if not isinstance(value, bool):
        raise UserError(f"dataset.split.folders must be true (keep the split a dataset's train/, val/ and test/ "
                        f"folders make) or false, got {value!r}")
    return value


def require_dataset_root(name: str, root: str | Path | None) -> Path:
    """``dataset.root`` as a ``Path`` when it is a folder; else a one-line ``UserError`` saying to set it (or the
    environment variable its config reads, ``ROOT_VARIABLES``), with the folder a relative root meant."""
    if not root:
        raise UserError(f"dataset {name!r} needs dataset.root=<folder with the images>")
    path = Path(root)
    if not path.is_dir():
        meant = "" if path.is_absolute() else f" ({path.absolute()})"
        variable = ROOT_VARIABLES.get(str(name))
        raise UserError(f"dataset root {str(root)!r}{meant} does not exist or is not a folder; set dataset.root=<folder>"
                        + (f" (or export {variable}=<folder>)" if variable else ""))
    return path


def require_dataset_values(dataset: Mapping[str, Any]) -> None:
    """The checks of a dataset config (``cfg.dataset``, or ``DefectDataModule``'s arguments by name) that touch no
    file, each a one-line ``UserError`` naming the setting: the classes' map, the synthetic set's settings, the image
    size, the split's fractions and seed, the counts, channels, α-subsets, the bits of 16-bit files, how an image that
    is not square becomes one, and what to do with an undecodable file."""
    synthetic = dataset.get("synthetic")
    if synthetic and not isinstance(synthetic, Mapping):
        raise UserError(f"dataset.synthetic must be the procedural set's settings, e.g. {{per_class: 40, seed: 0}}, "
                        f"or null for a dataset on disk, got {synthetic!r}")
    if dataset.get("classes") is not None:
        require_class_map(dataset.get("classes"))
    if synthetic:
        require_integer("dataset.synthetic.per_class", synthetic.get("per_class", 40), 1, "a positive integer")
        require_integer("dataset.synthetic.seed", synthetic.get("seed", 0), 0, "an integer >= 0")
    require_integer("dataset.image_size", dataset.get("image_size", 200), 8, "an integer of at least 8")
    split = dataset.get("split") or {}
    require_split_fractions(split.get("fractions", (0.8, 0.1, 0.1)))
    require_integer("dataset.split.seed", split.get("seed", 0), 0, "an integer >= 0")
    require_split_folders(split.get("folders", False))
    require_integer("dataset.batch_size", dataset.get("batch_size", 32), 1, "a positive integer")
    require_integer("dataset.num_workers", dataset.get("num_workers", 0), 0, "an integer >= 0")
    channels = dataset.get("channels", 1)
    if not is_number(channels) or channels not in (1, 3):  # not int(): 1.5 would have become 1
        raise UserError(f"dataset.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    alphas = list(dataset.get("alphas", (0.8, 0.6, 0.4)))
    if not all(is_number(a) and 0.0 < a <= 1.0 for a in alphas):
        raise UserError(f"each of dataset.alphas must be in (0, 1], got {alphas}")
    bit_depth = dataset.get("bit_depth")
    if bit_depth is not None and not (is_integer(bit_depth) and 8 <= bit_depth <= 16):
        raise UserError(f"dataset.bit_depth must be null (16) or an integer from 8 to 16, got {bit_depth}")
    if dataset.get("fit", "crop") not in FITS:
        raise UserError(f"dataset.fit must be one of {', '.join(FITS)} (how an image that is not square becomes one), "
                        f"got {dataset.get('fit')!r}")
    if dataset.get("on_bad_file", "error") not in BAD_FILE_POLICIES:
        raise UserError(f"dataset.on_bad_file must be one of {BAD_FILE_POLICIES}, got {dataset.get('on_bad_file')!r}")


def require_outside_dataset(dataset: Mapping[str, Any], folders: Mapping[str, Any]) -> None:
    """A one-line ``UserError`` when a folder the tool writes (``folders``: setting -> folder, such as
    ``paths.artifacts`` or ``stage.out``) is a dataset on disk's ``dataset.root`` or inside it: the next scan of the
    dataset would read what the tool wrote (sample grids, generated sets) as images of the dataset, or another class."""
    root = dataset.get("root") if not dataset.get("synthetic") else None
    if not root or str(root) == "???":  # unset: refused where the settings are checked
        return
    resolved_root = Path(str(root)).expanduser().resolve()
    for key, folder in folders.items():
        path = Path(str(folder)).expanduser().resolve()
        if path == resolved_root or resolved_root in path.parents:
            raise UserError(f"{key}={folder} is inside dataset.root={root}: what is written there would be read as "
                            "part of the dataset (its images, or another class); name a folder outside it")


def require_dataset_settings(dataset: Mapping[str, Any]) -> None:
    """``require_dataset_values``, then, for a dataset on disk (not the synthetic set), that ``dataset.root`` is a
    folder, and for the synthetic set that no ``dataset.root`` is given, which it would not read (a root given without
    ``dataset=neu`` would train on procedural textures): every check of the dataset's settings that reads no image."""
    require_dataset_values(dataset)
    root = dataset.get("root")
    if not dataset.get("synthetic"):
        require_dataset_root(dataset.get("name"), root)
    elif root and str(root) != "???":
        raise UserError(f"dataset.root={root} would not be read: dataset={dataset.get('name')} makes its images "
                        f"(dataset.synthetic) and reads no folder; to read {root}, choose its dataset (dataset=neu, "
                        "dataset=ccbsd or dataset=folder), or set dataset.root=null")
