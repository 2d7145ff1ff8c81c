"""Experiment loggers from ``conf/logger/`` (W&B, CSV or none)."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from lightning.pytorch import loggers
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from stablesdg.errors import is_number
from stablesdg.library_arguments import require_config_arguments


class WandbLogger(loggers.WandbLogger):
    """Lightning's W&B logger, less the ``anonymous=None`` it always passes to ``wandb.init``: wandb ≥ 0.23 prints
    that the setting has no effect at every run, and its release notes say the argument will be removed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


def build_logger(cfg: DictConfig) -> Logger | None:
    """The configured Lightning logger, or None for ``logger=none``."""
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return None
    require_config_arguments(cfg.logger, "logger")
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
