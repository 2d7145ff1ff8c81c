"""PNG figures (matplotlib, headless)."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from stablesdg.atomic_files import save_png_atomic
from stablesdg.once import warn_once

log = logging.getLogger(__name__)

MISSING_GLYPH = re.compile(r"^Glyph (\d+) .*missing from font\(s\) (.+?)\.?$")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    from PIL import Image

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        figure.tight_layout()
        figure.canvas.draw()
    missing: dict[str, str] = {}  # character -> the fonts that lack it
    for warning in said:
        found = MISSING_GLYPH.match(str(warning.message))
        if found is None:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        else:
            missing[chr(int(found[1]))] = found[2]
    if missing:  # a class folder's name in a script the font lacks (Chinese, say): one line, not one per character
        warn_once(log, "figures: the characters %s are not in the font %s, so they show as boxes in the figures; name "
                  "a font that has them in matplotlib's font.family (a matplotlibrc)", "".join(missing),
                  next(iter(missing.values())))
    image = Image.frombuffer("RGBA", figure.canvas.get_width_height(), figure.canvas.buffer_rgba()).convert("RGB")
    _pyplot().close(figure)
    save_png_atomic(path, image)


def heatmap_png(values: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str], path: Path, *,
                xlabel: str, ylabel: str, fmt: str = "{:g}", title: str | None = None, cmap: str = "Blues") -> None:
    """A labelled heatmap of ``values`` with each cell's value written in it (NaN cells left blank)."""
    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    figure, axes = plt.subplots(figsize=(1.2 + 0.8 * len(column_labels), 1.0 + 0.6 * len(row_labels)), dpi=120)
    axes.imshow(np.ma.masked_invalid(values), cmap=cmap)
    axes.set_xticks(range(len(column_labels)), list(column_labels))
    axes.set_yticks(range(len(row_labels)), list(row_labels))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (row, col), value in np.ndenumerate(values):
        if np.isfinite(value):
            axes.text(col, row, fmt.format(value), ha="center", va="center", fontsize=8,
                      color="white" if value > middle else "black")
    _save(figure, path)


def lines_png(x_labels: Sequence[str], series: dict[str, Sequence[float | None]], path: Path, *, xlabel: str,
              title: str | None = None) -> None:
    """One panel per series of ``series`` over the same x labels (missing points left out)."""
    plt = _pyplot()
    figure, panels = plt.subplots(1, len(series), figsize=(4.0 * len(series), 3.2), dpi=120, squeeze=False)
    for axes, (name, values) in zip(panels[0], series.items()):
        points = [(i, v) for i, v in enumerate(values) if v is not None]
        axes.plot([i for i, _ in points], [v for _, v in points], marker="o")
        axes.set_xticks(range(len(x_labels)), list(x_labels))
        axes.set_xlabel(xlabel)
        axes.set_ylabel(name)
    if title:
        figure.suptitle(title)
    _save(figure, path)


def bars_png(group_labels: Sequence[str], series: dict[str, Sequence[float | None]], path: Path, *, ylabel: str,
             title: str | None = None) -> None:
    """Grouped bars: one group per label of ``group_labels``, one bar per series (missing bars left out)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(1.6 + 1.2 * len(group_labels), 3.6), dpi=120)
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, v in enumerate(values) if v is not None]
        axes.bar(xs, [v for v in values if v is not None], width=width, label=name)
    axes.set_xticks(range(len(group_labels)), list(group_labels))
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=7)
    if title:
        axes.set_title(title)
    _save(figure, path)
