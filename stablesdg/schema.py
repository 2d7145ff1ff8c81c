"""The typed top level of the config: Hydra checks these types itself (``seed=abc`` is a Hydra type error)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

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


def register_schema() -> None:
    """Make ``stablesdg_schema`` available to ``conf/config.yaml``'s defaults list, and the ``or_all`` resolver
    (``${or_all:${category}}`` is the category, or ``all`` when it is null)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=RootConfig)
    if not OmegaConf.has_resolver("or_all"):
        OmegaConf.register_new_resolver("or_all", lambda value: "all" if value is None else value)

