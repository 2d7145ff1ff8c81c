"""The files a setting names, told apart by their content rather than by where they lie: the weight files
``classifier.weights`` and ``stage.inception_weights``, the folders of images outside the store that a stage reads,
``stage.source`` (``stage=external``), ``stage.generated`` (``stage=classify``, ``fid``, ``export``) and
``stage.prior_images`` (``stage=full``), and ``stage=generate``'s ``stage.tuned`` file, by the values it gives the
category (another category's rerun nothing).

A result records the SHA-256 of what it read by each such setting (``RECORD_KEY``; of a folder, of the names and
contents of the images it read there; of a tuned file, of the values it gave), and make's rule compares that in
place of the setting, as do the stamps of unfinished work (``training.run_identities``): the same files moved
(another disk, a cluster's own copy, the FID InceptionV3 file named explicitly instead of found in torch's hub cache)
rerun nothing, and other files at the same path (a weights file replaced, a generator's samples made again into the
same folder) rerun what read them. Each file's digest is computed once and kept with the model files'
(``model_files.file_digests``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stablesdg.errors import UserError, is_number
from stablesdg.model_files import file_digests
from stablesdg.unread_settings import left_unread

if TYPE_CHECKING:
    from stablesdg.data.categories import CategorySet

RECORD_KEY = "setting_files"  # result.json: {setting: SHA-256 of what it read by it}, {} where it read none
EARLIER_RECORD_KEY = "weight_files"  # what results of the version before this one recorded, of the weight files alone
FOLDER_SETTINGS = ("stage.source", "stage.generated", "stage.prior_images")  # the settings that name folders of images


def recorded_digests(record: dict[str, Any]) -> dict[str, str]:
    """What the result ``record`` recorded it read by each setting that names files (``RECORD_KEY``, or, in a result
    made before it had one, ``EARLIER_RECORD_KEY``); {} where it recorded nothing."""
    read = record.get(RECORD_KEY)
    read = read if isinstance(read, dict) else record.get(EARLIER_RECORD_KEY)
    return dict(read) if isinstance(read, dict) else {}


def named_files(config: dict[str, Any], store: str | os.PathLike) -> dict[str, list[Path]]:
    """The files the stage of the resolved ``config`` reads by a setting that names files, by that setting, in the
    order it reads them, where they are all there now: ``classifier.weights`` of ``stage=classify``, the FID
    InceptionV3 file of a stage that scores by ``stage.features=inception`` (``stage.inception_weights``, or torch's
    hub cache where that is null), ``stage=generate``'s ``stage.tuned`` file where it reads one, and the images the
    stage reads in a folder a ``FOLDER_SETTINGS`` setting names (not in a generated set of the store at ``store``
    named by its variant, which a result's ``inputs`` follow)."""
    stage = config.get("stage") if isinstance(config.get("stage"), dict) else {}
    classifier = config.get("classifier") if isinstance(config.get("classifier"), dict) else {}
    named: dict[str, list[Path]] = {}
    if stage.get("name") == "classify" and classifier.get("weights"):
        named["classifier.weights"] = [Path(classifier["weights"]).expanduser()]
    if stage.get("features") == "inception" and not left_unread("stage.inception_weights", stage):
        from stablesdg.evaluation.features import inception_weights_path

        try:
            named["stage.inception_weights"] = [inception_weights_path(stage.get("inception_weights"))]
        except UserError:  # not there: the stage that scores says where to put it
            pass
    if stage.get("name") == "generate" and stage.get("tuned") and not left_unread("stage.tuned", stage):
        named["stage.tuned"] = [Path(str(stage["tuned"])).expanduser()]
    try:
        named.update(_folder_images(config, stage, store))
    except (OSError, UserError):  # a folder the stage would refuse now: the stage says why
        pass
    return {setting: files for setting, files in named.items() if files and all(file.is_file() for file in files)}


def _folder_images(config: dict[str, Any], stage: dict[str, Any], store: str | os.PathLike) -> dict[str, list[Path]]:
    """The images that ``stage`` reads in a folder a ``FOLDER_SETTINGS`` setting names, by that setting."""
    from stablesdg.data.categories import CategorySet
    from stablesdg.stages.checks import prior_image_files

    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    classes = CategorySet(dataset["classes"]) if dataset.get("classes") else None  # None: a scan of the data names them
    if stage.get("name") == "external" and stage.get("source"):
        return {"stage.source": _imported_images(stage, classes, str(config.get("category")))}
    if stage.get("name") == "full" and stage.get("prior_images") not in (None, "auto"):
        return {"stage.prior_images": prior_image_files(Path(str(stage["prior_images"])).expanduser())}
    if stage.get("name") in ("classify", "fid", "export") and stage.get("generated") \
            and not left_unread("stage.generated", stage):
        return {"stage.generated": _generated_folder_images(config, classes, str(store))}
    return {}


def _imported_images(stage: dict[str, Any], classes: CategorySet | None, category: str) -> list[Path]:
    """The images ``stage=external`` imports from ``stage.source``; where ``classes`` is None, every image there."""
    from stablesdg.image_files import image_files
    from stablesdg.stages.checks import external_images, external_source

    source = external_source(stage)
    if classes is None:
        return image_files(source)
    files = external_images(source, classes, category)
    return files if stage.get("num_images") is None else files[: int(stage["num_images"])]


def _generated_folder_images(config: dict[str, Any], classes: CategorySet | None, store: str) -> list[Path]:
    """The images a stage reads in the folder ``stage.generated`` names, class by class; none where it names a set in
    the store. Where ``classes`` is None, every image in a folder it can only name (``generated.is_folder_path``)."""
    from stablesdg import artifacts
    from stablesdg.generated import generated_images, is_folder_path, reads_folder
    from stablesdg.image_files import image_files

    stage, dataset = config["stage"], str(config["dataset"].get("name"))
    generated = str(stage["generated"])
    if classes is None:
        folder = Path(generated).expanduser()
        return image_files(folder) if is_folder_path(generated) and folder.is_dir() else []
    if not reads_folder(generated, store, dataset, classes):
        return []
    one = stage["name"] == "fid" or (stage["name"] == "export" and config.get("category"))
    label = classes.index_of(str(config.get("category"))) if one else None
    with artifacts.recording_reads():  # what it reads is the run's to note, not the caller's
        per_class = generated_images(generated, store, dataset, classes, None if label is None else [label],
                                     flat_label=label if stage["name"] == "fid" else None)
    return [file for _, files in sorted(per_class.items()) for file in files]


def setting_file_digests(config: dict[str, Any], store: str | os.PathLike) -> dict[str, str]:
    """What the stage of the resolved ``config`` reads by each setting of ``named_files(config, store)``, as one
    SHA-256: a weight file's own; of a folder's images, that of their names there and their contents, in the order
    read; of a tuned file, that of the values it gives the stage (``_tuned_values_digest``)."""
    named = named_files(config, store)
    try:
        digests = file_digests([file.resolve() for setting, files in named.items() for file in files
                                if setting != "stage.tuned"], store)
        return {setting: _digest(setting, files, config, digests) for setting, files in named.items()}
    except (OSError, UserError):  # a file gone or unreadable since it was found: the stage that reads it says why
        return {}


def _digest(setting: str, files: list[Path], config: dict[str, Any], digests: dict[str, str]) -> str:
    if setting == "stage.tuned":
        return _tuned_values_digest(files[0], config)
    if setting not in FOLDER_SETTINGS:
        return digests[str(files[0].resolve())]
    group, key = setting.split(".")
    folder = Path(str(config[group][key])).expanduser().resolve()
    read = [[_name_in(file.resolve(), folder), digests[str(file.resolve())]] for file in files]
    return hashlib.sha256(json.dumps(read).encode()).hexdigest()


def _tuned_values_digest(path: Path, config: dict[str, Any]) -> str:
    """The SHA-256 of the values ``stage=generate`` reads of the tuned file at ``path`` for its category: of each of
    ``stage.strength`` and ``stage.guidance_scale`` that the stage is not given (null where the file has none, and
    the generation table gives it)."""
    from stablesdg.stages.checks import GENERATION_KEYS, tuned_entry

    entry = tuned_entry(path, str(config.get("category")))
    read = {key: float(entry[key]) if is_number(entry.get(key)) else entry.get(key)
            for key in GENERATION_KEYS if config["stage"].get(key) is None}
    return hashlib.sha256(json.dumps(read, sort_keys=True).encode()).hexdigest()


def _name_in(file: Path, folder: Path) -> str:
    """``file``'s path under ``folder`` (POSIX), so that the folder moved keeps it; its name where it lies elsewhere."""
    return file.relative_to(folder).as_posix() if file.is_relative_to(folder) else file.name


def replaced_setting_file(record: dict[str, Any], store: str | os.PathLike) -> str | None:
    """The first setting of the result ``record`` whose files, where its recorded config names them, now hold other
    content than the result recorded it read (``recorded_digests``); None where each holds the same, or is not there
    now."""
    read = recorded_digests(record)
    now = setting_file_digests(record.get("config") or {}, store) if read else {}
    return next((setting for setting in read if setting in now and now[setting] != read[setting]), None)


def replaced_because(setting: str, config: dict[str, Any], store: str | os.PathLike) -> str:
    """Why a result is not up to date whose ``setting`` names, in the resolved ``config``, other files than it read,
    in words that follow "made"."""
    if setting == "stage.tuned":
        return f"from other values than stage.tuned={config['stage']['tuned']} gives {config.get('category')} now"
    if setting in FOLDER_SETTINGS:
        group, key = setting.split(".")
        return f"from other images than {setting}={config[group][key]} holds now"
    return f"from another file than {setting} names now ({named_files(config, store)[setting][0]})"
