"""PNG figures (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from stablesdg.artifacts import save_png_atomic


def heatmap_png(values: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str], path: Path, *,
                xlabel: str, ylabel: str, fmt: str = "{:g}", title: str | None = None, cmap: str = "Blues") -> None:
    """A labelled heatmap of ``values`` with each cell's value written in it (NaN cells left blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

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
    figure.tight_layout()
    figure.canvas.draw()
    image = Image.frombuffer("RGBA", figure.canvas.get_width_height(), figure.canvas.buffer_rgba()).convert("RGB")
    plt.close(figure)
    save_png_atomic(path, image)
