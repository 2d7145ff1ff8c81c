"""Defect category names: paper abbreviations (``Pa``) and full names (``patches``)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from stablesdg.errors import UserError
from stablesdg.store_layout import require_unreserved_classes


def class_label(abbreviation: str, full_name: str) -> str:
    """``Cr (crazing)`` for messages and figures; the name alone where both are one (``dent``)."""
    return abbreviation if abbreviation == full_name else f"{abbreviation} ({full_name})"


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def require_class_map(classes: object) -> None:
    """A one-line ``UserError`` unless ``classes`` (``dataset.classes``) is a mapping, abbreviation -> full name."""
    if not isinstance(classes, Mapping):
        raise UserError(f"dataset.classes must map each class's abbreviation to its full name, e.g. "
                        f"{{Pa: patches, Sc: scratches}}, got {classes!r}")


class CategorySet:
    """The ordered classes of a dataset; index ``i`` is the class label ``i``.

    Built from a mapping ``abbreviation -> full name`` (for example ``{"Pa": "patches"}``).
    Names are matched case-insensitively, ignoring ``_``, ``-`` and spaces, so ``Pa``,
    ``patches``, ``rolled-in_scale`` and ``RS`` all resolve.
    """

    def __init__(self, classes: Mapping[str, str]):
        require_class_map(classes)
        if not classes:
            raise UserError("a dataset needs at least one class")
        self.abbreviations: list[str] = [str(a) for a in classes]
        require_unreserved_classes(self.abbreviations)
        self.full_names: list[str] = [str(classes[a]) for a in classes]
        self._lookup: dict[str, int] = {}
        for index, (abbr, full) in enumerate(zip(self.abbreviations, self.full_names)):
            for alias in (abbr, full):
                key = _normalise(alias)
                if self._lookup.get(key, index) != index:
                    raise UserError(f"class name {alias!r} is ambiguous in {dict(classes)}")
                self._lookup[key] = index

    def __len__(self) -> int:
        return len(self.abbreviations)

    def index_of(self, name: str) -> int | None:
        """Class index for an abbreviation or full name, or None if it names no class."""
        return self._lookup.get(_normalise(str(name)))

    def other_class_named(self, name: str, index: int) -> str | None:
        """The abbreviation of the class ``name`` names (a folder's name), where that is a class other than ``index``;
        else None: a flat folder of one class's images named after another holds that other class's images."""
        named = self.index_of(name)
        return None if named is None or named == index else self.abbreviations[named]

    def resolve(self, name: str) -> str:
        """Canonical abbreviation for ``name``; a ``UserError`` listing the valid names otherwise."""
        index = self.index_of(name)
        if index is None:
            raise UserError(f"unknown category {name!r}; valid categories: {self.describe()}")
        return self.abbreviations[index]

    def describe(self) -> str:
        """``Cr (crazing), In (inclusion), ...`` for messages."""
        return ", ".join(class_label(abbr, full) for abbr, full in zip(self.abbreviations, self.full_names))
