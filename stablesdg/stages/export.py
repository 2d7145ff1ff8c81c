"""``stage=export``: a generated set, optionally with the real training images, copied out of the artifact store
into one folder that any image-classification code reads: ``<stage.out>/<class name>/<image>.png`` (the class's full
name, NEU's layout) and ``<stage.out>/manifest.csv``.

The folder appears whole or not at all (``atomic_files.staged_folder``). A folder this stage wrote before (it holds ``.stablesdg-export.json``) is replaced; any other folder with files is refused.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from stablesdg import artifacts, atomic_files
from stablesdg.data import DefectDataModule
from stablesdg.data.images import read_image_file
from stablesdg.errors import UserError
from stablesdg.generated import (
    EXPORT_MARKER, GENERATE_STAGE, MANIFEST_FILE, generated_images, how_to_make_more, manifest_rows, reads_folder,
)
from stablesdg.progress import progress_bar
from stablesdg.stages.checks import check_export, export_folder

log = logging.getLogger(__name__)


def _generated_rows(cfg: DictConfig, dm: DefectDataModule, label: int, files: list[Path]) -> list[dict[str, Any]]:
    """One row per generated file of class ``label``: where it came from and, for a set of the store, the columns of
    its manifest (seed, source image, s, ω, ...)."""
    source = str(cfg.stage.generated)
    columns: list[dict[str, str]] = [{} for _ in files]
    if not reads_folder(source, cfg.paths.artifacts, dm.name, dm.categories):
        stored = artifacts.stage_dir(cfg.paths.artifacts, dm.name, dm.categories.abbreviations[label], source,
                                     GENERATE_STAGE)
        columns = manifest_rows(stored / MANIFEST_FILE)
    return [{"origin": "generated", "source": str(path), **{k: v for k, v in row.items() if k != "file"}}
            for path, row in zip(files, columns)]


def _planned_images(cfg: DictConfig, dm: DefectDataModule) -> list[tuple[str, Any, dict[str, Any]]]:
    """(file in the export, what loads its image, its manifest row) for every image, class by class: the generated
    ones as ``generated_<i>.png``, then the real ones under their own names."""
    stage = cfg.stage
    labels = [dm.categories.index_of(cfg.category)] if cfg.category is not None else list(range(len(dm.categories)))
    generated = generated_images(stage.generated, cfg.paths.artifacts, dm.name, dm.categories, labels)
    missing = [dm.categories.abbreviations[label] for label in labels if not generated.get(label)]
    if missing:
        remedy = how_to_make_more(stage.generated, cfg.paths.artifacts, dm.name, missing[0], 0)
        raise UserError(f"stage.generated={stage.generated} has no images of {', '.join(missing)}; {remedy} (or export "
                        "only a class it has: category=<class>)")
    plan = []
    for label in labels:
        abbreviation, folder = dm.categories.abbreviations[label], dm.categories.full_names[label]
        files = generated[label]
        names: dict[str, str] = {}  # file in the export -> what it comes from
        for i, (path, row) in enumerate(zip(files, _generated_rows(cfg, dm, label, files))):
            names[f"{folder}/generated_{i:05d}.png"] = str(path)
            plan.append((f"{folder}/generated_{i:05d}.png", path, {"class": abbreviation, **row}))
        if stage.real:
            real = dm.dataset("train", category=abbreviation, alpha=stage.get("alpha"))
            for index, record in enumerate(real.records):
                name = f"{folder}/{Path(record.key).stem}.png"
                if name in names:  # day1/x.png beside day2/x.png, or train/x.png beside val/x.png: its path names it
                    name = f"{folder}/{'_'.join(Path(record.key).with_suffix('').parts)}.png"
                if name in names:
                    raise UserError(f"{names[name]} and the real image {record.key} of {abbreviation} would both be "
                                    f"exported as {name}; rename one")
                names[name] = record.key
                plan.append((name, (real, index), {"class": abbreviation, "origin": "real", "source": record.key}))
    return plan


def _load(what: Any, dm: DefectDataModule) -> Image.Image:
    if isinstance(what, Path):
        return dm.conform(read_image_file(what))
    dataset, index = what
    return dataset.load_image(index)


def _manifest(plan: list[tuple[str, Any, dict[str, Any]]]) -> bytes:
    columns = ["file", "class", "origin", "source"]
    for _, _, row in plan:
        columns += [key for key in row if key not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows({"file": name, **row} for name, _, row in plan)
    return text.getvalue().encode("utf-8")


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Write ``stage.out`` (see the module's docstring); return the counts per class and where the folder is."""
    stage = cfg.stage
    check_export(cfg)
    out = export_folder(stage)
    dm: DefectDataModule = instantiate(cfg.dataset)
    dm.setup()
    plan = _planned_images(cfg, dm)
    try:
        with atomic_files.staged_folder(out) as staged:
            for name in sorted({str(Path(name).parent) for name, _, _ in plan}):
                (staged / name).mkdir()
            for name, what, _ in progress_bar(plan, desc=f"export to {out}", unit="image"):
                _load(what, dm).save(staged / name, format="PNG")
            (staged / "manifest.csv").write_bytes(_manifest(plan))
            marker = {"dataset": dm.name, "generated": str(stage.generated), "real": bool(stage.real),
                      "alpha": stage.get("alpha"), "store": str(Path(cfg.paths.artifacts).resolve()),
                      "split": artifacts.run_split_read()}
            (staged / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror}") from err
    counts: dict[str, dict[str, int]] = {}
    for _, _, row in plan:
        counts.setdefault(row["class"], {"generated": 0, "real": 0})[row["origin"]] += 1
    log.info("stage=export: %d images in %s (%s)", len(plan), out, ", ".join(
        f"{abbreviation}: {n['generated']} generated" + (f" + {n['real']} real" if stage.real else "")
        for abbreviation, n in counts.items()))
    return {"out": str(out), "generated": str(stage.generated), "images": len(plan), "counts": counts}
