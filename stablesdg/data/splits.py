"""Stratified, seeded, persisted train/val/test splits and nested α-subsets of the training split.

* Byte-identical images (same content digest) form one group and always land in the same split.
* Each class is split on its own, so every split has the configured share of every class.
* The split is written once to a JSON file and read back by every later stage and run; a
  file lock makes concurrent jobs agree on one split.
* α-subsets take, per class, the first ``round(α·n)`` images of a fixed seeded order of that
  class's training images, so the 0.4 subset lies inside the 0.6 one, inside the 0.8 one.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from stablesdg.atomic_files import made_once, read_json, write_json_atomic
from stablesdg.choices import SPLIT_NAMES
from stablesdg.data.settings import require_split_fractions
from stablesdg.data.sources import ImageRecord
from stablesdg.errors import UserError

SPLIT_FORMAT_VERSION = 1


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def empty_split_advice(fractions: Sequence[float], class_sizes: Mapping[str, int], empty: Sequence[str]) -> str:
    """What to set so that the splits ``empty`` hold images: a share for a split given none, or, where a share is too
    small to round to one image of the smallest class (0.1 of 4 images), ``dataset.split.fractions`` that give every
    class an image in each split."""
    abbreviation, smallest = min(class_sizes.items(), key=lambda item: item[1])
    if smallest < len(SPLIT_NAMES):
        return f"class {abbreviation} has {smallest} image{'s' if smallest != 1 else ''}: each class needs at least 3"
    held_out = max(0.1, math.ceil(100 / smallest) / 100)  # at least the share of which the smallest class rounds to one
    example = f"dataset.split.fractions=[{round(1 - 2 * held_out, 2):g},{held_out:g},{held_out:g}]"
    shares = dict(zip(SPLIT_NAMES, fractions))
    if any(shares[name] == 0 for name in empty):
        return f"give each a share, e.g. {example}"
    return (f"class {abbreviation} has only {smallest} images, too few for a share of "
            f"{min(shares[name] for name in empty):g} to hold one; e.g. {example}")


def dataset_fingerprint(records: Sequence[ImageRecord]) -> str:
    """SHA-256 over the sorted ``(key, label, digest)`` triples: changes if any image changes."""
    lines = sorted(f"{r.key}\t{r.label}\t{r.digest}" for r in records)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


@dataclass
class Split:
    """Sorted record keys per split, plus each class's seeded order of training keys (for α-subsets)."""

    train: list[str]
    val: list[str]
    test: list[str]
    train_order: dict[str, list[str]] = field(default_factory=dict)

    def keys(self, name: str) -> list[str]:
        """Keys of split ``name`` (``train``, ``val`` or ``test``)."""
        if name not in SPLIT_NAMES:
            raise UserError(f"unknown split {name!r}; choose from {SPLIT_NAMES}")
        return getattr(self, name)

    def alpha_subset(self, alpha: float) -> list[str]:
        """Training keys of the stratified α-subset: per class the first ``round(α·n)`` of its order."""
        if not 0.0 < alpha <= 1.0:
            raise UserError(f"alpha must be in (0, 1], got {alpha}")
        subset = []
        for order in self.train_order.values():
            subset += order[: _round_half_up(alpha * len(order))]
        return subset


def _group_by_content(records: Sequence[ImageRecord]) -> dict[int, list[list[str]]]:
    """Per class label, the groups of keys sharing one digest (a group's class is its first key's)."""
    by_digest: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.key):
        by_digest[record.digest].append(record)
    groups: dict[int, list[list[str]]] = defaultdict(list)
    for members in by_digest.values():
        groups[members[0].label].append([m.key for m in members])
    for label in groups:
        groups[label].sort()
    return groups


def make_split(records: Sequence[ImageRecord], class_names: Sequence[str], fractions: Sequence[float], seed: int) -> Split:
    """Split ``records`` into train/val/test with ``fractions`` per class, deterministically from ``seed``.

    Val and test get ``round(f·n)`` images of each class (exact unless duplicate groups make
    that impossible); train gets the rest.
    """
    fractions = require_split_fractions(fractions)
    split = Split([], [], [])
    for label, groups in sorted(_group_by_content(records).items()):
        rng = np.random.default_rng([seed, label])
        shuffled = [groups[i] for i in rng.permutation(len(groups))]
        total = sum(len(g) for g in groups)
        targets = {"val": _round_half_up(fractions[1] * total), "test": _round_half_up(fractions[2] * total)}
        counts = {"val": 0, "test": 0}
        class_train: list[str] = []
        for group in shuffled:
            for name in ("test", "val"):
                if counts[name] + len(group) <= targets[name]:
                    getattr(split, name).extend(group)
                    counts[name] += len(group)
                    break
            else:
                class_train.extend(group)
        split.train.extend(class_train)
        order_rng = np.random.default_rng([seed, label, 1])
        split.train_order[class_names[label]] = [class_train[i] for i in order_rng.permutation(len(class_train))]
    return Split(sorted(split.train), sorted(split.val), sorted(split.test), split.train_order)


def make_folder_split(records: Sequence[ImageRecord], split_of: Mapping[str, str], class_names: Sequence[str],
                      fractions: Sequence[float], seed: int) -> Split:
    """Keep each record in the split its folder names (``split_of``: key -> ``train``, ``val`` or ``test``).

    A split that no folder names takes its share of ``fractions`` from each class of the ``train`` folder's images
    (as ``make_split`` takes it from a whole class), so a dataset that came as train/ and validation/ gets a test
    split; the training images' seeded order (for α-subsets) is ``make_split``'s. A one-line ``UserError`` when no
    folder holds training images.
    """
    fractions = require_split_fractions(fractions)
    named = set(split_of[r.key] for r in records)
    if "train" not in named:
        raise UserError(f"dataset.split.folders=true needs a folder of training images (train/ or training/); the "
                        f"dataset's split folders hold only {', '.join(n for n in SPLIT_NAMES if n in named)} images")
    carved = [0.0 if name in named else fractions[i] for i, name in ((1, "val"), (2, "test"))]
    split = make_split([r for r in records if split_of[r.key] == "train"], class_names, [1.0 - sum(carved), *carved],
                       seed)
    kept = {name: [r.key for r in records if split_of[r.key] == name] for name in ("val", "test")}
    return Split(split.train, sorted(split.val + kept["val"]), sorted(split.test + kept["test"]), split.train_order)


def _split_to_json(split: Split, class_names: Sequence[str], fingerprint: str, fractions: Sequence[float],
                   seed: int) -> dict:
    return {
        "format_version": SPLIT_FORMAT_VERSION,
        "classes": list(class_names),  # read to name the classes a split of other images was made for
        "seed": seed,
        "fractions": list(fractions),
        "dataset_fingerprint": fingerprint,
        "sizes": {name: len(split.keys(name)) for name in SPLIT_NAMES},
        **{name: split.keys(name) for name in SPLIT_NAMES},
        "train_order": split.train_order,
    }


_SPLIT_KEYS = {"seed", "fractions", "dataset_fingerprint", "train_order", *SPLIT_NAMES}
RESTORE_ADVICE = "restore the images, or delete the split file to make a new split"


def load_or_create_split(
    path: str | Path, records: Sequence[ImageRecord], class_names: Sequence[str], fractions: Sequence[float], seed: int,
    changed_advice: str = RESTORE_ADVICE, split_of: Mapping[str, str] | None = None,
) -> Split:
    """Read the split persisted at ``path``, or make it from ``records`` (by their folders' splits ``split_of``,
    ``make_folder_split``, where given) and persist it.

    A persisted split made for other images (different fingerprint), another seed or other
    fractions is refused with a message (ending in ``changed_advice`` for other images), never
    silently replaced.
    """
    path = Path(path)
    fingerprint = dataset_fingerprint(records)
    with made_once(path):
        if not path.exists():
            split = make_split(records, class_names, fractions, seed) if split_of is None else \
                make_folder_split(records, split_of, class_names, fractions, seed)
            write_json_atomic(path, _split_to_json(split, class_names, fingerprint, fractions, seed))
            return split
        stored = read_json(path)
        if (not isinstance(stored, dict) or stored.get("format_version") != SPLIT_FORMAT_VERSION
                or not _SPLIT_KEYS <= stored.keys()):
            raise UserError(f"split file {path} has an unknown format; delete it to make a new split")
        if stored["dataset_fingerprint"] != fingerprint and stored.get("classes", class_names) != list(class_names):
            raise UserError(f"split file {path} was made for the classes {', '.join(stored['classes'])}, and this "
                            f"run reads {', '.join(class_names)} (dataset.classes): a dataset of other classes needs "
                            "a dataset.name of its own, so that its split and artifacts are kept apart")
        if stored["dataset_fingerprint"] != fingerprint:
            raise UserError(f"split file {path} was made for a different set of images (the dataset changed); "
                            f"{changed_advice}")
        if stored["seed"] != seed or not np.allclose(stored["fractions"], list(fractions)):
            raise UserError(f"split file {path} has seed {stored['seed']} and fractions {stored['fractions']}, "
                            f"the config asks for seed {seed} and fractions {list(fractions)}")
        return Split(stored["train"], stored["val"], stored["test"], stored["train_order"])
