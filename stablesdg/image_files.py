"""Which files in a folder are images: the one listing that every reader of an image folder uses (datasets,
generated sets, external imports, DreamBooth's class images). Imports nothing heavy, so settings checks run it
before torch loads."""

from __future__ import annotations

from pathlib import Path

from stablesdg.choices import IMAGE_EXTENSIONS


def image_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """The files in ``folder`` (and, when ``recursive``, in its sub-folders) whose extension is one of
    ``IMAGE_EXTENSIONS``, in any case, sorted by path. Files and folders whose names start with ``.`` are skipped:
    macOS's ``._*`` AppleDouble files beside each image of an archive, ``.ipynb_checkpoints``, caches."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))
