"""Which settings results differ in: what decides whether their numbers may be averaged or ranked together."""

from __future__ import annotations

from typing import Any

from stablesdg.choices import with_depth_built
from stablesdg.provenance import RUN_MECHANICS, settings_shaping_results, without_later_defaults

# besides provenance.SETTINGS_NOT_SHAPING_RESULTS, settings that say how a run was done or where it read, not what it
# computed (artifact_name holds the seed)
_RUN_MECHANICS = {
    "stage": ("artifact_name", *RUN_MECHANICS),
    "classifier": (),
    "dataset": ("on_bad_file",),
}


def differing_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between the nested dicts ``a`` and ``b``: a key only one has counts unless
    its value there is null, which a setting added later with a null default holds (a missing key reads as null); a
    group only one has counts by each of its settings (``generation.Pa.strength``), not as one."""
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict | None) or isinstance(y, dict) and x is None:
            keys += differing_keys(x or {}, y or {}, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key}")
    return keys


def compared_settings(record: dict[str, Any]) -> dict[str, Any]:
    """What a result's number depends on besides its seed, from its ``result.json``: its stage's, classifier's and
    dataset's settings, less those that only say how the run was done or where it wrote."""
    config = settings_shaping_results(without_later_defaults(record.get("config") or {}))
    compared = {group: {k: v for k, v in (config.get(group) or {}).items() if k not in ignored}
                for group, ignored in _RUN_MECHANICS.items()}
    return {**compared, "classifier": with_depth_built(compared["classifier"])}
