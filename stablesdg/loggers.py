"""Experiment loggers from ``conf/logger/`` (W&B, CSV or none)."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from stablesdg.errors import is_number


def build_logger(cfg: DictConfig) -> Logger | None:
    """The configured Lightning logger, or None for ``logger=none``."""
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return None
    return instantiate(cfg.logger)


def numeric_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested ``metrics`` to ``{"a/b": float}``, keeping only numbers (what loggers accept)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(numeric_metrics(value, prefix=f"{name}/"))
        elif is_number(value):
            flat[name] = float(value)
    return flat
