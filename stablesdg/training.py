"""What every trained stage shares: resumable checkpoints keyed by the config, and a finished-run check."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from stablesdg import artifacts
from stablesdg.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_IDENTITY_KEYS = ("dataset", "model", "stage", "classifier", "category", "seed", "variant")


def compute_device(cfg: DictConfig) -> torch.device:
    """The device for work outside the Lightning loop (latent caching, generation): CUDA unless ``trainer.accelerator=cpu``."""
    if torch.cuda.is_available() and str(cfg.trainer.get("accelerator", "auto")) in ("gpu", "cuda", "auto"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def run_identity(cfg: DictConfig) -> str:
    """Hash of the settings that shape a training run (not paths, logger or trainer)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return artifacts.config_hash({k: resolved.get(k) for k in _IDENTITY_KEYS})


def claim_directory(directory: Path, cfg: DictConfig) -> bool:
    """Keep ``directory``'s partial work if this same config made it (return True); else empty it and stamp it."""
    stamp = directory / "config_hash.txt"
    identity = run_identity(cfg)
    if cfg.stage.get("resume", True) and stamp.is_file() and stamp.read_text().strip() == identity:
        return True
    if directory.exists():
        log.info("discarding partial work of another config in %s", directory)
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    artifacts.write_bytes_atomic(stamp, identity.encode())
    return False


def resume_checkpoint(out_dir: Path, cfg: DictConfig) -> Path | None:
    """``out_dir/checkpoints/last.ckpt`` if it was made by this same config; otherwise a clean checkpoint folder."""
    last = out_dir / CHECKPOINT_DIR / "last.ckpt"
    if claim_directory(out_dir / CHECKPOINT_DIR, cfg) and last.is_file():
        log.info("resuming from %s", last)
        return last
    return None


class StopOnSigterm(L.Callback):
    """Stop after the current step when the job gets SIGTERM (pre-emption, ``kill``) instead of at the epoch's end."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.received_sigterm:
            trainer.should_stop = True


def run_fit(trainer: L.Trainer, cfg: DictConfig, *args: Any, **kwargs: Any) -> None:
    """``trainer.fit(*args, **kwargs)``; a SIGTERM stops it after the current step with the one-line resume message."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    trainer.callbacks.append(StopOnSigterm())
    try:
        trainer.fit(*args, **kwargs)
    except SIGTERMException as err:
        raise UserError(f"stage={cfg.stage.name} stopped by SIGTERM at step {trainer.global_step}; run the same command "
                        "again to resume from the last checkpoint") from err


def require_finished(trainer: L.Trainer, cfg: DictConfig, reached: bool, where: Any) -> None:
    """A one-line error (rerun to resume) if ``trainer`` was interrupted before ``reached``."""
    if trainer.interrupted or not reached:
        raise UserError(f"stage={cfg.stage.name} stopped at {where}; run the same command again to resume "
                        "from the last checkpoint")


def remove_checkpoints(out_dir: Path, cfg: DictConfig) -> None:
    """Delete the run's checkpoints once its artifact is written (unless ``stage.keep_checkpoints``)."""
    if not cfg.stage.get("keep_checkpoints", False):
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
