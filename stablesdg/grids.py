"""Real-versus-generated image grids (paper Figs. 5 and 7): per category, a row of real training images,
then a row per generated set (method) found in the artifact store."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

from stablesdg.artifacts import save_png_atomic
from stablesdg.errors import UserError
from stablesdg.generated import GENERATE_STAGE, manifest_images

log = logging.getLogger(__name__)


def _real_images(dataset_config: dict[str, Any], category: str, count: int) -> list:
    from hydra.utils import instantiate

    dm = instantiate(dataset_config)
    dm.setup()
    real = dm.dataset("train", category=category)
    return [real.load_image(i) for i in range(min(count, len(real)))]


def _tensor(image, size: int) -> torch.Tensor:
    return pil_to_tensor(image.convert("RGB").resize((size, size)))


def comparison_grids(records: list[dict[str, Any]], out_dir: Path, per_row: int = 8, size: int = 128) -> list[dict[str, Any]]:
    """Write ``<dataset>_<category>.png`` per category with a finished generated set; return one entry per
    grid: its path and its row labels (``real``, then the variants)."""
    sets: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        if record["stage"] == GENERATE_STAGE and Path(record["_path"]).parent.name == GENERATE_STAGE:
            sets.setdefault((record["dataset"], record["category"]), []).append(record)
    written = []
    for (dataset, category), found in sorted(sets.items()):
        found.sort(key=lambda r: r["variant"])
        rows, labels = [], []
        try:
            real = _real_images(found[0]["config"]["dataset"], category, per_row)
            rows.append([_tensor(im, size) for im in real])
            labels.append("real")
        except (UserError, OSError, KeyError, TypeError) as err:
            log.warning("grid %s/%s: no real row (%s)", dataset, category, err)
        for record in found:
            files = manifest_images(Path(record["_path"]).parent)[:per_row]
            rows.append([_tensor(Image.open(f), size) for f in files])
            labels.append(record["variant"])
        tiles = []
        for row in rows:  # pad short rows so every method keeps its own row
            tiles += row + [torch.zeros(3, size, size, dtype=torch.uint8)] * (per_row - len(row))
        grid = make_grid(torch.stack(tiles), nrow=per_row, padding=2)
        path = out_dir / f"{dataset}_{category}.png"
        save_png_atomic(path, to_pil_image(grid))
        written.append({"path": path, "rows": labels, "dataset": dataset, "category": category})
    return written
