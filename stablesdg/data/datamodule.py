"""``DefectDataModule``: one LightningDataModule for NEU, CCBSD, any class-folder dataset and the synthetic set."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from stablesdg.artifacts import note_split_read
from stablesdg.data.categories import CategorySet
from stablesdg.data.images import conform_image, fewest_bits, image_to_tensor, square_share
from stablesdg.data.scan_cache import scan_cache_path
from stablesdg.data.sources import FolderSource, ImageRecord, SyntheticSource, split_folder_of
from stablesdg.data.splits import Split, load_or_create_split
from stablesdg.data.settings import require_dataset_values, split_name
from stablesdg.errors import UserError
from stablesdg.generated import EXPORT_MARKER
from stablesdg.once import info_once, warn_once

log = logging.getLogger(__name__)


class DefectImageDataset(Dataset):
    """Images of some records as ``(tensor C×size×size in [0, 1], label)``, optionally transformed."""

    def __init__(self, records: Sequence[ImageRecord], source: Any, channels: int, size: int,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, fit: str = "crop"):
        self.records = list(records)
        self.source = source
        self.channels = channels
        self.size = size
        self.transform = transform
        self.fit = fit

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, index: int):
        """The PIL image of record ``index`` in the dataset's mode and size (no transform)."""
        return conform_image(self.source.load(self.records[index]), self.channels, self.size, self.fit)

    def distinct_indices(self, count: int) -> list[int]:
        """The first ``count`` indices whose files differ in content: a byte-identical copy of an earlier image (NEU's
        ``patches_101.jpg`` and ``patches_105.jpg``) is passed over, so a grid of examples shows no image twice."""
        seen: set[str] = set()
        indices = []
        for index, record in enumerate(self.records):
            if len(indices) == count:
                break
            if record.digest not in seen:
                seen.add(record.digest)
                indices.append(index)
        return indices

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        tensor = image_to_tensor(self.load_image(index))
        if self.transform is not None:
            tensor = self.transform(tensor)
        return tensor, self.records[index].label


class DefectDataModule(L.LightningDataModule):
    """A defect-image dataset with a persisted stratified split.

    Args:
        name: dataset name; keys the artifact directory.
        classes: ``abbreviation -> full name`` in label order; ``None`` for class folders
            discovered under ``root`` (sorted folder names).
        root: folder with the images (NEU-DET, NEU-CLS flat, class-folder or split-folder layout); unused
            when ``synthetic`` is set.
        synthetic: ``{per_class, seed}`` to use the procedural dataset instead of files.
        image_size, channels: every image is delivered at ``channels``×``image_size``².
        fit: how an image that is not square becomes one: ``crop`` (its centre), ``pad`` (black bars) or ``stretch``.
        split: ``{fractions: [train, val, test], seed, folders}``; ``folders=True`` keeps the split of a dataset laid
            out in split folders (``train/``, ``val/``, ``test/``), a split it has no folder for taken from its
            training images by ``fractions``.
        split_dir: where the split file is persisted (the artifact store).
        alphas: the α-subsets reported by ``stage=inspect``.
        on_bad_file: ``error`` (default) or ``skip`` (log and drop) for undecodable files.
        bit_depth: the bits that 16-bit files use (12 for a 12-bit camera's PNGs, 8 for 8-bit data saved as
            16-bit): their values from 0 to 2**bit_depth - 1 become 0-255; ``None`` reads them over the full 16-bit
            range.
        batch_size, num_workers: for the dataloaders.
    """

    def __init__(
        self,
        name: str,
        classes: Mapping[str, str] | None,
        split_dir: str,
        root: str | None = None,
        synthetic: Mapping[str, int] | None = None,
        image_size: int = 200,
        channels: int = 1,
        split: Mapping[str, Any] | None = None,
        alphas: Sequence[float] = (0.8, 0.6, 0.4),
        on_bad_file: str = "error",
        batch_size: int = 32,
        num_workers: int = 0,
        bit_depth: int | None = None,
        fit: str = "crop",
    ):
        super().__init__()
        require_dataset_values(dict(classes=classes, synthetic=synthetic, image_size=image_size, channels=channels,
                                    split=split, alphas=alphas, on_bad_file=on_bad_file, batch_size=batch_size,
                                    num_workers=num_workers, bit_depth=bit_depth, fit=fit))
        self.fit = fit
        self.bit_depth = None if bit_depth is None else int(bit_depth)
        self.name = name
        self.classes = dict(classes) if classes else None
        self.root = root
        self.synthetic = dict(synthetic) if synthetic else None
        self.image_size = int(image_size)
        split = dict(split or {})
        self.split_fractions = [float(f) for f in split.get("fractions", (0.8, 0.1, 0.1))]
        self.split_seed = int(split.get("seed", 0))
        self.split_folders = bool(split.get("folders", False))
        self.split_dir = Path(split_dir)
        self.alphas = [float(a) for a in alphas]
        self.on_bad_file = on_bad_file
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.channels = int(channels)
        self.source: FolderSource | SyntheticSource | None = None
        self.records: list[ImageRecord] = []
        self.split: Split | None = None

    @property
    def categories(self) -> CategorySet:
        """The dataset's classes (after ``setup`` for discovered class folders)."""
        if self.source is not None:
            return self.source.categories
        if self.classes is None:
            raise UserError(f"the classes of dataset {self.name!r} are known only after it is scanned")
        return CategorySet(self.classes)

    def unscanned_categories(self) -> CategorySet:
        """The dataset's classes as its config or the names of its folders or files give them, before any image is
        read and without writing anything (no split, no scan cache); ``setup`` checks the images."""
        if self.classes or self.synthetic is not None:
            return CategorySet(self.classes or {})
        return FolderSource(self.root, None, self.on_bad_file, self.name, self.bit_depth).categories

    @property
    def split_path(self) -> Path:
        """The split file for this dataset, seed, fractions and ``folders`` setting."""
        setting = {"seed": self.split_seed, "fractions": self.split_fractions, "folders": self.split_folders}
        return self.split_dir / f"{split_name(setting)}.json"

    def setup(self, stage: str | None = None) -> None:
        """Scan the images and load (or make and persist) the split. Idempotent."""
        if self.split is not None:
            return
        if self.synthetic is not None:
            self.source = SyntheticSource(
                CategorySet(self.classes or {}), self.synthetic.get("per_class", 40), self.image_size,
                self.synthetic.get("seed", 0),
            )
        else:
            self.source = FolderSource(self.root, CategorySet(self.classes) if self.classes else None, self.on_bad_file,
                                       self.name, self.bit_depth, scan_cache_path(self.split_dir.parent, self.root))
        self.records = self.source.scan()
        changed_advice = (
            f"restore the images; another dataset needs a dataset.name of its own (this one is {self.name!r}), so its "
            "split and artifacts are kept apart; or delete the split file to make a new split" if self.synthetic is None
            else "the synthetic images follow dataset.synthetic.per_class, dataset.synthetic.seed and "
                 "dataset.image_size: set those back, use another paths.artifacts, or delete the split file to make a "
                 "new split")
        self.split = load_or_create_split(self.split_path, self.records, self.categories.abbreviations,
                                          self.split_fractions, self.split_seed, changed_advice, self._folder_splits())
        info_once(log, "dataset %s: %d images in %d classes (%s layout), split %s", self.name, len(self.records),
                  len(self.categories), self.source.layout, self.split_path)
        if self.channels == 1 and self.source.colour_example is not None:
            warn_once(log, "dataset %s: its images are in colour (%s, for one) and are read as grayscale "
                           "(dataset.channels=1); dataset.channels=3 keeps the colour", self.name,
                           self.source.colour_example)
        if self.fit == "crop" and self.source.least_square is not None:
            path, (width, height) = self.source.least_square
            warn_once(log, "dataset %s: %d of its %d images are not square (%s, %d×%d, the most elongated): each is "
                           "centre-cropped to a square, which keeps %d %% of that one; dataset.fit=pad keeps whole images "
                           "(with black bars), dataset.fit=stretch squeezes them", self.name, self.source.not_square,
                           len(self.records), path, width, height, round(100 * square_share(width, height)))
        fewer_bits = self.fewer_bits_than_read()
        if fewer_bits is not None:
            value, path = self.source.high_bit_maximum
            warn_once(log, "dataset %s: its 16-bit files hold values up to %d (%s), which %d bits hold; read over the "
                           "full 16-bit range they come out dark (at most %d of 255 grey levels); if they are %d-bit "
                           "data, dataset.bit_depth=%d reads them at full contrast", self.name, value, path,
                           fewer_bits, round(value * 255 / 65535), fewer_bits, fewer_bits)
        groups = self.duplicate_groups()
        mislabelled = [(group, classes) for group, classes in zip(groups, self.classes_of_groups(groups))
                       if len(classes) > 1]
        if mislabelled:
            group, classes = mislabelled[0]
            warn_once(log, "dataset %s: %d group(s) of byte-identical images are filed under more than one class (%s, "
                           "for one, under %s), so a classifier learns one image under several labels; the split keeps "
                           "each group together, counted with the class of its first file; remove the copies that "
                           "are in the wrong class", self.name, len(mislabelled),
                      " and ".join(group[:2]) + (f" and {len(group) - 2} more" if len(group) > 2 else ""),
                      " and ".join(classes))
        if self.synthetic is None and (Path(str(self.root)).expanduser() / EXPORT_MARKER).is_file():
            warn_once(log, "dataset %s: %s was written by stage=export, so its generated images are split like real "
                           "ones, into validation and test too; to train a classifier on real + generated images, keep "
                           "the real dataset and give the folder as stage.generated=%s", self.name, self.root, self.root)

    @property
    def read_as(self) -> dict[str, Any]:
        """How the files become the pixels every stage receives (size, channels, bit depth, turned upright by their
        EXIF orientation): what a cache of values computed from those pixels is keyed by, beside the files' digests."""
        return {"size": self.image_size, "channels": self.channels, "bit_depth": self.bit_depth, "upright": "exif",
                "fit": self.fit}

    def _folder_splits(self) -> dict[str, str] | None:
        """With ``split_folders``, each record's split by its folder (a ``UserError`` for a dataset not laid out in
        split folders); ``None`` otherwise. Says in a log line how a split-folders dataset is split."""
        holders = ", ".join(getattr(self.source, "split_holders", []))
        if not self.split_folders:
            if holders:
                info_once(log, "dataset %s: the class folders of %s are pooled and split by dataset.split "
                               "(dataset.split.folders=true keeps the split of the folders)", self.name, holders)
            return None
        if not holders:
            raise UserError(f"dataset.split.folders=true keeps the split of a dataset laid out in split folders "
                            f"(train/, val/, test/, each holding the class folders), but dataset {self.name} is laid "
                            f"out as {self.source.layout}: drop it to split the images by dataset.split.fractions")
        split_of = {r.key: split_folder_of(r.key) for r in self.records}
        missing = [name for name in ("val", "test") if name not in split_of.values()]
        info_once(log, "dataset %s: the images keep the split of their folders %s (dataset.split.folders=true)%s",
                  self.name, holders, f"; its {' and '.join(missing)} images are taken from train by "
                                      f"dataset.split.fractions={self.split_fractions}" if missing else "")
        train = {r.digest: r.key for r in self.records if split_of[r.key] == "train"}
        leaked = [(r.key, train[r.digest]) for r in self.records if split_of[r.key] != "train" and r.digest in train]
        if leaked:
            warn_once(log, "dataset %s: %d validation or test image(s) are byte-identical to training images (%s is %s, "
                           "for one), so classifiers are tested on images they trained on", self.name, len(leaked),
                           *leaked[0])
        return split_of

    def fewer_bits_than_read(self) -> int | None:
        """With ``bit_depth`` unset, the fewest bits (8, 10, 12 or 14) that hold every value of the dataset's
        16-bit files; ``None`` when it has none, they need more, or ``bit_depth`` is set."""
        self._require_setup()
        found = self.source.high_bit_maximum
        return None if self.bit_depth is not None or found is None else fewest_bits(found[0])

    def _require_setup(self) -> Split:
        if self.split is None:
            self.setup()
        assert self.split is not None
        return self.split

    def select(self, split: str = "train", category: str | None = None, alpha: float | None = None) -> list[ImageRecord]:
        """Records of ``split`` (optionally only the α-subset of train, optionally one category), in key order. The
        run that selects them reads images by this split (``artifacts.note_split_read``)."""
        chosen = self._require_setup()
        note_split_read()
        if alpha is not None:
            if split != "train":
                raise UserError("alpha-subsets exist only for the train split")
            keys = set(chosen.alpha_subset(alpha))
        else:
            keys = set(chosen.keys(split))
        label = None if category is None else self.categories.abbreviations.index(self.categories.resolve(category))
        return sorted((r for r in self.records if r.key in keys and (label is None or r.label == label)), key=lambda r: r.key)

    def dataset(self, split: str = "train", category: str | None = None, alpha: float | None = None,
                transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> DefectImageDataset:
        """A torch ``Dataset`` over ``select(split, category, alpha)``."""
        return self.images(self.select(split, category, alpha), transform=transform)

    def images(self, records: Sequence[ImageRecord], source: Any = None,
               transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> DefectImageDataset:
        """``records`` of ``source`` (the dataset's own by default; ``PathSource`` for files elsewhere) as a torch
        ``Dataset`` of images read as this dataset reads its files (``conform``)."""
        return DefectImageDataset(records, self.source if source is None else source, self.channels, self.image_size,
                                  transform, self.fit)

    def conform(self, image: Image.Image) -> Image.Image:
        """``image`` as this dataset delivers its images: upright, in its channels, made square by its ``fit``, at its
        size."""
        return conform_image(image, self.channels, self.image_size, self.fit)

    def class_counts(self, split: str = "train", alpha: float | None = None) -> dict[str, int]:
        """Number of images per class abbreviation in a split (or α-subset)."""
        counts = Counter(r.label for r in self.select(split, alpha=alpha))
        return {abbr: counts.get(i, 0) for i, abbr in enumerate(self.categories.abbreviations)}

    def duplicate_groups(self) -> list[list[str]]:
        """Groups of keys whose files are byte-identical."""
        self._require_setup()
        by_digest: dict[str, list[str]] = {}
        for record in self.records:
            by_digest.setdefault(record.digest, []).append(record.key)
        return sorted(sorted(keys) for keys in by_digest.values() if len(keys) > 1)

    def classes_of_groups(self, groups: list[list[str]]) -> list[list[str]]:
        """For each group of keys, the class abbreviations of its images, each once, in the dataset's class order."""
        label_of = {r.key: r.label for r in self.records}
        abbreviations = self.categories.abbreviations
        return [[abbreviations[i] for i in sorted({label_of[key] for key in group})] for group in groups]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.dataset(split), batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


__all__ = ["DefectDataModule", "DefectImageDataset"]
