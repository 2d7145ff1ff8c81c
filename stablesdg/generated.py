"""The layout of a generated image set, shared by every generator and every consumer.

A generator writes, per category, into ``<artifacts>/<dataset>/<category>/<variant>/generate/``:
``images/*.png`` and ``manifest.csv`` (one row per image, column ``file`` relative to the stage
folder, plus the generator's own columns), then ``result.json``. Consumers (FID, classifiers,
the report) find a set by its variant name, or read any folder with one sub-folder per class.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from stablesdg import artifacts, atomic_files
from stablesdg.artifacts import GRID_FILE, IMAGES_DIR, MANIFEST_FILE
from stablesdg.commands import shell_word, stage_command
from stablesdg.data.categories import CategorySet
from stablesdg.errors import UserError
from stablesdg.image_files import image_files
from stablesdg.progress import progress_bar

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

GENERATE_STAGE = "generate"
EXPORT_MARKER = ".stablesdg-export.json"  # in every folder stage=export writes: what it holds, and the split it was made on


def manifest_images(stage_dir: Path) -> list[Path]:
    """The images a finished generation stage lists in its manifest, in manifest order (noted as read:
    ``artifacts.note_read``); a one-line ``UserError`` when some of them are gone (deleted by hand)."""
    if not (stage_dir / artifacts.RESULT_FILE).is_file():
        raise UserError(f"no finished generated set in {stage_dir} (no result.json); run its generation stage first")
    artifacts.note_read(stage_dir)
    files = [stage_dir / row["file"] for row in manifest_rows(stage_dir / MANIFEST_FILE)]
    gone = [f for f in files if not f.is_file()]
    if gone:
        raise UserError(f"{len(gone)} of the {len(files)} images that {stage_dir / MANIFEST_FILE} lists are gone "
                        f"({', '.join(f.name for f in gone[:3])}{', …' if len(gone) > 3 else ''}): run the command "
                        "that made the set again, which makes only those, or delete their rows from the manifest to "
                        "leave them out of the set")
    return files


def manifest_rows(manifest: Path) -> list[dict[str, str]]:
    """The rows of a generated set's ``manifest.csv`` (``file`` and the generator's columns), in order."""
    with open(manifest, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def real_sources(files: Iterable[str | Path]) -> dict[Path, str]:
    """The real image (its dataset key) that each of the generated ``files`` started from, where a manifest beside its
    set says so: ``source_image`` in a stored set's ``manifest.csv``, or in the one of a folder ``stage=export`` wrote.
    Images made from noise (text-to-image: no strength), or of a folder without such a manifest, have none."""
    sources: dict[Path, str] = {}
    for root in {Path(f).parent.parent for f in files}:  # <set>/images/<i>.png, <export>/<class>/<name>.png
        ours = (root / artifacts.RESULT_FILE).is_file() or (root / EXPORT_MARKER).is_file()  # not another tool's
        if ours and (root / MANIFEST_FILE).is_file():
            # earlier versions named a source image in text-to-image rows too, which they never read
            sources.update({root / row["file"]: row["source_image"] for row in manifest_rows(root / MANIFEST_FILE)
                            if row.get("file") and row.get("source_image") and row.get("strength") != ""})
    return sources


def is_folder_path(source: str) -> bool:
    """Whether ``stage.generated``'s ``source`` can only name a folder (it holds a ``/``, or starts with ``~`` or
    ``.``), not a variant's set in the store, which a bare name names first."""
    return len(Path(source).parts) > 1 or source.startswith(("~", "."))


def _stored_sets(source: str, artifacts_root: str, dataset: str, categories: CategorySet) -> dict[int, Path]:
    """The generation stage folders of variant ``source`` in the store, per class label (none for a path)."""
    if is_folder_path(source):
        return {}
    folders = {index: artifacts.stage_dir(artifacts_root, dataset, abbreviation, source, GENERATE_STAGE)
               for index, abbreviation in enumerate(categories.abbreviations)}
    return {index: folder for index, folder in folders.items() if folder.is_dir()}


def reads_folder(source: str, artifacts_root: str, dataset: str, categories: CategorySet) -> bool:
    """Whether ``generated_images`` reads ``source`` as a folder of class sub-folders, not as a set in the store."""
    return not _stored_sets(source, artifacts_root, dataset, categories) and Path(source).expanduser().is_dir()


OWN_VARIANT = "default"  # StableSDG's own variant: where a run that names no variant= puts its result


def set_read(source: object, artifacts_root: str, dataset: str, categories: CategorySet) -> str:
    """The generated set ``source`` (``stage.generated``) names, as a result records what it read: the variant name
    of a set in the store, also where ``source`` is a folder ``stage=export`` wrote of it, else the absolute path of
    the folder ``generated_images`` reads."""
    source = str(source)
    if _stored_sets(source, artifacts_root, dataset, categories):
        return source
    folder = Path(source).expanduser()
    exported = atomic_files.read_json(folder / EXPORT_MARKER) if (folder / EXPORT_MARKER).is_file() else None
    made_from = exported.get("generated") if isinstance(exported, dict) else None
    if made_from is not None and not is_folder_path(str(made_from)):
        return str(made_from)
    return str(folder.resolve())


def foreign_set(read: object, variant: object) -> bool:
    """Whether a result of ``variant`` that read the generated set ``read`` (as ``set_read`` records it; None: it read
    none) stands for another method than its variant's: another variant's set in the store, or a folder read under
    ``OWN_VARIANT``, StableSDG's. A folder read under any other variant is that variant's, named by whoever ran it.
    The report's rows, each a variant's, leave such results out."""
    if read is None or str(read) == str(variant):
        return False
    return not is_folder_path(str(read)) or str(variant) == OWN_VARIANT


def foreign_set_advice(read: object, variant: object) -> str:
    """The sentence saying that a result of ``variant`` that read the ``foreign_set`` ``read`` is in no table of the
    report, and the variant that gives it a row."""
    if not is_folder_path(str(read)):
        return (f"stage.generated={read} is variant {read}'s generated set, not variant {variant}'s, so the report "
                f"leaves this result out of its tables (a variant's rows count its own set only); run it with "
                f"variant={read} for a row")
    return (f"stage.generated={read} is a folder read under variant {variant}, StableSDG's own (where a run that names "
            f"no variant goes), so the report leaves this result out of its tables (StableSDG's rows count its own "
            f"generated sets only); for a row, name the method the folder holds: variant=<name> (variant=stylegan3 "
            f"for StyleGAN3's)")


def noted_set_read(source: object, variant: object, artifacts_root: str, dataset: str,
                   categories: CategorySet) -> str:
    """``set_read`` of ``source`` for a result of ``variant``, after a warning (``foreign_set_advice``) where it is a
    ``foreign_set``, which the report leaves out of its tables."""
    read = set_read(source, artifacts_root, dataset, categories)
    if foreign_set(read, variant):
        log.warning("%s", foreign_set_advice(read, variant))
    return read


def generated_images(source: object, artifacts_root: str, dataset: str, categories: CategorySet,
                     labels: Iterable[int] | None = None, flat_label: int | None = None) -> dict[int, list[Path]]:
    """Generated images per class label from ``source`` (``stage.generated``): a variant name in the artifact store,
    or a folder; a one-line ``UserError`` when it is null or empty. Only the classes ``labels`` are read where given
    (and noted as read: ``manifest_images``). A set, or a folder ``stage=export`` wrote, made on another split than the
    run's is refused (``artifacts.note_made_on``).

    A folder must hold one sub-folder per class (abbreviation or full name) of image files; with ``flat_label``, a
    folder with no class sub-folders may hold the images of that class directly (as pytorch-fid and clean-fid read a
    folder). A bare name (no ``/``,
    not starting with ``~`` or ``.``) is a variant name first: a folder of that name in the current directory (the
    repository's ``stablesdg`` package beside ``stage.generated=stablesdg``) is read only when the store has no set
    of that name, and ``./<name>`` always means the folder.
    """
    if source is None or not str(source).strip():
        raise UserError(f"stage.generated={'null' if source is None else repr(source)} names no generated set; set it "
                        "to the variant name of one (stage=generate variant=<name> makes it) or to a folder")
    source = str(source)
    wanted = set(range(len(categories)) if labels is None else labels)
    stored = _stored_sets(source, artifacts_root, dataset, categories)
    if stored:
        return {index: manifest_images(folder) for index, folder in stored.items() if index in wanted}
    folder = Path(source).expanduser()
    if folder.is_dir():
        exported = _exported_generated_images(folder) if (folder / EXPORT_MARKER).is_file() else None
        found = {}
        for child in sorted(folder.iterdir()):
            index = categories.index_of(child.name) if child.is_dir() else None
            if index is not None:
                files = image_files(child) if index in wanted else []
                found[index] = files if exported is None else [f for f in files if f in exported]
        flat = flat_folder_images(folder) if not found and flat_label is not None else []
        if flat:
            other = categories.other_class_named(folder.name, flat_label)
            if other is not None:
                wanted_class = categories.abbreviations[flat_label]
                raise UserError(f"generated-image folder {folder} holds the images of class {other}, by its name, not "
                                f"of {wanted_class}: give the folder of {wanted_class}'s images")
            return {flat_label: flat}
        if not found:
            raise UserError(f"generated-image folder {folder} has no class sub-folders ({categories.describe()})"
                            + ("" if flat_label is None else
                               f" and no images of {categories.abbreviations[flat_label]} directly in it"))
        return {index: files for index, files in found.items() if index in wanted}
    if is_folder_path(source):
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise UserError(f"stage.generated={source!r}: {what} ({folder.resolve()})")
    category = categories.abbreviations[next(iter(wanted))] if len(wanted) == 1 else None
    raise UserError(f"stage.generated={source!r} is neither a folder nor a generated set in "
                    f"{Path(artifacts_root) / dataset}/{category or '<category>'}/{source}/{GENERATE_STAGE}; "
                    f"stage=generate{' ' + shell_word('category', category) if category else ''} "
                    f"{shell_word('variant', source)} "
                    "(or stage=sample, stage=external) makes one")


def flat_folder_images(folder: Path) -> list[Path]:
    """The images directly in ``folder``, or, where it is a generated set's stage folder or that folder's ``images/``,
    the images its manifest lists (not the grid beside them; noted as read, like a set named by its variant; a
    one-line ``UserError`` while the set is unfinished). Another stage's folder is a ``UserError``."""
    for stage_dir in (folder, folder.parent):
        if (stage_dir / MANIFEST_FILE).is_file() or (stage_dir / IMAGES_DIR / artifacts.STAMP_FILE).is_file():
            return manifest_images(stage_dir)
    if (folder / artifacts.RESULT_FILE).is_file():
        raise UserError(f"{folder} is the folder of a stage that makes no generated set; give a set's variant name "
                        "or folder")
    return image_files(folder, recursive=False)


def _exported_generated_images(folder: Path) -> set[Path]:
    """The generated images of a folder ``stage=export`` wrote (its ``manifest.csv`` rows of origin ``generated``, not
    the real training images it may hold beside them), after refusing it if it was made on another split than the
    run's (``artifacts.note_made_on``)."""
    marker = atomic_files.read_json(folder / EXPORT_MARKER)
    artifacts.note_made_on(marker.get("split") if isinstance(marker, dict) else None, str(folder))
    try:
        rows = manifest_rows(folder / MANIFEST_FILE)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{folder} was written by stage=export but its {MANIFEST_FILE} cannot be read, so its "
                        f"generated images cannot be told from its real ones ({err}); export it again") from err
    return {folder / row["file"] for row in rows if row.get("origin") == "generated" and row.get("file")}


def how_to_make_more(source: object, artifacts_root: str, dataset: str, category: str, have: int,
                     wanted: int | None = None) -> str:
    """How to give ``category`` of the generated set ``source`` (as ``generated_images`` reads it) ``wanted`` images
    (None: any) where it has ``have``: the command that makes a missing set of the store, or the rerun that grows
    one (its images are kept), or the folder to add images to."""
    source = str(source)
    stored = None if is_folder_path(source) else \
        artifacts.stage_dir(artifacts_root, dataset, category, source, GENERATE_STAGE)
    if stored is not None and (stored / artifacts.RESULT_FILE).is_file():
        made_by = atomic_files.read_json(stored / artifacts.RESULT_FILE).get("stage", GENERATE_STAGE)
        if made_by == "external":
            return f"import a stage.source with more images of {category} (stage=external variant={source})"
        return (f"run the stage={made_by} command that made {stored} again with stage.num_images={wanted}: it keeps "
                f"the {have} images and makes the rest")
    if stored is not None and not Path(source).expanduser().is_dir():
        count = [f"stage.num_images={wanted}"] if wanted is not None else []
        return f"make them with: {stage_command(GENERATE_STAGE, dataset, category, source, *count)}"
    marker = Path(source).expanduser() / EXPORT_MARKER
    if marker.is_file():
        exported = atomic_files.read_json(marker)
        made_from = exported.get("generated") if isinstance(exported, dict) else None
        count = f" with stage.num_images={wanted}" if wanted is not None else ""
        return (f"grow the set {made_from or '?'!r} that {source} was exported from (the command that made it"
                f"{count}; it keeps its images), then run stage=export again: an export holds the generated images of "
                "its set only")
    return f"add images to the sub-folder of {source} for {category}"


def image_seed(seed: int, index: int) -> int:
    """The recorded seed of image ``index`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def write_generated_set(out_dir: Path, rows: list[dict[str, Any]], produce: Callable[[list[int]], list],
                        batch_size: int, desc: str) -> int:
    """Write image ``i`` of ``rows`` as ``images/<i>.png`` (``produce(indices)`` makes a batch of PIL images),
    then ``manifest.csv`` (``file`` + each row's columns); return how many images a previous run had written.

    Each image is written atomically and batches whose files all exist are skipped, so an interrupted run
    completes the identical set when ``produce`` is deterministic per index. Images a previous run made of a
    longer or shorter set of the same rows are kept too, and the set is the one a fresh run would make: images
    past ``rows`` are removed, and a last, short batch is made again unless the previous run finished this same
    number of rows (a batch's size can change its images in the last bits). While images are made, the folder has
    no ``grid.png``: an earlier run's would show a set this run changes (``write_grid`` draws this one's).
    """
    images_dir = out_dir / IMAGES_DIR
    files = [images_dir / f"{i:05d}.png" for i in range(len(rows))]
    for stale in images_dir.glob("*.png"):
        if stale.stem.isdigit() and int(stale.stem) >= len(rows):
            stale.unlink()
    manifest = out_dir / MANIFEST_FILE
    same_length = manifest.is_file() and len(manifest_rows(manifest)) == len(rows)
    if not same_length:
        manifest.unlink(missing_ok=True)  # until this run finishes, no manifest vouches for a short last batch
    batches = [list(range(start, min(start + batch_size, len(rows)))) for start in range(0, len(rows), batch_size)]
    to_make = [batch for batch in batches
               if not (all(files[i].is_file() for i in batch) and (len(batch) == batch_size or same_length))]
    resumed = len(rows) - sum(map(len, to_make))
    if to_make:
        (out_dir / GRID_FILE).unlink(missing_ok=True)
    if resumed:
        log.info("%d of the %d images were made by an earlier run of these settings and are kept; making the other %d",
                 resumed, len(rows), len(rows) - resumed)
    for indices in progress_bar(to_make, desc=desc, unit="batch"):
        for i, image in zip(indices, produce(indices)):
            atomic_files.save_png_atomic(files[i], image)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["file", *rows[0]] if rows else ["file"])
    writer.writeheader()
    writer.writerows({"file": f"{IMAGES_DIR}/{f.name}", **row} for f, row in zip(files, rows))
    atomic_files.write_bytes_atomic(out_dir / MANIFEST_FILE, text.getvalue().encode("utf-8"))
    return resumed


def write_grid(out_dir: Path, count: int) -> Image.Image | None:
    """``grid.png`` in ``out_dir`` of the set's first ``count`` images, 8 to a row, returned as a PIL image; with
    ``count`` 0 no ``grid.png`` (one an earlier run of the folder left is removed) and None."""
    if count == 0:
        (out_dir / GRID_FILE).unlink(missing_ok=True)
        return None
    import torch
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
    from torchvision.utils import make_grid

    tensors = []
    for i in range(count):
        with Image.open(out_dir / IMAGES_DIR / f"{i:05d}.png") as image:
            tensors.append(pil_to_tensor(image.convert("RGB")))
    grid = to_pil_image(make_grid(torch.stack(tensors), nrow=min(8, count)))
    atomic_files.save_png_atomic(out_dir / GRID_FILE, grid)
    return grid
