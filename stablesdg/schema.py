"""The typed top level of the config: Hydra checks these types itself (``seed=abc`` is a Hydra type error)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from stablesdg.errors import UserError, is_integer, is_number

SCHEMA_NAME = "stablesdg_schema"


@dataclass
class RootConfig:
    """Top-level keys; the groups (``dataset``, ``model``, ...) are free-form and checked where they are used."""

    category: Optional[str] = None
    seed: int = 0
    variant: str = "default"
    paths: Any = None
    dataset: Any = None
    model: Any = None
    stage: Any = None
    trainer: Any = None
    logger: Any = None
    classifier: Any = None
    generation: Any = None
    pipeline: Any = None


MAX_SEED = 2**32 - 1  # the largest seed Lightning's seed_everything and numpy accept


def require_seed(seed: Any, key: str = "seed") -> None:
    """A one-line ``UserError`` naming ``key`` unless ``seed`` is an integer from 0 to ``MAX_SEED``."""
    if not is_integer(seed) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{key} must be an integer from 0 to {MAX_SEED}, got {seed}")


def register_schema() -> None:
    """Make ``stablesdg_schema`` available to ``conf/config.yaml``'s defaults list, and the ``or_all`` resolver
    (``${or_all:${category}}`` is the category, or ``all`` when it is null)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=RootConfig)
    if not OmegaConf.has_resolver("or_all"):
        OmegaConf.register_new_resolver("or_all", lambda value: "all" if value is None else value)


# Switches that also take a word: model.compile is true, false or a torch.compile mode by name (checked where it is
# used, by stablesdg.choices.compile_mode).
SWITCHES_TAKING_A_WORD = frozenset({"model.compile"})
# Numbers whose default is null ("not set"), so the composed config cannot tell that they are numbers.
NUMBERS_DEFAULTING_TO_NULL = frozenset({"stage.strength", "stage.guidance_scale", "stage.alpha", "stage.max_images",
                                        "stage.num_images", "classifier.depth"})


def check_override_types(overrides: Sequence[str], compose: Callable[[list[str]], DictConfig]) -> None:
    """A one-line ``UserError`` for the first ``key=value`` override whose value cannot be of the key's kind in
    ``compose(group_overrides)`` (the config with the same groups and top-level keys, none of the dotted overrides):
    a switch (true or false there; except ``SWITCHES_TAKING_A_WORD``) given anything but true or false, since Hydra
    reads ``stage.preload=no`` as the string 'no', which Python takes as true; or a number (there, or one of
    ``NUMBERS_DEFAULTING_TO_NULL``) given a word (``stage.lr=abc``), outside ``trainer.``, whose Lightning arguments
    take words too (``trainer.devices=auto``).
    Sweeps (``a=1,2``) are checked job by job, where each job's override is one value."""
    parsed = [o for o in OverridesParser.create().parse_overrides(list(overrides))
              if not o.is_delete() and not o.is_sweep_override()]
    dotted = [o for o in parsed if "." in o.key_or_group and not isinstance(o.value(), bool)]
    if not dotted:
        return
    defaults = compose([o.input_line for o in parsed if "." not in o.key_or_group])
    for override in dotted:
        key, value = override.key_or_group, override.value()
        default = OmegaConf.select(defaults, key, default=None)
        if isinstance(default, bool) and not (key in SWITCHES_TAKING_A_WORD and isinstance(value, str)):
            raise UserError(f"{override.input_line}: {key} is a switch, set it to true or false")
        number = is_number(default) or (default is None and key in NUMBERS_DEFAULTING_TO_NULL)
        if number and isinstance(value, str) and not key.startswith("trainer.") and "${" not in value:
            raise UserError(f"{override.input_line}: {key} is a number, got {value!r}")
