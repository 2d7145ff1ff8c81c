"""Experiment loggers from ``conf/logger/`` (W&B, CSV or none)."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from lightning.pytorch import loggers
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from stablesdg.errors import UserError, is_number
from stablesdg.library_arguments import require_config_arguments
from stablesdg.provenance import recorded_config


class WandbLogger(loggers.WandbLogger):
    """Lightning's W&B logger, less the ``anonymous=None`` it always passes to ``wandb.init``: wandb ≥ 0.23 prints
    that the setting has no effect at every run, and its release notes say the argument will be removed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


def build_logger(cfg: DictConfig, name: str | None = None) -> Logger | None:
    """The configured Lightning logger (its run named ``name`` where given, else as ``logger.name`` says), with every
    setting of the run logged as its hyperparameters (as the run's ``result.json`` records them: a W&B run's config, a
    CSV log's ``hparams.yaml``); None for ``logger=none``."""
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return None
    require_config_arguments(cfg.logger, "logger")
    try:
        logger = instantiate(cfg.logger, **({"name": name} if name else {}))
        logger.log_hyperparams(recorded_config(cfg))  # where W&B starts its run, and checks its settings
    except Exception as err:
        refused = _refused_setting(err)
        if refused is None:
            raise
        raise UserError(f"W&B refused a logger setting: {refused}") from err
    return logger


def _refused_setting(err: BaseException) -> str | None:
    """What W&B's settings model (pydantic) said of the settings it refused with ``err``, in one line, as
    ``setting: reason, got value``; None for any other error."""
    try:
        from pydantic import ValidationError
    except ImportError:
        return None
    if not isinstance(err, ValidationError):
        return None
    return "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}, got {error.get('input')!r}"
                     for error in err.errors())


def log_run(cfg: DictConfig, metrics: dict[str, Any], images: dict[str, Any] | None = None) -> None:
    """Log a stage that trains nothing (Lightning logs the trained ones) into a run of its own: its settings
    (``build_logger``), its numeric ``metrics`` (nested keys joined by ``/``) and, where the logger takes images (W&B),
    each image of ``images`` (None is skipped) under its key. Nothing for ``logger=none``."""
    logger = build_logger(cfg)
    if logger is None:
        return
    logger.log_metrics(numeric_metrics(metrics))
    if hasattr(logger, "log_image"):
        for key, image in (images or {}).items():
            if image is not None:
                logger.log_image(key=key, images=[image])
    logger.finalize("success")


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
