"""``stage=inspect``: show the dataset, its persisted split and the model; write a sample grid and result.json."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from stablesdg.atomic_files import save_png_atomic
from stablesdg.choices import SPLIT_NAMES
from stablesdg.data import DefectDataModule
from stablesdg.data.categories import class_label
from stablesdg.data.sources import describe_other_classes
from stablesdg.data.splits import empty_split_advice
from stablesdg.errors import say
from stablesdg.grids import labelled_grid
from stablesdg.loggers import log_run
from stablesdg.stages.checks import check_inspect

SAMPLES_FILE = "samples.png"
DUPLICATE_LINES = 5  # groups of byte-identical images listed (those split apart first), and files listed of each


def dataset_report(dm: DefectDataModule) -> dict[str, Any]:
    """Sizes of the dataset, its splits, α-subsets and duplicate groups, per class and in total."""
    per_class: dict[str, dict[str, int]] = {abbr: {} for abbr in dm.categories.abbreviations}
    for split in SPLIT_NAMES:
        for abbr, n in dm.class_counts(split).items():
            per_class[abbr][split] = n
    for alpha in dm.alphas:
        for abbr, n in dm.class_counts("train", alpha=alpha).items():
            per_class[abbr][f"alpha_{alpha:g}"] = n
    split_of = {key: split for split in SPLIT_NAMES for key in dm.split.keys(split)}
    groups = dm.duplicate_groups()
    return {
        "name": dm.name,
        "root": None if dm.source.root is None else str(dm.source.root),
        "layout": dm.source.layout,
        "image_shape": [dm.channels, dm.image_size, dm.image_size],  # as every stage receives the images
        "colour_example": None if dm.source.colour_example is None else str(dm.source.colour_example),
        "bit_depth": dm.bit_depth,
        "fit": dm.fit,
        "not_square": None if dm.source.least_square is None else {
            "count": dm.source.not_square, "file": str(dm.source.least_square[0]),
            "size": list(dm.source.least_square[1])},
        "high_bit_maximum": None if dm.source.high_bit_maximum is None else
        {"value": dm.source.high_bit_maximum[0], "file": str(dm.source.high_bit_maximum[1])},
        "fewer_bits_than_read": dm.fewer_bits_than_read(),
        "classes": dict(zip(dm.categories.abbreviations, dm.categories.full_names)),
        "num_images": len(dm.records),
        "num_classes": len(dm.categories),
        "skipped_files": len(dm.source.skipped),
        "other_classes": dict(sorted(dm.source.other_classes.items())),
        "split_file": str(dm.split_path),
        "split_fractions": dm.split_fractions,
        "split_sizes": {split: len(dm.split.keys(split)) for split in SPLIT_NAMES},
        "alpha_subset_sizes": {f"{a:g}": len(dm.split.alpha_subset(a)) for a in dm.alphas},
        "per_class": per_class,
        "duplicate_groups": [{"keys": g, "splits": sorted({split_of[k] for k in g}, key=SPLIT_NAMES.index),
                              "classes": classes} for g, classes in zip(groups, dm.classes_of_groups(groups))],
    }


def format_report(report: dict[str, Any], model: dict[str, Any] | None) -> str:
    """A human-readable table of ``dataset_report`` (and the model summary)."""
    columns = list(next(iter(report["per_class"].values())))
    lines = [
        f"dataset {report['name']}: {report['num_images']} images, {report['num_classes']} "
        f"class{'es' if report['num_classes'] != 1 else ''}, layout {report['layout']}, root {report['root']}",
        "images delivered as " + " × ".join(map(str, report["image_shape"]))
        + (" (grayscale)" if report["image_shape"][0] == 1 else " (RGB)")
        + ("; the files are in colour, dataset.channels=3 keeps it"
           if report["colour_example"] and report["image_shape"][0] == 1 else "")
        + (f"; the 16-bit files use {report['fewer_bits_than_read']} bits (read as 16: dark), "
           f"dataset.bit_depth={report['fewer_bits_than_read']} reads them at full contrast"
           if report.get("fewer_bits_than_read") else "")
        + (f"; {report['not_square']['count']} images are not square (the most elongated "
           f"{report['not_square']['size'][0]}×{report['not_square']['size'][1]}), made square by dataset.fit="
           f"{report['fit']}" if report.get("not_square") else ""),
        f"split file {report['split_file']}",
    ]
    names = {abbr: class_label(abbr, full) for abbr, full in report["classes"].items()}
    width = max(21, *(len(name) + 1 for name in names.values()))
    lines.append(f"  {'class':<{width}}" + "".join(f"{c:>11}" for c in columns))
    for abbr, counts in report["per_class"].items():
        lines.append(f"  {names[abbr]:<{width}}" + "".join(f"{counts[c]:>11}" for c in columns))
    totals = {**report["split_sizes"], **{f"alpha_{k}": v for k, v in report["alpha_subset_sizes"].items()}}
    lines.append(f"  {'total':<{width}}" + "".join(f"{totals[c]:>11}" for c in columns))
    empty = [split for split, n in report["split_sizes"].items() if n == 0]
    if empty:
        sizes = {abbr: sum(counts[split] for split in SPLIT_NAMES) for abbr, counts in report["per_class"].items()}
        lines.append(f"  the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty "
                     "(dataset.split.fractions): stage=classify needs val and test images, adaptation train images; "
                     + empty_split_advice(report["split_fractions"], sizes, empty))
    for abbr, counts in report["per_class"].items():  # a class of a few images: 0.1 of 4 rounds to none
        missing = [split for split in ("val", "test") if counts[split] == 0 and split not in empty]
        if missing:
            lines.append(f"  {names[abbr]} has no {' or '.join(missing)} images, so stage=classify cannot "
                         f"{'test it' if 'test' in missing else 'pick its epoch by it'}; "
                         + empty_split_advice(report["split_fractions"], {abbr: sum(counts[s] for s in SPLIT_NAMES)},
                                              missing))
    groups = sorted(report["duplicate_groups"], key=lambda group: len(group["splits"]) == 1)  # split apart first
    for group in groups[:DUPLICATE_LINES]:
        where = (f"kept together in {group['splits'][0]}" if len(group["splits"]) == 1 else
                 f"in {' and '.join(group['splits'])} (their folders split them)")
        keys = group["keys"][:DUPLICATE_LINES]
        more = len(group["keys"]) - len(keys)
        filed = f", filed under {' and '.join(group['classes'])}" if len(group["classes"]) > 1 else ""
        lines.append(f"  byte-identical{filed}, {where}: {', '.join(keys)}" + (f" and {more} more" if more else ""))
    if len(groups) > DUPLICATE_LINES:
        lines.append(f"  and {len(groups) - DUPLICATE_LINES} more groups of byte-identical images (result.json lists "
                     "them all: metrics.dataset.duplicate_groups)")
    if report["other_classes"]:
        lines.append(f"  left out {describe_other_classes(report['other_classes'])}, not in dataset.classes")
    if report["skipped_files"]:
        lines.append(f"  skipped {report['skipped_files']} unreadable file(s) (dataset.on_bad_file=skip)")
    if model is not None:
        params = ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in model["parameters"].items())
        lines.append(f"model {model['name']}: {params}; resolution {model['resolution']}, "
                     f"latents {model['latent_shape']}, {model['dtype']}, tokenizer {model['tokenizer_size']} tokens, "
                     f"scheduler {model['scheduler']}")
    return "\n".join(lines)


def sample_grid(dm: DefectDataModule, category: str | None, per_class: int) -> Image.Image | None:
    """A grid of the first ``per_class`` distinct training images of each class, or of one category: a row each,
    labelled with the class (``Cr (crazing)``); None when the training split holds none of them."""
    categories = [category] if category else dm.categories.abbreviations
    rows, labels = [], []
    for abbr in categories:
        dataset = dm.dataset("train", category=abbr)
        rows.append([dataset[i][0] for i in dataset.distinct_indices(per_class)])
        full = dm.categories.full_names[dm.categories.abbreviations.index(abbr)]
        labels.append(class_label(abbr, full))
    return labelled_grid(rows, labels) if any(rows) else None


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Scan the dataset, persist its split, summarise the model; write ``samples.png``; return the metrics."""
    check_inspect(cfg)
    dm: DefectDataModule = instantiate(cfg.dataset)
    dm.setup()
    category = None if cfg.category is None else dm.categories.resolve(cfg.category)
    report = dataset_report(dm)
    model = instantiate(cfg.model).summary() if cfg.stage.build_model else None
    say(format_report(report, model), sys.stdout)  # one write: a parallel job's log line cannot split it

    grid = sample_grid(dm, category, int(cfg.stage.grid_per_class))
    if grid is None:
        (out_dir / SAMPLES_FILE).unlink(missing_ok=True)
        say("no training images, so no sample grid", sys.stdout)
    else:
        save_png_atomic(out_dir / SAMPLES_FILE, grid)
        say(f"sample grid {out_dir / SAMPLES_FILE}", sys.stdout)

    metrics = {"dataset": report, "model": model}
    log_run(cfg, {k: v for k, v in report.items() if k != "duplicate_groups"}, {"samples": grid})
    return metrics
