"""What scanning a dataset learns of each image file, and the cache that keeps it between commands.

A scan decodes every file once to check it and to note its digest, size, colour and largest value. Each command (and
each step of a pipeline, each point of a sweep) scans its dataset again, which for a dataset of thousands of large
images takes minutes; so the facts of each file are kept in a JSON file in the artifact store, keyed by the file's
path and by its size, modification and change times and inode, and a file whose ``os.stat`` still gives all four is
not read again. A file that changed, was added or replaced is decoded as on the first scan.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from stablesdg.atomic_files import made_once, write_bytes_atomic
from stablesdg.data.images import decode_image, has_colour, high_bit_maximum
from stablesdg.store_layout import ALL_CATEGORIES, CACHE_DIR

FORMAT = 1  # the cache file's layout: a file of another is read as empty


@dataclass(frozen=True)
class ImageFacts:
    """What a scan needs of one image file: its bytes' MD5, its width and height, whether it holds colour, and the
    largest value of a 16-bit file (None for other files)."""

    digest: str
    size: tuple[int, int]
    colour: bool
    high_bit_maximum: int | None


def read_image_facts(path: Path) -> ImageFacts:
    """Read and fully decode ``path`` (a ``BadImageError`` naming it if it is no image) and return its facts."""
    data = path.read_bytes()
    image = decode_image(data, path)
    return ImageFacts(hashlib.md5(data).hexdigest(), image.size, has_colour(image), high_bit_maximum(image))


def _stat_key(path: Path) -> list[int]:
    state = os.stat(path)
    return [state.st_size, state.st_mtime_ns, state.st_ctime_ns, state.st_ino]


class ScanCache:
    """The facts of the image files under ``root`` from the last scan, read from ``path`` (a missing, damaged or other
    root's file is an empty cache); ``path`` None keeps nothing between scans."""

    def __init__(self, path: Path | None, root: Path):
        self.path = path
        self.root = str(Path(root).resolve())
        self._known: dict[str, dict] = {}
        self._seen: dict[str, dict] = {}
        if path is not None and path.is_file():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                stored = {}
            if isinstance(stored, dict) and stored.get("format") == FORMAT and stored.get("root") == self.root:
                self._known = stored.get("files") or {}

    def facts(self, path: Path, key: str) -> ImageFacts:
        """The facts of the file ``path`` (``key``: its path under the root): as kept, when ``os.stat`` gives what it
        gave when they were read, else read (``read_image_facts``) now. Its stat is taken before it is read, so a file
        changed while it is read is read again by the next scan."""
        stat_key = _stat_key(path)
        entry = self._known.get(key)
        if entry is not None and entry.get("stat") == stat_key:
            facts = ImageFacts(entry["digest"], tuple(entry["size"]), entry["colour"], entry["high_bit_maximum"])
        else:
            facts = read_image_facts(path)
        self._seen[key] = {"stat": stat_key, **asdict(facts), "size": list(facts.size)}
        return facts

    def save(self) -> None:
        """Keep the facts of the files this scan saw (and only those) for the next, written atomically; nothing is
        written when they are what was kept."""
        if self.path is None or self._seen == self._known:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path, json.dumps({"format": FORMAT, "root": self.root, "files": self._seen},
                                                 sort_keys=True).encode("utf-8"))


@contextmanager
def scan_kept_in(path: Path | None, root: Path) -> Iterator[ScanCache]:
    """The ``ScanCache`` of ``root`` kept at ``path``, saved when the scan that uses it ends without an error.
    Concurrent scans of one dataset (the jobs of a multirun) take turns (``made_once``): the first reads the files,
    the others what it kept."""
    with made_once(path) if path is not None else nullcontext():
        cache = ScanCache(path, root)
        yield cache
        cache.save()


def scan_cache_path(store_dir: Path, root: str | Path) -> Path:
    """Where the scan facts of the dataset folder ``root`` are kept, in the dataset's folder ``store_dir`` of the
    artifact store: ``all/_cache/scan-<hash of root's absolute path>.json``."""
    digest = hashlib.sha256(str(Path(root).expanduser().resolve()).encode("utf-8")).hexdigest()[:16]
    return Path(store_dir) / ALL_CATEGORIES / CACHE_DIR / f"scan-{digest}.json"
