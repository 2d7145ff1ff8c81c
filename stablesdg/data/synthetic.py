"""Procedural steel-surface textures with defect-like marks: a dataset that needs no files.

Each class draws a visually distinct defect on a rolled-steel background (horizontal
streaks). Images are a pure function of ``(seed, class, index)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SYNTHETIC_CLASSES = {
    "Cr": "crazing",
    "Pa": "patches",
    "PS": "pitted_surface",
    "Sc": "scratches",
}


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.uniform(100, 160)
    streaks = rng.normal(0.0, 12.0, size=(size, max(2, size // 16)))
    image = Image.fromarray(np.clip(base + streaks, 0, 255).astype(np.uint8), mode="L")
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    grain = rng.normal(0.0, 6.0, size=(size, size))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8), mode="L")


def _crazing(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    for _ in range(int(rng.integers(25, 40))):
        x, y = rng.uniform(0, size, 2)
        for _ in range(int(rng.integers(2, 5))):
            angle = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(0.04, 0.12) * size
            nx, ny = x + length * np.cos(angle), y + length * np.sin(angle)
            draw.line([(x, y), (nx, ny)], fill=int(rng.uniform(40, 80)), width=1)
            x, y = nx, ny


def _patches(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        rx, ry = rng.uniform(0.08, 0.22, 2) * size
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(rng.uniform(20, 60)))


def _pitted(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    for _ in range(int(rng.integers(40, 80))):
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(0.008, 0.025) * size
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=int(rng.uniform(10, 50)))


def _scratches(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    angle = rng.uniform(0, np.pi)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.2, 0.8, 2) * size
        half = rng.uniform(0.3, 0.6) * size
        dx, dy = half * np.cos(angle), half * np.sin(angle)
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=int(rng.uniform(200, 250)), width=max(1, size // 48))


_DRAWERS = {"Cr": _crazing, "Pa": _patches, "PS": _pitted, "Sc": _scratches}


def render_synthetic_defect(abbreviation: str, index: int, size: int, seed: int) -> Image.Image:
    """Render image ``index`` of class ``abbreviation`` (one of ``SYNTHETIC_CLASSES``) as 8-bit grayscale.

    The same arguments always give the same pixels. The image is the caller's own: a run that reads the set again
    (a scan for digests, then each load) gets copies of the images rendered first.
    """
    return _rendered(abbreviation, index, size, seed).copy()


@lru_cache(maxsize=1024)  # 1,024 images: 4 MB at 64 x 64, 64 MB at 256 x 256
def _rendered(abbreviation: str, index: int, size: int, seed: int) -> Image.Image:
    class_index = list(SYNTHETIC_CLASSES).index(abbreviation)
    rng = np.random.default_rng([seed, class_index, index])
    image = _background(rng, size)
    _DRAWERS[abbreviation](ImageDraw.Draw(image), rng, size)
    return image.filter(ImageFilter.GaussianBlur(radius=size / 256))
