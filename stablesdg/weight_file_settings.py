"""The weight files that a setting names (``classifier.weights``, ``stage.inception_weights``), told apart by their
content rather than by where they lie.

A result records the SHA-256 of each such file its stage read (``RECORD_KEY``), and make's rule compares that in
place of the setting: the same file moved (another disk, a cluster's own copy, the FID InceptionV3 file named
explicitly instead of found in torch's hub cache) reruns nothing, and another file at the same path reruns what read
it. Each file's digest is computed once and kept with the model files' (``model_files.file_digests``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stablesdg.errors import UserError
from stablesdg.model_files import file_digests
from stablesdg.unread_settings import left_unread

RECORD_KEY = "weight_files"  # result.json: {setting: SHA-256 of the file it named}, {} where it read none


def named_weight_files(config: dict[str, Any]) -> dict[str, Path]:
    """The weight files the stage of the resolved ``config`` reads by a setting that names one, by that setting, of
    those there now: ``classifier.weights`` of ``stage=classify``, and the FID InceptionV3 file of a stage that scores
    by ``stage.features=inception`` (``stage.inception_weights``, or torch's hub cache where that is null)."""
    stage = config.get("stage") if isinstance(config.get("stage"), dict) else {}
    classifier = config.get("classifier") if isinstance(config.get("classifier"), dict) else {}
    named: dict[str, Path] = {}
    if stage.get("name") == "classify" and classifier.get("weights"):
        named["classifier.weights"] = Path(classifier["weights"]).expanduser()
    if stage.get("features") == "inception" and not left_unread("stage.inception_weights", stage):
        from stablesdg.evaluation.features import inception_weights_path

        try:
            named["stage.inception_weights"] = inception_weights_path(stage.get("inception_weights"))
        except UserError:  # not there: the stage that scores says where to put it
            pass
    return {setting: file for setting, file in named.items() if file.is_file()}


def weight_file_digests(config: dict[str, Any], store: str | os.PathLike) -> dict[str, str]:
    """The SHA-256 of each of ``named_weight_files(config)``, by its setting."""
    named = named_weight_files(config)
    try:
        digests = file_digests([file.resolve() for file in named.values()], store)
    except OSError:  # a file gone or unreadable since it was found: the stage that reads it says why
        return {}
    return {setting: digests[str(file.resolve())] for setting, file in named.items()}


def replaced_weight_file(record: dict[str, Any], store: str | os.PathLike) -> str | None:
    """The first setting of the result ``record`` whose file, where its recorded config names it, now holds another
    file than the result recorded it read (``RECORD_KEY``); None where each holds the same, or is not there now."""
    read = record.get(RECORD_KEY) or {}
    now = weight_file_digests(record.get("config") or {}, store) if read else {}
    return next((setting for setting in read if setting in now and now[setting] != read[setting]), None)
