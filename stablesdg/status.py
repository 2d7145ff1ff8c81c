"""What state each stage folder of an artifact store is in: finished, stale, being written, or left unfinished.

``python -m stablesdg.report status`` prints it; a run's lock (``stage_lock.stage_claimed``) tells a folder
being written from one whose run was stopped, and the inputs a result records (``artifacts.write_result``) tell
a result made from artifacts remade since.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from stablesdg import artifacts, model_files, setting_files
from stablesdg.artifacts import IMAGES_DIR
from stablesdg.stage_lock import holder, stage_being_written
from stablesdg.store_layout import CACHE_DIR, SPLITS_DIR, SWEEPS_DIR


@dataclass(frozen=True)
class StageState:
    """One stage folder (``<dataset>/<category>/<variant>/<stage>`` under the store) and its state:
    ``finished``, ``stale`` (finished, but made from an artifact since remade or removed, or from model weights
    since replaced: ``stale_because``),
    ``running`` (a run holds its lock), ``unfinished`` (no result: stopped, killed or refused after it wrote), or
    ``damaged`` (its ``result.json`` cannot be read); ``detail`` says more in words."""

    folder: str
    state: str
    detail: str


def _unfinished_detail(folder: Path) -> str:
    if artifacts.saved_checkpoints(folder / artifacts.CHECKPOINT_DIR):
        return "training stopped; the same command resumes it from its last checkpoint"
    images = folder / IMAGES_DIR
    if images.is_dir():
        return f"{sum(1 for _ in images.glob('*.png'))} images so far; the same command completes the set"
    return "no result; run the stage again"


def stage_state(root: Path, folder: Path) -> StageState:
    """The state of one stage ``folder`` of the store at ``root``."""
    name = folder.relative_to(root).as_posix()
    if stage_being_written(folder):
        held_by = holder(folder)
        return StageState(name, "running", f"a run is writing it now{f' ({held_by})' if held_by else ''}")
    result = folder / artifacts.RESULT_FILE
    if not result.is_file():
        return StageState(name, "unfinished", _unfinished_detail(folder))
    try:
        record = json.loads(result.read_text(encoding="utf-8"))
        seconds = float(record["wall_time_s"])
    except (OSError, ValueError, TypeError, KeyError) as err:
        return StageState(name, "damaged", f"{artifacts.RESULT_FILE} cannot be read ({type(err).__name__}); run the "
                                           "stage again")
    ended = datetime.datetime.fromtimestamp(artifacts.finished_time(result, record) / 1e9).strftime("%Y-%m-%d %H:%M")
    why = stale_because(root, record)
    if why:
        return StageState(name, "stale", f"made {ended} {why}; run the stage again")
    return StageState(name, "finished", f"{ended}, in {seconds:.0f} s")


def stale_because(root: str | Path, record: dict) -> str | None:
    """Why the finished result ``record`` of the store at ``root`` may no longer describe what it was made from, in
    words that follow "made": from an artifact remade or removed since (``artifacts.changed_inputs``), from model
    weights since replaced by others at its ``model.path`` (``model_files.replaced_weights``), or from files a setting
    names since replaced by others there (``setting_files.replaced_setting_file``); None where none of these."""
    changed = artifacts.changed_inputs(root, record)
    if changed:
        others = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        return f"from {changed[0]}{others}, remade or removed since"
    path = model_files.replaced_weights(record, root)
    if path:
        return f"from other model weights than model.path={path} holds now"
    setting = setting_files.replaced_setting_file(record, root)
    return setting_files.replaced_because(setting, record.get("config") or {}, root) if setting else None


# stage folders in the order the method makes them (a folder is named by its stage, or starts with "<stage>_"): the
# sweep's points pick the (s, ω) that the generated set is made at
STAGE_ORDER = ("inspect", "ti", "lora", "full", "ddpm", "dcgan", "sample", "external", "sweep", "generate", "fid",
               "export", "classify")


def listing_order(folder: Path) -> tuple:
    """Where ``<dataset>/<category>/<variant>/<stage>`` comes in a listing: dataset, category and variant by name,
    letter case aside (NEU's Pa before PS), then the stage where the method makes it, others last by name."""
    *names, stage = folder.parts[-4:]
    rank = next((i for i, name in enumerate(STAGE_ORDER) if stage == name or stage.startswith(f"{name}_")),
                len(STAGE_ORDER))
    return (*(name.casefold() for name in names), rank, stage)


def store_states(root: str | Path, dataset: str | None = None) -> list[StageState]:
    """The state of every stage folder under the store ``root`` (of one ``dataset`` where given), in
    ``listing_order``."""
    root = Path(root)
    folders = sorted((p for p in root.glob(f"{dataset or '*'}/*/*/*") if p.is_dir()), key=listing_order)
    return [stage_state(root, folder) for folder in folders  # not the store's own folders at that depth
            if folder.relative_to(root).parts[1] not in (SPLITS_DIR, SWEEPS_DIR) and folder.parent.name != CACHE_DIR]
