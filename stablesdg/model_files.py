"""The model weights a result was made from, told apart by their content rather than by where they lie.

A diffusers folder or ``.safetensors`` checkpoint that ``model.path`` names may move (another disk, a cluster's
own copy, ``STABLESDG_SD15_PATH`` set otherwise) and still hold the same weights; or the same path may come to hold
other weights. A result records the digest of the files its model was read from (``RECORD_KEY``), and make's rule
compares that digest in place of ``model.path`` and ``model.config``. The digest of each file is computed once and
kept in the store (``DIGESTS_FILE``) under its path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from stablesdg.atomic_files import read_json, write_json_atomic
from stablesdg.errors import UserError
from stablesdg.provenance import file_sha256
from stablesdg.weight_files import (SD15_SUBFOLDERS, SD15_WEIGHT_COMPONENTS, folder_weight_variants, sd15_location,
                                    weights_file_variant)

log = logging.getLogger(__name__)

RECORD_KEY = "model_files"  # result.json: the digest of the model files the run read, or null
LOCATION_KEYS = ("path", "config")  # the model settings that say only where its files are, where a digest says which
DIGESTS_FILE = ".model-file-digests.json"  # in the store: {absolute path: [size, mtime_ns, sha256]}
_LOADER = "stablesdg.models.load_sd15"
_COMPUTED_THIS_RUN: dict[str, list] = {}  # {absolute path: [size, mtime_ns, sha256]}, as DIGESTS_FILE


def model_digest(model: Any, store: str | os.PathLike) -> str | None:
    """The SHA-256 of the local files the resolved ``model`` settings read, by their names within the model's
    folder (so the same folder anywhere gives the same digest, and a hub id the digest of the folder its download
    would be), or None where they read none: a model built in code (``model=tiny``, ``model=sd15_random``), a hub id
    not in the Hugging Face cache, or a ``model.path`` that holds no model now. A diffusers folder counts its
    components' files that its loader reads (``_folder_files``); a single-file checkpoint counts its bytes and its
    ``model.config``: the configs of a local folder, else the id."""
    located = _located_files(model)
    if located is None:
        return None
    try:
        digests = file_digests([file for part in located.values() if isinstance(part, dict) for file in part.values()],
                                store)
    except OSError:  # a file gone or unreadable since it was listed: the step that loads the model says why
        return None
    entries = {part: {name: digests[str(file)] for name, file in files.items()} if isinstance(files, dict) else files
               for part, files in located.items()}
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()


def replaced_weights(record: dict[str, Any], store: str | os.PathLike) -> str | None:
    """The ``model.path`` of the result ``record`` where its files now hold other weights than the result recorded it
    was made from (``RECORD_KEY``); None where they hold the same, or no model now (moved, or read on another
    machine: nothing to tell), and for a result that recorded no digest."""
    recorded = record.get(RECORD_KEY)
    model = (record.get("config") or {}).get("model")
    if not recorded or not isinstance(model, dict):
        return None
    now = model_digest(model, store)
    return str(model.get("path")) if now not in (None, recorded) else None


def without_location(settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested ``settings`` less the model's ``LOCATION_KEYS``: what is left to compare where both
    sides' model files are compared by their digest."""
    model = settings.get("model")
    if not isinstance(model, dict):
        return dict(settings)
    return {**settings, "model": {key: value for key, value in model.items() if key not in LOCATION_KEYS}}


def by_content(settings: dict[str, Any], digest: str) -> dict[str, Any]:
    """A copy of the nested ``settings`` whose model is named by its files' ``digest`` (``model.files``) in place of
    where they lie (``without_location``)."""
    located = without_location(settings)
    return {**located, "model": {**(located.get("model") or {}), "files": digest}}


def model_by_content(model: dict[str, Any], store: str | os.PathLike) -> dict[str, Any]:
    """The resolved ``model`` settings naming its weights by their files' digest (``by_content``) where it reads
    local files (``model_digest``), else as they are: equal for the same weights wherever they lie, and different for
    other weights at the same path."""
    digest = model_digest(model, store)
    return model if digest is None else by_content({"model": model}, digest)["model"]


def _located_files(model: Any) -> dict[str, dict[str, Path] | str | None] | None:
    """The files ``model_digest`` reads, by part (``weights``, ``configs``) and name, and a single-file checkpoint's
    ``model.config`` where it is not a local folder; None where the model reads no local files."""
    if not isinstance(model, dict) or model.get("_target_") != _LOADER or not model.get("path"):
        return None
    try:
        kind, source = sd15_location(model["path"], model.get("variant"))
        if kind == "file":
            config = model.get("config")
            local = config is not None and Path(config).expanduser().is_dir()
            return {"weights": {"checkpoint": Path(source)},
                    "configs": _folder_files(Path(config).expanduser(), None) if local else config}
        folder = Path(source) if kind == "folder" else _cached_snapshot(source)
        if folder is None:
            return None
        return {"weights": _folder_files(folder, folder_weight_variants(folder, model.get("variant")))}
    except (UserError, OSError):  # not a model now: the step that loads it says why
        return None


def _cached_snapshot(repo_id: str) -> Path | None:
    """The folder of the Hugging Face cache's copy of the hub model ``repo_id`` (its main revision), which the loader
    reads offline, where it holds every component's folder; None where it does not (not downloaded yet)."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "unet/config.json")
    if not isinstance(config, str):
        return None
    folder = Path(config).parent.parent
    return folder if all((folder / component).is_dir() for component in SD15_SUBFOLDERS) else None


def _folder_files(folder: Path, variants: dict[str, str | None] | None) -> dict[str, Path]:
    """The files of a diffusers folder's components that its loader reads, by their names within ``folder``: with
    ``variants`` (the weight variant read of each weighted component) its weights in that variant, safetensors where
    it has them (as diffusers and transformers choose), without them no weights at all; never hidden files."""
    files = {}
    for component in SD15_SUBFOLDERS:
        found = [file for file in sorted((folder / component).rglob("*"))
                 if file.is_file() and not any(part.startswith(".") for part in file.relative_to(folder).parts)]
        weights = [file for file in found if weights_file_variant(file.name) is not None]
        read = [file for file in weights if variants is not None and component in SD15_WEIGHT_COMPONENTS
                and weights_file_variant(file.name) == (variants[component] or "")]
        if any(".safetensors" in file.name for file in read):
            read = [file for file in read if ".safetensors" in file.name]
        for file in [*(file for file in found if file not in weights), *read]:
            files[file.relative_to(folder).as_posix()] = file.resolve()
    return files


def file_digests(files: list[Path], store: str | os.PathLike) -> dict[str, str]:
    """The SHA-256 of each file by its path: read from the store's ``DIGESTS_FILE``, or from what this process
    computed (a store not made yet keeps none), where the file's size and modification time are those it was
    computed at; else computed. Those the store's file does not hold yet are kept there (where the store can be
    written; so two stores made alike hold alike files), where the files no longer there are dropped."""
    kept_at = Path(store) / DIGESTS_FILE
    try:
        kept = read_json(kept_at) if kept_at.is_file() else {}
    except UserError:
        kept = {}
    digests, computed = {}, {}
    for file in files:
        state = file.stat()
        entry = kept.get(str(file)) if isinstance(kept, dict) else None
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [state.st_size, state.st_mtime_ns]:
            digests[str(file)] = entry[2]
            continue
        entry = _COMPUTED_THIS_RUN.get(str(file))
        if entry is not None and entry[:2] == [state.st_size, state.st_mtime_ns]:
            digests[str(file)] = entry[2]
            computed[str(file)] = entry
            continue
        if state.st_size > 1 << 28:
            log.info("reading %s (%.1f GB) to tell its weights apart from others; once per file", file,
                     state.st_size / 1e9)
        digests[str(file)] = file_sha256(file)
        computed[str(file)] = _COMPUTED_THIS_RUN[str(file)] = [state.st_size, state.st_mtime_ns, digests[str(file)]]
    if computed and Path(store).is_dir():
        still_there = {path: entry for path, entry in (kept if isinstance(kept, dict) else {}).items()
                       if os.path.isfile(path)}  # not the files of a model moved or deleted since
        try:
            write_json_atomic(kept_at, {**still_there, **computed})
        except OSError:  # a store that cannot be written: the digests are computed again next time
            pass
    return digests
