"""Where a dataset's images come from: a folder tree on disk, or the procedural synthetic set.

A source lists ``ImageRecord``s (a stable key, a class label, a content digest) and decodes
a record into a PIL image. Folder layouts recognised under ``root``:

* NEU-DET: ``IMAGES/<class>_<n>.jpg`` or ``images/…`` (label from the file name; ``ANNOTATIONS/`` ignored)
* flat:    ``<class>_<n>.<ext>`` files directly in ``root`` (NEU-CLS ``Cr_12.bmp``)
* folders: one sub-folder per class (``root/Cr/*.bmp`` or ``root/crazing/*.png``; nested files too)
* split folders: a dataset split beforehand, the class folders in folders named like splits (``root/train/Cr/``,
  ``root/val/Cr/``; Kaggle's NEU-DET ``root/train/images/crazing/``, ``root/validation/images/crazing/``): the
  images of every split are pooled, and split again by ``dataset.split`` like any other layout, or kept in the
  split their folder names (``split_folder_of``) with ``dataset.split.folders=true``

Class names in file or folder names may be abbreviations or full names.

In NEU-DET and flat layouts, the ``<class>_<n>`` files of a class that ``dataset.classes`` does not name are left out
(counted in ``other_classes``), as the folders of such classes are; a file not named ``<class>_<n>`` is a bad file.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from PIL import Image

from stablesdg.choices import IMAGE_EXTENSIONS
from stablesdg.data.categories import CategorySet
from stablesdg.data.images import (SQUARE_ENOUGH, BadImageError, decode_image, high_bit_to_8bit, read_image_file,
                                   square_share)
from stablesdg.data.scan_cache import ScanCache, scan_kept_in
from stablesdg.data.settings import require_dataset_root
from stablesdg.data.synthetic import SYNTHETIC_CLASSES, render_synthetic_defect
from stablesdg.errors import UserError
from stablesdg.image_files import image_files, is_hidden
from stablesdg.once import info_once, warn_once
from stablesdg.progress import progress_bar

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}  # a split folder's name (in lower case) -> the split it holds
SPLIT_FOLDER_NAMES = frozenset(SPLIT_FOLDERS)
NAMED_SKIPS = 5  # the files a scan that skips bad ones names each in a warning; one more line counts them all
SCAN_BAR_DELAY_S = 2.0  # a scan shows its progress bar once it has run this long (NEU's 1,800 images take about 1 s)


@dataclass(frozen=True)
class ImageRecord:
    """One image: ``key`` is its path relative to the dataset root (or a synthetic id)."""

    key: str
    label: int
    digest: str


class FolderSource:
    """Images on disk in one of the layouts above, every file decoded at scan time: each scan, or, with a
    ``scan_cache`` file, the first scan after the file was added or changed."""

    def __init__(self, root: str | Path, categories: CategorySet | None, on_bad_file: str = "error",
                 name: str = "folder", bit_depth: int | None = None, scan_cache: Path | None = None):
        self.name = name
        self.root = require_dataset_root(name, root)
        self.scan_cache = scan_cache
        self.on_bad_file = on_bad_file
        self.bit_depth = bit_depth  # the significant bits of 16-bit files; None: all 16
        self.layout = "unknown"
        self.skipped: list[str] = []
        self.colour_example: Path | None = None  # the first image found in colour, once scanned
        self.high_bit_maximum: tuple[int, Path] | None = None  # the largest value in a 16-bit file, and that file
        self.not_square = 0  # how many images a centre square would keep less than SQUARE_ENOUGH of
        self.least_square: tuple[Path, tuple[int, int]] | None = None  # the most elongated image and its size
        self.split_holders: list[str] = []  # a split-folders layout's folders of class folders (``train/images/``)
        self.other_classes: Counter[str] = Counter()  # flat layouts: ``<class>_<n>`` files per class not of the dataset
        self.categories = categories if categories is not None else self._discover_categories()

    def _discover_categories(self) -> CategorySet:
        """The classes of a dataset without ``dataset.classes``, read from its layout as ``_labelled_files`` reads it:
        the ``<class>`` of ``<class>_<n>`` file names in NEU-DET's ``IMAGES/`` or directly in a root without folders,
        else the sorted names of the class folders (in split folders too)."""
        neu_det_images = _neu_det_images(self.root)
        holders = _split_holders(self.root, lambda folder: True) or [self.root]
        folders = sorted({p.name for holder in holders for p in _subfolders(holder)})
        if neu_det_images is None and len(folders) == 1 and holders == [self.root]:
            only = self.root / folders[0]
            inner = [p.name for p in _subfolders(only)]
            if inner and not image_files(only, recursive=False):  # a root one level too high: one folder of folders
                raise UserError(f"dataset root {str(self.root)!r} holds one folder, {folders[0]}/, and its images are in "
                                f"its folders ({', '.join(inner[:6])}{', ...' if len(inner) > 6 else ''}), which would "
                                f"be one class; if those are the classes, set dataset.root={only} (for one class, "
                                f"name it: dataset.classes={{{folders[0]}:{folders[0]}}})")
        if neu_det_images is None and folders:
            return CategorySet({name: name for name in folders})
        named = sorted({stem_class for f in image_files(neu_det_images or self.root, recursive=False)
                        if (stem_class := _numbered_class(f.stem)) is not None})
        if not named:
            raise UserError(f"dataset root {str(self.root)!r} has no class folders and no <class>_<n> image files "
                            "(dataset.classes is not set)")
        return CategorySet({name: name for name in named})

    def _class_folders(self, parent: Path) -> dict[int, Path]:
        folders: dict[int, Path] = {}
        for child in sorted(parent.iterdir()):
            index = self.categories.index_of(child.name) if child.is_dir() else None
            if index is not None:
                if index in folders:
                    raise UserError(f"two folders for one class: {folders[index]} and {child}")
                folders[index] = child
        return folders

    def _split_class_holders(self, root: Path) -> list[Path]:
        """The folders of ``root``'s split folders that hold folders named after this dataset's classes."""
        return _split_holders(root, lambda folder: bool(self._class_folders(folder)))

    def _nested_dataset(self) -> Path | None:
        """The first folder directly under the root laid out as a dataset (NEU-DET's ``IMAGES/``, a folder named after a
        class, or split folders of them): where a root that points one level too high (at the folder an archive was
        unpacked into) should point."""
        for child in _subfolders(self.root):
            if _neu_det_images(child) or self._class_folders(child) or \
                    self._split_class_holders(child):
                return child
        return None

    def _labelled_files(self) -> list[tuple[Path, int | None]]:
        neu_det_images = _neu_det_images(self.root)
        if neu_det_images is not None:
            self.layout = "neu-det"
            flat_dir = neu_det_images
        else:
            holders = [self.root] if self._class_folders(self.root) else \
                self._split_class_holders(self.root)
            if holders:
                self.layout = "class-folders" if holders == [self.root] else "split-folders"
                if self.layout == "split-folders":
                    self.split_holders = [h.relative_to(self.root).as_posix() + "/" for h in holders]
                folders = [self._class_folders(holder) for holder in holders]
                missing = [abbreviation for i, abbreviation in enumerate(self.categories.abbreviations)
                           if not any(i in found for found in folders)]
                if missing:
                    raise UserError(f"no folder for class(es) {', '.join(missing)} under {self.root}")
                labelled = []
                for index in range(len(self.categories)):
                    files = [f for found in folders if index in found for f in image_files(found[index])]
                    if not files:
                        named = " or ".join(str(found[index]) for found in folders if index in found)
                        raise UserError(f"class folder {named} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
                    labelled += [(f, index) for f in files]
                return labelled
            self.layout = "flat"
            flat_dir = self.root
        labelled = []
        self.other_classes.clear()
        for f in image_files(flat_dir, recursive=False):
            index = self.categories.index_of(f.stem.rsplit("_", 1)[0])
            other = _numbered_class(f.stem) if index is None else None
            if other is not None:  # NEU-DET's other classes where dataset.classes names a few, as class folders are
                self.other_classes[other] += 1
            else:
                labelled.append((f, index))
        if self.other_classes:
            info_once(log, "dataset %s: left out %s, not in dataset.classes", self.name,
                      describe_other_classes(self.other_classes))
        return labelled

    def _reject(self, message: str, advice: str = BadImageError.advice) -> None:
        if self.on_bad_file == "error":
            raise BadImageError(f"{message}; {advice}, or set dataset.on_bad_file=skip")
        self.skipped.append(message)
        if len(self.skipped) <= NAMED_SKIPS:
            warn_once(log, "skipping %s", message)

    def scan(self) -> list[ImageRecord]:
        """All decodable images with their labels; bad files raise or are skipped per ``on_bad_file``. A scan that
        takes longer than ``SCAN_BAR_DELAY_S`` shows a progress bar. With a ``scan_cache``, the files unchanged since
        the last scan are not read again (``ScanCache``), and what this scan read is kept for the next."""
        with scan_kept_in(self.scan_cache, self.root) as cache:
            records = self._read_records(cache)
        if len(self.skipped) > NAMED_SKIPS:
            warn_once(log, "skipped %d files under %s in all (dataset.on_bad_file=skip), the first %d named above",
                      len(self.skipped), self.root, NAMED_SKIPS)
        other_classes = (f"; it holds {describe_other_classes(self.other_classes)}: name those in dataset.classes"
                         if self.other_classes else "")
        if not records:
            nested = self._nested_dataset()
            raise UserError(
                f"no images found under {self.root} (looked for IMAGES/, one folder per class, split folders of them, "
                f"and <class>_<n> files; classes: {self.categories.describe()}){other_classes}"
                + (f"; the folder {nested} in it is laid out as a dataset: set dataset.root={nested}" if nested else "")
            )
        present = {r.label for r in records}
        empty = [self.categories.abbreviations[i] for i in range(len(self.categories)) if i not in present]
        if empty:
            raise UserError(f"no images of class(es) {', '.join(empty)} under {self.root}{other_classes}")
        if self.bit_depth is not None and self.high_bit_maximum and self.high_bit_maximum[0] >= 2 ** self.bit_depth:
            value, path = self.high_bit_maximum
            raise UserError(f"dataset.bit_depth={self.bit_depth} reads values up to {2 ** self.bit_depth - 1}, but "
                            f"{path} holds {value}: set dataset.bit_depth to the bits the files use, or null for 16")
        return records

    def _read_records(self, cache: ScanCache) -> list[ImageRecord]:
        """The record of each labelled file whose facts ``cache`` gives (a bad file rejected), noting the facts the
        scan reports: the first image in colour, the least square one, the largest value in a 16-bit file."""
        records = []
        for path, label in progress_bar(self._labelled_files(), desc=f"reading {self.root}", unit="image",
                                        delay=SCAN_BAR_DELAY_S):
            if label is None:
                self._reject(f"{path}: file name does not start with a class name ({self.categories.describe()})")
                continue
            key = path.relative_to(self.root).as_posix()
            try:
                facts = cache.facts(path, key)
            except BadImageError as err:
                self._reject(str(err), err.advice)
                continue
            if self.colour_example is None and facts.colour:
                self.colour_example = path
            share = square_share(*facts.size)
            if share < SQUARE_ENOUGH:
                self.not_square += 1
                if self.least_square is None or share < square_share(*self.least_square[1]):
                    self.least_square = (path, facts.size)
            maximum = facts.high_bit_maximum
            if maximum is not None and (self.high_bit_maximum is None or maximum > self.high_bit_maximum[0]):
                self.high_bit_maximum = (maximum, path)
            records.append(ImageRecord(key, label, facts.digest))
        return records

    def load(self, record: ImageRecord) -> Image.Image:
        """Decode the image of ``record``; a 16-bit file as 8-bit grayscale when ``bit_depth`` is set."""
        path = self.root / record.key
        try:
            data = path.read_bytes()
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror}") from err
        image = decode_image(data, path)
        return image if self.bit_depth is None else high_bit_to_8bit(image, self.bit_depth)


def describe_other_classes(counts: Mapping[str, int]) -> str:
    """``1200 files of 4 other classes (crazing 300, inclusion 300, ...)`` for ``counts``, the ``<class>_<n>`` files
    per class that a flat layout's scan left out since their class is not one of the dataset's."""
    total = sum(counts.values())
    listed = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
    return (f"{total} file{'s' if total != 1 else ''} of {len(counts)} other "
            f"class{'es' if len(counts) != 1 else ''} ({listed})")


def split_folder_of(key: str) -> str:
    """The split (``train``, ``val`` or ``test``) that the first folder of a split-folders record's ``key`` names."""
    return SPLIT_FOLDERS[key.split("/", 1)[0].lower()]


def _numbered_class(stem: str) -> str | None:
    """The class a flat layout's file name gives: ``crazing`` for ``crazing_12``; None for a name not ``<class>_<n>``."""
    name, _, number = stem.rpartition("_")
    return name if name and number.isdigit() else None


def _subfolders(folder: Path) -> list[Path]:
    """The folders directly in ``folder``, sorted, without hidden ones (``.ipynb_checkpoints``, ``__MACOSX``)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))


def _neu_det_images(root: Path) -> Path | None:
    """NEU-DET's image folder in ``root``: ``IMAGES/``, or under another case (``images/``) where it holds image files
    directly (a split-folders layout's ``images/`` holds class folders)."""
    if (root / "IMAGES").is_dir():
        return root / "IMAGES"
    return next((p for p in _subfolders(root) if p.name.upper() == "IMAGES" and image_files(p, recursive=False)), None)


def _split_holders(root: Path, holds_classes: Callable[[Path], bool]) -> list[Path]:
    """The folders that hold the class folders of a split-folders layout under ``root``: for each split-named folder
    in it, that folder's ``images/`` or the folder itself, the first whose sub-folders ``holds_classes``; none unless
    every folder in ``root`` is named like a split (``train``, ``val``, ``test``, ...)."""
    children = _subfolders(root)
    if not children or any(child.name.lower() not in SPLIT_FOLDER_NAMES for child in children):
        return []
    holders = []
    for child in children:
        candidates = [*(p for p in _subfolders(child) if p.name.lower() == "images"), child]
        holder = next((h for h in candidates if _subfolders(h) and holds_classes(h)), None)
        holders += [holder] if holder is not None else []
    return holders


class SyntheticSource:
    """The procedural dataset: ``per_class`` images of each synthetic class, rendered on demand."""

    layout = "synthetic"
    root = None
    colour_example = None  # grayscale textures
    high_bit_maximum = None  # 8-bit
    not_square, least_square = 0, None  # rendered square

    def __init__(self, categories: CategorySet, per_class: int, size: int, seed: int):
        self.skipped: list[str] = []
        self.other_classes: Counter[str] = Counter()  # every class it renders is one of the dataset's
        unknown = [a for a in categories.abbreviations if a not in SYNTHETIC_CLASSES]
        if unknown:
            raise UserError(f"synthetic classes {unknown} do not exist; choose from {list(SYNTHETIC_CLASSES)}")
        self.categories = categories
        self.per_class = int(per_class)
        self.size = int(size)
        self.seed = int(seed)

    def _render(self, key: str) -> Image.Image:
        abbreviation, index = Path(key).stem.rsplit("_", 1)
        return render_synthetic_defect(abbreviation, int(index), self.size, self.seed)

    def scan(self) -> list[ImageRecord]:
        """Every synthetic image's record (rendering each once for its digest)."""
        records = []
        for label, abbreviation in enumerate(self.categories.abbreviations):
            for index in range(self.per_class):
                key = f"synthetic/{abbreviation}_{index}.png"
                digest = hashlib.md5(self._render(key).tobytes()).hexdigest()
                records.append(ImageRecord(key, label, digest))
        return records

    def load(self, record: ImageRecord) -> Image.Image:
        """Render the image of ``record``."""
        return self._render(record.key)


class PathSource:
    """Records whose key is an image's own path (generated images, other tools' outputs)."""

    root = None

    def load(self, record: ImageRecord) -> Image.Image:
        """Decode the image at ``record.key``."""
        return read_image_file(record.key)
