"""Experiment loggers from ``conf/logger/`` (W&B, CSV or none)."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from stablesdg.errors import UserError, is_number


def build_logger(cfg: DictConfig) -> Logger | None:
    """The configured Lightning logger, or None for ``logger=none``."""
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return None
    return instantiate(cfg.logger)


WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # what wandb.init's settings accept


def require_wandb_mode(mode: object, setting: str) -> str:
    """``mode`` when wandb accepts it; else a one-line ``UserError`` naming ``setting`` (wandb itself refuses it
    with a stack trace, and only when the first step logs, after the model is built)."""
    if mode not in WANDB_MODES:
        raise UserError(f"{setting} must be online, offline or disabled (W&B's modes), got {mode!r}")
    return str(mode)


def require_logger_settings(cfg: DictConfig) -> None:
    """The checks of ``cfg.logger`` that need no run: W&B's ``logger.mode`` (``WANDB_MODE`` gives its default)."""
    logger = cfg.get("logger")
    if logger and str(logger.get("_target_", "")).endswith("WandbLogger") and logger.get("mode") is not None:
        require_wandb_mode(logger.mode, "logger.mode (WANDB_MODE gives its default)")


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
