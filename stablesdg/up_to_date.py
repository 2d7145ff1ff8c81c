"""Make's rule for the artifact store: whether a stage's ``result.json`` is up to date for a config, and if not,
why not, in a few words a log line can hold."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from stablesdg import artifacts, model_files, provenance, setting_files
from stablesdg.choices import DEVICE_STAGES, DIFFUSION_STAGES, with_depth_built
from stablesdg.compare import differing_keys
from stablesdg.errors import UserError
from stablesdg.unread_settings import left_unread

# a dry run's time for a result it would make again: later than every file's, so each step reading it would run too
WOULD_RUN = sys.maxsize
# why a result is not up to date where there is no finished result to speak of
NOT_MADE, UNREADABLE = "not made yet", "its result.json is unreadable"
# the config groups that only some stages read, and those stages: another stage's result is the same whatever the
# group holds (a classifier trained on real images alone, under model=tiny or model=sd15; a set's FID, whichever
# classifier= the command names; a set imported by stage=external, on any trainer=), so make's rule leaves the group
# out of that result's settings
GROUP_READERS = {
    "model": (*DIFFUSION_STAGES, "inspect", "pipeline"),
    "classifier": ("classify", "inspect", "pipeline"),
    "generation": ("generate", "pipeline"),
    "trainer": (*DEVICE_STAGES, "inspect"),
}


def why_not_up_to_date(result: Path, resolved: dict, newest_input: int, store: str) -> str | None:
    """None where ``result`` records this config (up to ``settings_make_compares``: not where files go, how the run
    is logged, how its stage goes about the work, or what its stage never reads, ``less_unread``, nor the generation
    table's values for other categories, ``tables_read``; and where it recorded the digest of its model files or of
    the files a setting names, not where they lie but what they hold: ``model_files``, ``setting_files``), is not
    older than the results it reads (``newest_input``: the newest ``artifacts.finished_time`` among them), and its
    inputs still hold what it read (a set whose images were left out by hand since is scored again); else why not,
    in a few words."""
    if not result.is_file():
        return NOT_MADE
    try:
        record = artifacts.read_result(result.parent)
    except UserError:
        return UNREADABLE
    if newest_input == WOULD_RUN:  # before the settings: a generate step's (s, ω) are not known yet
        return "it reads a step that runs first"
    made_by, wanted = less_unread(*tables_read(settings_make_compares(record.get("config") or {}),
                                               settings_make_compares(resolved)))
    by_content = bool(record.get(model_files.RECORD_KEY)) and isinstance(wanted.get("model"), dict)
    compared = [model_files.without_location(c) for c in (made_by, wanted)] if by_content else [made_by, wanted]
    files_read = setting_files.recorded_digests(record)
    files_now = setting_files.setting_file_digests(resolved, store) if files_read else {}
    by_file = [setting for setting in files_read if setting in files_now]  # else where it lies is all to compare
    compared = [provenance.without_settings(c, by_file) for c in compared]
    if provenance.config_hash(compared[0]) != provenance.config_hash(compared[1]):
        named = changed_settings(*compared)
        return f"made with other settings: {named}" if named else "made with other settings"
    if artifacts.finished_time(result, record) < newest_input:
        return "older than a result it reads"
    changed = artifacts.changed_inputs(store, record)
    if changed:
        return f"made from {', '.join(changed)}, remade or removed since"
    other_file = next((setting for setting in by_file if files_now[setting] != files_read[setting]), None)
    if other_file:
        return f"made {setting_files.replaced_because(other_file, resolved, store)}"
    return _other_model_weights(record, made_by, wanted, store) if by_content else None


def _other_model_weights(record: dict[str, Any], made_by: dict[str, Any], wanted: dict[str, Any],
                         store: str) -> str | None:
    """Why a result that recorded its model files' digest was made from other weights than ``wanted``'s model
    settings read now, wherever either found them; None where it was not."""
    now = model_files.model_digest(wanted["model"], store)
    if now == record[model_files.RECORD_KEY]:
        return None
    path = wanted["model"].get("path")
    if now is not None:
        return f"made from other model weights than model.path={path} holds"
    named = changed_settings(made_by, wanted)  # a hub id, or no model there now: where it lies is all to compare
    if named:
        return f"made with other settings: {named}"
    return f"made from model weights that model.path={path} no longer holds"


def settings_make_compares(config: dict[str, Any]) -> dict[str, Any]:
    """What make's rule compares of a resolved ``config``: ``provenance.settings_shaping_results``, less the settings of
    how its stage goes about the work (``provenance.RUN_MECHANICS``: where its code lives, resuming, checkpoints,
    loading images), where ``model=sd15_random`` keeps its drawn weights (``provenance.MODEL_MECHANICS``) and the config
    groups its stage never reads (``GROUP_READERS``); a ``classifier.depth`` left null as the depth it builds
    (``resnet``: 18), so the same network is the same setting."""
    shaping = _less_stage_settings(provenance.settings_shaping_results(config), provenance.RUN_MECHANICS)
    if isinstance(shaping.get("model"), dict):
        shaping["model"] = {k: v for k, v in shaping["model"].items() if k not in provenance.MODEL_MECHANICS}
    if isinstance(shaping.get("classifier"), dict):
        shaping["classifier"] = with_depth_built(shaping["classifier"])
    return groups_read(shaping)


def tables_read(made_by: dict[str, Any], wanted: dict[str, Any]) -> list[dict[str, Any]]:
    """The nested configs ``made_by`` (a result's) and ``wanted`` (this run's), each with the ``generation`` table of
    a ``stage=generate`` cut to what the stage reads of it (``stages.checks.resolve_settings``): for each of the
    strength and the guidance that neither its stage's settings nor the ``stage.tuned`` file give the category, the
    category's own entry's value, or where it has none, the fallback's. Another category's entry, or a fallback its
    own entry overrides, makes no other set; nor does a value moved between the fallback and the category's entry:
    each is compared where ``wanted`` reads it. The tuned file is ``wanted``'s, as it is now, for both: what it gave
    ``made_by`` is compared by its digest (``setting_files``), and its file may be gone or moved since."""
    tuned = _tuned_entry((wanted.get("stage") or {}).get("tuned"), str(wanted.get("category")))
    made_by_reads, wanted_reads = (_generation_read(config, tuned) for config in (made_by, wanted))
    read_from = {key: source for key, (source, _) in (wanted_reads or {}).items() if source in TABLE_PARTS}
    return [_with_table(made_by, made_by_reads, read_from), _with_table(wanted, wanted_reads, read_from)]


TABLE_PARTS = ("table", "fallback")  # the sources of first_given that are the generation table's


def _generation_read(settings: dict[str, Any], tuned: dict[str, Any]) -> dict[str, tuple[str, Any]] | None:
    """Where a ``stage=generate`` of ``settings`` reads each of its strength and guidance, and the value
    (``stages.checks.first_given``); None for another stage, or a config without a generation table."""
    from stablesdg.stages.checks import first_given

    stage, table = settings.get("stage"), settings.get("generation")
    if not isinstance(stage, dict) or stage.get("name") != "generate" or not isinstance(table, dict):
        return None
    entries = table.get("categories") if isinstance(table.get("categories"), dict) else {}
    entry, fallback = entries.get(str(settings.get("category"))), table.get("fallback")
    return first_given((("config", stage), ("tuned", tuned if stage.get("tuned") else {}),
                        ("table", entry if isinstance(entry, dict) else {}),
                        ("fallback", fallback if isinstance(fallback, dict) else {})))


def _with_table(settings: dict[str, Any], reads: dict[str, tuple[str, Any]] | None,
                read_from: dict[str, str]) -> dict[str, Any]:
    """``settings`` with its generation table cut to the values in ``reads``, each under the part of the table
    ``read_from`` names for it (where it gives one), else where it was read."""
    if reads is None:
        return settings
    placed: dict[str, dict[str, Any]] = {"table": {}, "fallback": {}}
    for key, (source, value) in reads.items():
        if source in TABLE_PARTS:
            placed[read_from.get(key, source)][key] = value
    category = str(settings.get("category"))
    return {**settings, "generation": {"categories": {category: placed["table"]} if placed["table"] else {},
                                       "fallback": placed["fallback"]}}


def _tuned_entry(path: Any, category: str) -> dict[str, Any]:
    """The values the ``stage.tuned`` file at ``path`` gives ``category``; {} where there is none, or none that can
    be read (the stage says why)."""
    if not path:
        return {}
    from stablesdg.stages.checks import tuned_entry

    try:
        return tuned_entry(Path(str(path)).expanduser(), category)
    except (OSError, UserError):
        return {}


def less_unread(*configs: dict[str, Any]) -> list[dict[str, Any]]:
    """The nested ``configs``, each less the settings that the stage of one of them leaves unread
    (``unread_settings.left_unread``: a set's FID settings where ``stage=generate`` does not score it, the generated
    images of a classifier trained on real ones alone, a training stage's validation-loop settings, ...): its result
    is the same whatever they say, and where the other's stage reads them, they differ in what makes it so
    (``stage.score``, ``stage.mode``, ...)."""
    stages = [c["stage"] for c in configs if isinstance(c.get("stage"), dict)]
    unread = {f"{group}.{key}" for c in configs for group, settings in c.items() if isinstance(settings, dict)
              for key in settings if any(left_unread(f"{group}.{key}", stage) for stage in stages)}
    return [provenance.without_settings(c, unread) for c in configs]


def groups_read(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (a config's, nested) less the config groups that its stage never reads (``stage_reads``)."""
    stage = settings.get("stage")
    return {group: value for group, value in settings.items()
            if not isinstance(stage, dict) or stage_reads(stage, group)}


def stage_reads(stage: dict[str, Any], group: str) -> bool:
    """Whether a run of the stage whose resolved settings are ``stage`` reads the config group ``group``
    (``GROUP_READERS``): ``stage=generate`` given both its strength and its guidance (a sweep's point, a pipeline's
    set) reads no ``generation`` table, whose per-category values are the defaults of the two."""
    name = stage.get("name")
    if name not in GROUP_READERS.get(group, (name,)):
        return False
    given = stage.get("strength") is not None and stage.get("guidance_scale") is not None
    return not (group == "generation" and name == "generate" and given)


def settings_keying_unfinished_work(config: dict[str, Any]) -> dict[str, Any]:
    """What a stage's unfinished work (its checkpoints) is kept for (``training.run_identities``):
    ``provenance.settings_shaping_results`` less where its stage's code lives (``provenance.STAGE_CODE``), so that a
    version that moves it still resumes. Stricter than make's rule (``run_identities`` leaves out what the stage never
    reads and compares the model's files by content), so that what earlier versions stamped still matches."""
    return _less_stage_settings(provenance.settings_shaping_results(config), provenance.STAGE_CODE)


def _less_stage_settings(shaping: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(shaping.get("stage"), dict):
        shaping["stage"] = {key: value for key, value in shaping["stage"].items() if key not in keys}
    return shaping


def changed_settings(made_by: dict[str, Any], wanted: dict[str, Any], most: int = 3) -> str:
    """The settings in which the configs ``made_by`` (a result's) and ``wanted`` (this run's) differ, as
    ``key=old (now new)``, at most ``most`` of them and how many more; empty where they differ only in a setting one
    holds as null and the other lacks (``compare.differing_keys``)."""
    before, now = (provenance.without_later_defaults(config) for config in (made_by, wanted))
    keys = differing_keys(before, now)
    shown = [f"{key}={_setting(before, key)} (now {_setting(now, key)})" for key in keys[:most]]
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return ", ".join(shown) + more


def _setting(config: dict[str, Any], key: str) -> str:
    """The value at the dotted ``key`` of the nested ``config`` as YAML writes a scalar (``true``, ``null``, ``0.5``);
    ``unset`` where there is none."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return "unset"
        value = value[part]
    return value if isinstance(value, str) else json.dumps(value)
