"""The classifier's training set: an α-subset of the real training images, optionally topped up with generated ones.

* ``none``: the α-subset only.
* ``substitute``: each class topped up with generated images to its full real count (Fig. 9).
* ``expand``: ``extra_per_class`` generated images added to each class (Tables VI/VIII).

Validation and test sets are always the real val/test splits. Generated images are taken in their
set's order (manifest or sorted file names), so a smaller request is a prefix of a larger one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stablesdg.choices import require_mode
from stablesdg.data import DefectDataModule
from stablesdg.data.sources import ImageRecord
from stablesdg.errors import UserError
from stablesdg.generated import real_sources


@dataclass
class TrainingSet:
    """Real records, generated records and the per-class counts of each; ``made_beyond_alpha``: how many of the
    generated images started from a real training image outside the α-subset (as their sets' manifests record)."""

    real: list[ImageRecord]
    generated: list[ImageRecord]
    counts: dict[str, dict[str, int]]
    made_beyond_alpha: int = 0


def compose_training_set(dm: DefectDataModule, alpha: float, mode: str, generated: dict[int, list[Path]] | None,
                         extra_per_class: int, how_to_make_more: Callable[[str, int, int], str] | None = None
                         ) -> TrainingSet:
    """Select the real α-subset and the generated images that ``mode`` asks for (exact counts or an error, which
    ends with ``how_to_make_more(class abbreviation, images it has, images needed)``)."""
    require_mode(mode)
    real = dm.select("train", alpha=alpha if alpha < 1.0 else None)
    full = dm.class_counts("train")
    chosen: list[ImageRecord] = []
    counts = {}
    short: list[tuple[str, int, int]] = []  # (class, images it has, images needed), for every class that lacks some
    for label, abbreviation in enumerate(dm.categories.abbreviations):
        n_real = sum(r.label == label for r in real)
        wanted = {"none": 0, "substitute": full[abbreviation] - n_real, "expand": int(extra_per_class)}[mode]
        if wanted < 0 or (mode == "expand" and wanted < 1):
            raise UserError(f"stage.extra_per_class must be positive, got {extra_per_class}")
        if wanted:
            available = (generated or {}).get(label, [])
            if len(available) < wanted:
                short.append((abbreviation, len(available), wanted))
            chosen += [ImageRecord(str(p), label, "") for p in available[:wanted]]
        counts[abbreviation] = {"real": n_real, "generated": wanted}
    if short:
        raise _too_few_generated(short, mode, alpha, how_to_make_more)
    sources = real_sources(r.key for r in chosen)
    require_made_from_training_images(dm, chosen, sources)
    if not real and not chosen:
        raise UserError(f"stage.alpha={alpha} leaves none of the {sum(full.values())} training images; raise stage.alpha "
                        "(each class keeps round(stage.alpha x its count))")
    beyond_alpha = {r.key for r in dm.select("train")} - {r.key for r in real}
    return TrainingSet(real, chosen, counts, sum(sources.get(Path(r.key)) in beyond_alpha for r in chosen))


def _too_few_generated(short: list[tuple[str, int, int]], mode: str, alpha: float,
                       how_to_make_more: Callable[[str, int, int], str] | None) -> UserError:
    """One line that names every class of ``short`` (class, images it has, images needed) and ends with how to give
    the first of them its images (``how_to_make_more``)."""
    (first, have, wanted), others = short[0], [abbreviation for abbreviation, *_ in short[1:]]
    if others:
        lacking = ", ".join(f"{abbreviation} {have} of {wanted}" for abbreviation, have, wanted in short)
        message = (f"the generated set has too few images of {len(short)} classes for stage.mode={mode} at "
                   f"alpha={alpha} (has of needs): {lacking}")
    else:
        message = f"the generated set has {have} images of class {first}; stage.mode={mode} at alpha={alpha} needs {wanted}"
    if how_to_make_more:
        message += f"; {how_to_make_more(first, have, wanted)}" + (f" (and likewise for {', '.join(others)})" if others else "")
    return UserError(message)


def require_made_from_training_images(dm: DefectDataModule, generated: list[ImageRecord],
                                      sources: dict[Path, str]) -> None:
    """A one-line ``UserError`` when a generated image started from a validation or test image of ``dm``'s split (as
    its set's manifest records: ``sources``, from ``real_sources``): the classifier would be tested on an image it
    learned from."""
    held_out = {r.key for split in ("val", "test") for r in dm.select(split)}
    leaked = [(record.key, sources[Path(record.key)]) for record in generated if sources.get(Path(record.key)) in held_out]
    if leaked:
        image, source = leaked[0]
        raise UserError(f"{len(leaked)} of the generated images this classifier would train on were made from its "
                        f"validation or test images ({image} from {source}, for one), so it would be tested on images "
                        "it learned from; use a set made from the training images (stage=generate "
                        "stage.source_split=train)")
