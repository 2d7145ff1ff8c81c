"""Image grids with a label on each row: ``labelled_grid``, and from it the real-versus-generated grids (paper
Figs. 5 and 7): per category, a row of real training images, then a row per generated set (method) found in
the artifact store."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.v2.functional import pil_to_tensor, to_dtype, to_pil_image
from torchvision.utils import make_grid

from stablesdg.atomic_files import save_png_atomic
from stablesdg.errors import UserError
from stablesdg.generated import GENERATE_STAGE, manifest_images
from stablesdg.store_layout import SPLITS_DIR

log = logging.getLogger(__name__)


def labelled_grid(rows: Sequence[Sequence[torch.Tensor]], labels: Sequence[str], padding: int = 2) -> Image.Image:
    """One row of tiles per label, on white, with the label on the row's left. Tiles are ``C×H×W`` images of one
    size (1 or 3 channels; uint8, or float in [0, 1]); a row shorter than the longest ends in blank tiles, so
    every row starts in its own column. A row may be empty (its label with blank tiles)."""
    tiles = [tile for row in rows for tile in row]
    if not tiles or len(rows) != len(labels):
        raise ValueError(f"labelled_grid needs some tiles and one label per row, got {len(tiles)} tiles, "
                         f"{len(rows)} rows and {len(labels)} labels")
    size = tiles[0].shape[-2:]
    per_row = max(len(row) for row in rows)
    blank = torch.full((3, *size), 255, dtype=torch.uint8)
    ordered = []
    for row in rows:
        ordered += [to_dtype(tile, torch.uint8, scale=True).expand(3, -1, -1) for tile in row]
        ordered += [blank] * (per_row - len(row))
    grid = to_pil_image(make_grid(torch.stack(ordered), nrow=per_row, padding=padding, pad_value=255))
    font_size = max(10, size[0] // 8)
    font = ImageFont.load_default(size=font_size)
    gap = font_size // 2  # left of each label and between the longest label and the tiles
    margin = int(max(ImageDraw.Draw(grid).textlength(label, font=font) for label in labels)) + 2 * gap
    out = Image.new("RGB", (margin + grid.width, grid.height), "white")
    out.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(out)
    for i, label in enumerate(labels):
        draw.text((gap, padding + i * (size[0] + padding) + size[0] // 2), label, fill="black", font=font, anchor="lm")
    return out


def dataset_root_now(dataset_config: dict[str, Any], roots: dict[str, str]) -> str | None:
    """Where the images of the dataset a run recorded as ``dataset_config`` are now: the folder ``roots`` gives for
    its name (``report --dataset-root NAME=DIR``), else the root its run read where that is still a folder, else the
    root its dataset's config gives now (``$STABLESDG_NEU_ROOT`` for ``neu``) where that is one: a dataset moved, or a
    store read on another machine than its runs'. Which images these are is for the dataset's split file to check.
    A one-line ``UserError`` where none holds them."""
    name, recorded = str(dataset_config.get("name")), dataset_config.get("root")
    if name in roots:
        return roots[name]
    if recorded is None or Path(recorded).is_dir():
        return recorded
    current = _configured_root(name)
    if current is not None and Path(current).is_dir():
        return current
    raise UserError(f"the images its runs read, in {recorded}, are not there; give --dataset-root {name}=<the "
                    "folder they are in now>")


def _configured_root(name: str) -> str | None:
    """The ``root`` of the config in ``conf/dataset/`` whose ``name`` is ``name``, resolved now (its environment
    variable, or its default); None where no config names it or its root does not resolve."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for file in sorted((Path(__file__).resolve().parent / "conf" / "dataset").glob("*.yaml")):
        config = OmegaConf.load(file)
        if config.get("name") == name:
            try:
                root = OmegaConf.select(config, "root")
            except OmegaConfBaseException:
                return None
            return None if root is None else str(root)
    return None


def _real_images(datasets: dict[str, Any], dataset_config: dict[str, Any], store: Path, category: str,
                 count: int, roots: dict[str, str]) -> list:
    """The first ``count`` distinct training images of ``category``, by the split file of the store at ``store`` (where
    the run that recorded ``dataset_config`` kept it, wherever that store has moved since), from where the dataset is
    now (``dataset_root_now``); each dataset config is scanned (and warns) once, its module kept in ``datasets``."""
    from hydra.utils import instantiate

    # the folder the run recorded is where the store was then: a store moved or copied since is not written there
    dataset_config = {**dataset_config, "root": dataset_root_now(dataset_config, roots),
                      "split_dir": str(store / str(dataset_config["name"]) / SPLITS_DIR)}
    key = json.dumps(dataset_config, sort_keys=True, default=str)
    if key not in datasets:
        dm = instantiate(dataset_config)
        dm.setup()
        datasets[key] = dm
    real = datasets[key].dataset("train", category=category)
    return [real.load_image(i) for i in real.distinct_indices(count)]


def _tensor(image, size: int) -> torch.Tensor:
    return pil_to_tensor(image.convert("RGB").resize((size, size)))


def comparison_grids(records: list[dict[str, Any]], store: str | Path, out_dir: Path, per_row: int = 8,
                     size: int = 128, roots: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Write ``<dataset>_<category>.png`` per category with a finished generated set among ``records``, read from
    the artifact store at ``store``, its real images from where ``dataset_root_now`` finds them (``roots``: a
    dataset's folder by its name); return one entry per grid: its path and its row labels (``real``, then the
    variants)."""
    sets: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        # a variant's generated set, whichever stage made it (generate, sample, external): not a sweep point's
        if Path(record["_path"]).parent.name == GENERATE_STAGE:
            sets.setdefault((record["dataset"], record["category"]), []).append(record)
    written, datasets = [], {}
    for (dataset, category), found in sorted(sets.items()):
        found.sort(key=lambda r: r["variant"])
        rows, labels = [], []
        try:
            real = _real_images(datasets, found[0]["config"]["dataset"], Path(store), category, per_row, roots or {})
            rows.append([_tensor(im, size) for im in real])
            labels.append("real")
        except (UserError, OSError, KeyError, TypeError) as err:
            log.warning("grid %s/%s: no real row (%s)", dataset, category, err)
        for record in found:
            files = manifest_images(Path(record["_path"]).parent)[:per_row]
            rows.append([_tensor(Image.open(f), size) for f in files])
            labels.append(record["variant"])
        if not any(rows):
            log.warning("grid %s/%s: no image to show", dataset, category)
            continue
        path = out_dir / f"{dataset}_{category}.png"
        save_png_atomic(path, labelled_grid(rows, labels))
        written.append({"path": path, "rows": labels, "dataset": dataset, "category": category})
    return written
