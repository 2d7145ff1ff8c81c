"""Where a setting the user named is not: the settings or options they most likely meant, for the one-line errors
of ``stablesdg.schema``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf


def options_having(key: str, group: str, options: Sequence[str], overrides: Sequence[str],
                    compose: Callable[[list[str]], DictConfig]) -> list[str]:
    """The ``options`` of config ``group`` (``stage``, ``hydra/launcher``) whose config, composed by ``compose`` with
    ``overrides`` less any choice of ``group``, has ``key``; each as ``group=option``."""
    kept = [word for word in overrides if word.lstrip("+~").split("=", 1)[0] != group]
    having = []
    for option in options:
        try:
            composed = compose([*kept, f"{group}={option}"])
        except Exception:  # an option that needs more settings to compose has nothing to say here
            continue
        if has_key(composed, key):
            having.append(f"{group}={option}")
    return having


def has_key(config: DictConfig, key: str) -> bool:
    """Whether the dotted ``key`` is a key of ``config`` (whatever its value: null, ``???`` or an interpolation)."""
    parent_key, _, last = key.rpartition(".")
    parent = OmegaConf.select(config, parent_key, default=None, throw_on_missing=False) if parent_key else config
    return isinstance(parent, DictConfig) and last in parent.keys()


def named_with_word(word: str, names: list[str], most: int = 3) -> list[str]:
    """The ``names`` that hold ``word`` as one of their ``_``-separated words (``steps``: ``max_steps``), where there
    are from one to ``most``; else none."""
    found = [name for name in names if word in name.split("_")]
    return found if len(found) <= most else []


def listed(words: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def settings_named(config: DictConfig, name: str, most: int = 3) -> list[str]:
    """The dotted keys of ``config`` whose last part is ``name`` (``generation.strength`` →
    ``stage.strength``, ``generation.fallback.strength``), where there are from one to ``most``; else none."""
    found: list[str] = []

    def visit(node: Any, prefix: str) -> None:
        for part, value in node.items():
            dotted = f"{prefix}{part}"
            if part == name:
                found.append(dotted)
            if isinstance(value, dict):
                visit(value, f"{dotted}.")

    visit(OmegaConf.to_container(config, resolve=False), "")
    return found if len(found) <= most else []


def having_it(options: list[str]) -> str:
    """``stage=lora has it``, ``stage=fid and stage=generate have it``."""
    return f"{listed(options)} {'has' if len(options) == 1 else 'have'} it"
