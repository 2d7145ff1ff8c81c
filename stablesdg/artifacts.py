"""The artifact store: a deterministic directory layout and the ``result.json`` contract.

Layout (all under ``paths.artifacts``)::

    <dataset>/splits/<split-name>.json                  persisted train/val/test split
    <dataset>/sweeps/<variant>/                         what a sweep chose per class
    <dataset>/<category>/_cache/                        cached latents and real-image features
    <dataset>/<category>/<variant>/<stage>/...          a stage's artifacts
    <dataset>/<category>/<variant>/<stage>/result.json  written last, only when the stage finished

``category`` is ``all`` for stages that use every class of the dataset; no dataset, class or variant may take a name
the store keeps for its own folders (``store_layout``). A result records the finished stages its
run read (``inputs``: folder under the store -> ``output_fingerprint``), so a result made from an artifact remade
since can be told from a current one (``stablesdg.status``), and the split its images came by (``split``), so a
run on another split refuses it (``note_read``). Its files are written whole or not at all (``atomic_files``); what
identifies a result's config and weights is ``provenance``'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from stablesdg.atomic_files import read_json, write_bytes_atomic, write_json_atomic
from stablesdg.commands import stage_command
from stablesdg.errors import UserError, find_user_error
from stablesdg.provenance import config_hash, file_sha256, git_commit, package_versions, weight_checksums
from stablesdg.provenance import machine as provenance_machine
from stablesdg.run_signals import stopped_by_a_signal
from stablesdg.store_layout import ALL_CATEGORIES, require_unreserved

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoints"  # a training stage's resumable state, while it runs or after it was stopped
IMAGES_DIR = "images"  # a generated set's images
MANIFEST_FILE = "manifest.csv"  # a generated set's list of its images, one row each
GRID_FILE = "grid.png"  # a generated set's first images, in one picture
STAMP_FILE = "config_hash.txt"  # what made a folder's work so far (training.claim_directory)


def require_directory_name(key: str, value: object) -> None:
    """A one-line ``UserError`` naming ``key`` when ``value`` cannot be one level of the artifact store (empty,
    ``.``, ``..`` or holding ``/``): it would write outside its place; or when it is a name that level keeps for the
    store's own folders (``store_layout.RESERVED``)."""
    if not value or "/" in str(value) or str(value) in (".", ".."):
        raise UserError(f"{key}={value!r} cannot name an artifact directory (empty, '/', '.' or '..')")
    require_unreserved(key, value)


def stage_dir(root: str | os.PathLike, dataset: str, category: str | None, variant: str, stage: str) -> Path:
    """Return the directory of one stage's artifacts: ``root/dataset/category/variant/stage``."""
    for key, value in {"dataset.name": dataset, "category": category, "variant": variant, "stage": stage}.items():
        if value or key != "category":  # no category: the folder of every class's stages
            require_directory_name(key, value)
    return Path(root) / dataset / (category or ALL_CATEGORIES) / variant / stage


def recorded_checksums(directory: str | os.PathLike) -> dict[str, str]:
    """The SHA-256 of each weight file of a finished stage, as its ``result.json`` records them (no file is hashed
    again): what identifies its weights to a run that reads them. A model retrained to other weights has others;
    the same weights in a moved or copied store have the same."""
    return read_result(directory).get("checksums") or {}


def output_fingerprint(directory: str | os.PathLike, record: Any = None) -> str:
    """What a finished stage folder holds, for the runs that read it: the checksums its result (``record``, read
    from the folder when not given) records and, for a generated set, its manifest and the stamp of what made its
    images. A rerun that makes the same output (the same weights; the same images, scored again or not) keeps it,
    whatever its wall time or metrics; a moved store too."""
    directory = Path(directory)
    record = read_json(directory / RESULT_FILE) if record is None else record
    held: dict[str, Any] = {"checksums": record.get("checksums") if isinstance(record, dict) else None}
    for name in (MANIFEST_FILE, f"{IMAGES_DIR}/{STAMP_FILE}"):
        held[name] = file_sha256(directory / name) if (directory / name).is_file() else None
    return hashlib.sha256(json.dumps(held, sort_keys=True).encode("utf-8")).hexdigest()[:16]


@dataclass
class RunReads:
    """What a run reads from the store (``recording_reads``): each finished stage folder, with its
    ``output_fingerprint`` when read, and whether it reads images by the split it is configured with."""

    split: str | None = None  # the run's dataset.split, by name (``split_name``)
    stages: dict[Path, str] = field(default_factory=dict)
    reads_split: bool = False

    @property
    def split_read(self) -> str | None:
        """The split the run's images came by, itself or through a stage it read; None when it read none."""
        return self.split if self.reads_split else None


_RUN_READS: ContextVar[RunReads | None] = ContextVar("stablesdg_run_reads", default=None)


@contextmanager
def recording_reads(split: str | None = None) -> Iterator[RunReads]:
    """Yield a ``RunReads`` that collects, while the body runs, what the run reads: the finished stage folders
    (``note_read``) and its split ``split`` once it reads images by it (``note_split_read``)."""
    reads = RunReads(split)
    token = _RUN_READS.set(reads)
    try:
        yield reads
    finally:
        _RUN_READS.reset(token)


def note_split_read() -> None:
    """Record, for the ``recording_reads`` around this run (if any), that it reads images by its split."""
    reads = _RUN_READS.get()
    if reads is not None:
        reads.reads_split = True


def note_made_on(split: str | None, what: str) -> None:
    """Record, for the ``recording_reads`` around this run (if any), that it reads ``what``, made on the split named
    ``split`` (None: made from no split's images); a one-line ``UserError`` when that is not the run's split."""
    reads = _RUN_READS.get()
    if reads is None or split is None:
        return
    if reads.split is not None and split != reads.split:
        raise UserError(
            f"{what} was made on the split {split} and this run splits the images as {reads.split} (dataset.split), "
            "so images it learned from or was made from may be among this run's validation and test images; run with "
            "the split it was made on, or make it and what it was made from again on this split, under a variant of "
            "their own (variant=<name>)")
    reads.reads_split = True


def run_split_read() -> str | None:
    """The split the current run's images came by so far (``RunReads.split_read``); None outside a run."""
    reads = _RUN_READS.get()
    return reads.split_read if reads is not None else None


def note_read(directory: str | os.PathLike) -> None:
    """Record, for the ``recording_reads`` around this run (if any), that it reads the finished stage ``directory``;
    a warning, once a run, when that stage was made from an artifact remade or removed since (``changed_inputs``).

    A stage made on another split than the run's is refused with a one-line ``UserError``: images it learned from
    or was made from may be the run's validation or test images."""
    reads = _RUN_READS.get()
    if reads is None:
        return
    folder = Path(directory).resolve()
    read_before = folder in reads.stages  # by the run's checks: warned then
    record = read_json(folder / RESULT_FILE)
    record = record if isinstance(record, dict) else {}
    root = folder.parents[3]  # <root>/<dataset>/<category>/<variant>/<stage>
    note_made_on(record.get("split"), folder.relative_to(root).as_posix())
    reads.stages[folder] = output_fingerprint(folder, record)
    if read_before:
        return
    changed = changed_inputs(root, record)
    if changed:
        log.warning("%s was made from %s, remade or removed since; this run reads it as it is (run its stage again "
                    "first to read it up to date)", folder, " and ".join(changed))


def changed_inputs(root: str | os.PathLike, record: dict[str, Any]) -> list[str]:
    """The inputs (folders under the store ``root``) that the result ``record`` was made from and that no longer
    hold what they held then: remade with another output, or left with no finished result. A result written before
    results recorded their inputs has none."""
    inputs = record.get("inputs")
    changed: list[str] = []
    for input_folder, fingerprint in sorted(inputs.items() if isinstance(inputs, dict) else []):
        folder = Path(root) / input_folder
        try:
            current = output_fingerprint(folder) if (folder / RESULT_FILE).is_file() else None
        except (OSError, UserError):  # a damaged result: what the input held cannot be told
            current = None
        if current != fingerprint:
            changed.append(input_folder)
    return changed


def store_relative(read: dict[Path, str], root: str | os.PathLike) -> dict[str, str]:
    """``recording_reads``' folders as paths under the store ``root`` (POSIX, sorted), so a moved store keeps them."""
    root = Path(root).resolve()
    return {folder.relative_to(root).as_posix(): fingerprint
            for folder, fingerprint in sorted(read.items()) if folder.is_relative_to(root)}


def _file_states(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file() and p.name != RESULT_FILE}


@contextmanager
def result_cleared(directory: str | os.PathLike) -> Iterator[None]:
    """Remove ``directory``'s ``result.json`` while the body runs, so an unfinished rerun never looks finished. When
    the body is refused with a ``UserError`` (bad input, a missing input), or stopped by Ctrl-C or SIGTERM, before it
    changed any file in ``directory``, the previous ``result.json`` is put back: what it describes is still there,
    untouched."""
    path = Path(directory) / RESULT_FILE
    previous = path.read_bytes() if path.is_file() else None
    before = _file_states(path.parent) if previous is not None else None
    path.unlink(missing_ok=True)
    try:
        yield
    except BaseException as exc:
        stopped = stopped_by_a_signal(exc) or find_user_error(exc) is not None
        if previous is not None and stopped and _file_states(path.parent) == before:
            write_bytes_atomic(path, previous)
        raise


def write_result(
    directory: str | os.PathLike,
    *,
    stage: str,
    dataset: str,
    category: str | None,
    variant: str,
    metrics: dict[str, Any],
    config: dict[str, Any],
    wall_time_s: float,
    inputs: dict[str, str] | None = None,
    split: str | None = None,
    model_files: str | None = None,
    setting_files: dict[str, str] | None = None,
    machine: dict[str, Any] | None = None,
) -> Path:
    """Write the stage's ``result.json`` (atomically) and return its path.

    The record holds ``stage, dataset, category, variant, metrics, config, config_hash,
    checksums, inputs, split, model_files, setting_files, versions, git_commit, machine, wall_time_s, finished_ns``;
    the report reads nothing else.
    ``checksums`` (SHA-256 of the stage's safetensors files) lets consumers refuse a tampered or truncated artifact;
    ``inputs`` (``store_relative``) names the finished stages the run read, each with its ``output_fingerprint``
    then; ``split`` names the split its images came by (``RunReads.split_read``), null when it read none;
    ``model_files`` is the digest of the model files it read (``model_files.model_digest``), null where it read none
    by a path; ``setting_files`` the SHA-256 of what it read by each setting that names files
    (``setting_files.setting_file_digests``: a weight file, the images of a folder outside the store, the values of a
    tuned file), by setting; ``machine`` what it was computed on (``provenance.machine``: the CPU's and GPU's names,
    the instruction set of torch's CPU kernels, its threads), this process's CPU where not given;
    ``finished_ns`` is when it was written (``finished_time``).
    """
    record = {
        "stage": stage,
        "dataset": dataset,
        "category": category or ALL_CATEGORIES,
        "variant": variant,
        "metrics": metrics,
        "config": config,
        "config_hash": config_hash(config),
        "checksums": weight_checksums(directory),
        "inputs": dict(inputs or {}),
        "split": split,
        "model_files": model_files,
        "setting_files": dict(setting_files or {}),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "machine": machine if machine is not None else provenance_machine(),
        "wall_time_s": round(float(wall_time_s), 3),
        "finished_ns": time.time_ns(),
    }
    path = Path(directory) / RESULT_FILE
    write_json_atomic(path, record, sort_keys=False)  # the config keeps its order (class order = label order)
    return path


def finished_time(result: str | os.PathLike, record: Any = None) -> int:
    """When the ``result.json`` at ``result`` was written, in ns since the epoch: the time it records
    (``finished_ns``; read from the file when ``record`` is not given), which a copy of the store keeps whether or
    not it keeps the files' times (``cp -r``, ``rsync`` without ``-t``, a download); the file's own time where it
    records none (written before results recorded it) or cannot be read."""
    if record is None:
        try:
            record = read_json(Path(result))
        except (OSError, UserError):
            record = None
    finished = record.get("finished_ns") if isinstance(record, dict) else None
    if isinstance(finished, int) and not isinstance(finished, bool):
        return finished
    return Path(result).stat().st_mtime_ns


def stage_finished(root: str | os.PathLike, dataset: str, category: str, variant: str, stage: str) -> bool:
    """Whether the stage's directory holds its ``result.json``, which a stage writes last."""
    return (stage_dir(root, dataset, category, variant, stage) / RESULT_FILE).is_file()


def require_stage_finished(root: str | os.PathLike, dataset: str, category: str, variant: str, stage: str,
                           needed_by: str) -> Path:
    """The directory of a finished stage (it has ``result.json``); else a ``UserError`` saying that ``needed_by``
    needs it and naming the command that makes it. Reads no file (``finished_stage_dir`` also checks its weights)."""
    directory = stage_dir(root, dataset, category, variant, stage)
    if not stage_finished(root, dataset, category, variant, stage):
        raise UserError(
            f"{needed_by} needs the {stage} artifact of {dataset}/{category}/{variant}, which does not exist yet "
            f"({directory}); make it with: {stage_command(stage, dataset, category, variant)}"
        )
    return directory


def finished_stage_dir(root: str | os.PathLike, dataset: str, category: str, variant: str, stage: str,
                       needed_by: str) -> Path:
    """The directory of a finished stage whose weights match their recorded checksums; else a ``UserError`` naming
    the command that makes it (``require_stage_finished``) or remakes it."""
    directory = require_stage_finished(root, dataset, category, variant, stage, needed_by)
    verify_checksums(directory, remedy=stage_command(stage, dataset, category, variant))
    note_read(directory)
    return directory


def verify_checksums(directory: str | os.PathLike, remedy: str) -> None:
    """A one-line ``UserError`` if a safetensors file of a finished stage differs from its recorded checksum."""
    directory = Path(directory)
    for name, recorded in recorded_checksums(directory).items():
        path = directory / name
        if not path.is_file():
            raise UserError(f"{path} is missing although {directory / RESULT_FILE} lists it; remake it with: {remedy}")
        if file_sha256(path) != recorded:
            raise UserError(f"{path} was changed or truncated after it was written (its SHA-256 differs from "
                            f"result.json); remake it with: {remedy}")


def read_result(directory: str | os.PathLike) -> dict[str, Any]:
    """Read the ``result.json`` of a stage directory; a one-line ``UserError`` when it is missing, not JSON, or not
    a stage's result (an object with ``stage`` and a ``metrics`` object)."""
    path = Path(directory) / RESULT_FILE
    record = read_json(path)
    if not isinstance(record, dict) or "stage" not in record or not isinstance(record.get("metrics"), dict):
        raise UserError(f"{path} is not a stage's result (it needs \"stage\" and \"metrics\"); "
                        "delete it and run the stage again")
    return record


def load_results(root: str | os.PathLike, pattern: str = f"**/{RESULT_FILE}") -> list[dict[str, Any]]:
    """Every readable stage result among the files under ``root`` that match ``pattern``, in path order, each with
    its file's path under ``_path``. The others are skipped with a warning naming each (we never write half a
    file, so one that cannot be read was damaged or copied in part: what it held counts as missing)."""
    records = []
    for path in sorted(Path(root).glob(pattern)):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("skipped %s: it cannot be read as JSON (%s)", path, err)
            continue
        if not isinstance(record, dict) or "stage" not in record:
            log.warning("skipped %s: it is not a stage's result (no \"stage\" key)", path)
            continue
        record["_path"] = str(path)
        records.append(record)
    return records


def saved_checkpoints(checkpoints: Path) -> list[Path]:
    """The checkpoints a stopped training stage can resume from in its ``checkpoints`` folder (``CHECKPOINT_DIR``):
    ``last.ckpt``, and the ``hpc_ckpt_<n>.ckpt`` saved at a step's end on SLURM's requeue signal or on SIGTERM
    (``checkpoint_files.save_whole_state``)."""
    return [path for path in [checkpoints / "last.ckpt", *checkpoints.glob("hpc_ckpt_*.ckpt")] if path.is_file()]
