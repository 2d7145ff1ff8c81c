"""Which files in a folder are images: the one listing that every reader of an image folder uses (datasets,
generated sets, external imports, DreamBooth's class images). Imports nothing heavy, so settings checks run it
before torch loads."""

from __future__ import annotations

from pathlib import Path

from stablesdg.choices import IMAGE_EXTENSIONS


def is_hidden(name: str) -> bool:
    """Whether a file or folder named ``name`` is no part of a dataset, whatever it holds: a name starting with ``.``
    (macOS's ``._*`` AppleDouble files beside each image of an archive, ``.ipynb_checkpoints``, caches), or
    ``__MACOSX``, the folder of those files in a zip made on a Mac."""
    return name.startswith(".") or name == "__MACOSX"


def image_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """The files in ``folder`` (and, when ``recursive``, in its sub-folders) whose extension is one of
    ``IMAGE_EXTENSIONS``, in any case, sorted by path; files and folders that ``is_hidden`` are skipped."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(is_hidden(part) for part in p.relative_to(folder).parts))
