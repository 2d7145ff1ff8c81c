"""What every trained stage shares: per-step seeds, resumable checkpoints keyed by the config, and a finished-run check.

Every trained stage draws the randomness of training step ``k`` from a seed derived from ``(seed, k, rank)``
(``step_seed``), never from RNG state carried over from earlier steps, so a run resumed from a checkpoint
takes exactly the steps of an uninterrupted one (bit-identical on a CPU).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from stablesdg import artifacts
from stablesdg.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_IDENTITY_KEYS = ("dataset", "model", "stage", "classifier", "category", "seed", "variant")


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of training step ``step`` on process ``rank`` of a run seeded ``seed`` (a 32-bit integer)."""
    return int(np.random.SeedSequence([int(seed), int(step), int(rank)]).generate_state(1)[0])


def step_generator(seed: int, step: int, rank: int, device: torch.device | str) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``step_seed(seed, step, rank)``."""
    return torch.Generator(device=device).manual_seed(step_seed(seed, step, rank))


def draw_batch(pool: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """``batch_size`` items of ``pool`` drawn uniformly with replacement by ``generator`` (on ``pool``'s device)."""
    return pool[torch.randint(0, pool.shape[0], (int(batch_size),), generator=generator, device=pool.device)]


def step_ticks(max_steps: int, world_size: int):
    """A loader that only paces the training loop: one item per step and rank (each step draws its own batch)."""
    from torch.utils.data import DataLoader

    return DataLoader(range(int(max_steps) * int(world_size)), batch_size=1)


def compute_device(cfg: DictConfig) -> torch.device:
    """The device for work outside the Lightning loop (latent caching, generation): CUDA unless ``trainer.accelerator=cpu``."""
    if torch.cuda.is_available() and str(cfg.trainer.get("accelerator", "auto")) in ("gpu", "cuda", "auto"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def run_identity(cfg: DictConfig) -> str:
    """Hash of the settings that shape a training run (not paths, logger or trainer), so a moved store still resumes."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    identity = {k: resolved.get(k) for k in _IDENTITY_KEYS}
    identity["dataset"] = {k: v for k, v in (identity["dataset"] or {}).items() if k != "split_dir"}
    return artifacts.config_hash(identity)


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
