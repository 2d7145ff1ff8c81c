"""Checks of settings that every stage shares, importable without torch: positive counts and numbers, split names,
prompt templates, the category a stage works on, and the trainer's and logger's settings that need no run.
Each refuses a bad value with a one-line ``UserError`` naming the setting."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from omegaconf import DictConfig

from stablesdg.choices import (
    SPLIT_NAMES, compile_mode, require_resolution, require_wandb_credentials, require_wandb_mode,
)
from stablesdg.data.categories import CategorySet
from stablesdg.errors import UserError, is_integer, is_number, require_integer
from stablesdg.weight_files import make_weights_cache, require_hub_reachable, sd15_location


def _require_integers(stage: DictConfig, keys: Iterable[str], minimum: int, wanted: str) -> None:
    for key in keys:
        require_integer(f"stage.{key}", stage[key], minimum, wanted)


def require_positive(stage: DictConfig, keys: Iterable[str]) -> None:
    """A one-line ``UserError`` naming the first of ``stage``'s ``keys`` that is not a positive integer (``1.5`` is
    not one; Python's ``int`` would have made it 1)."""
    _require_integers(stage, keys, 1, "a positive integer")


def require_non_negative(stage: DictConfig, keys: Iterable[str]) -> None:
    """As ``require_positive``, for counts where 0 means "none" (``stage.validation_every=0``: no validation grids)."""
    _require_integers(stage, keys, 0, "an integer >= 0 (0: none)")


def require_positive_number(stage: DictConfig, keys: Iterable[str]) -> None:
    """A one-line ``UserError`` naming the first of ``stage``'s ``keys`` that is not a finite number above 0 (a
    learning rate of 0 would train nothing, a negative one is refused by the optimiser with a stack trace, and nan or
    inf would train to nan weights without a word)."""
    for key in keys:
        value = stage[key]
        if not is_number(value) or not 0 < value < math.inf:
            raise UserError(f"stage.{key} must be a positive finite number, got {value}")


def require_split(stage: DictConfig, key: str) -> str:
    """``stage[key]`` when it names a split (train, val, test); else a one-line ``UserError`` naming ``key``."""
    split = stage[key]
    if split not in SPLIT_NAMES:
        raise UserError(f"stage.{key} must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    return split


def fill_prompt(template: str, word: str, key: str) -> str:
    """``template`` with its ``{}`` replaced by ``word``; a one-line ``UserError`` naming ``key`` when the template
    has no ``{}`` (the placeholder would never be in the prompt, so nothing would learn it) or other fields."""
    template = str(template)
    if "{}" not in template:
        raise UserError(f"{key}={template!r} has no {{}} for the placeholder; e.g. '{key}=\"A photo of {{}}\"' (the "
                        "braces quoted for Hydra, the whole word for the shell)")
    try:
        return template.format(word)
    except (IndexError, KeyError, ValueError) as err:
        raise UserError(f"{key}={template!r} must have one {{}} and no other braces ({err!r})") from err


def category_missing(stage_name: str, verb: str, abbreviations: Sequence[str]) -> UserError:
    """The one-line error for a stage that works on one category run without ``category=``:
    "stage=<name> <verb> one category: add category=<the dataset's abbreviations>"."""
    return UserError(f"stage={stage_name} {verb} one category: add category=<{', '.join(abbreviations)}>")


def require_category(cfg: DictConfig, verb: str) -> None:
    """``category_missing`` when ``cfg.category`` is unset and the dataset's config names its classes; a dataset
    that finds its classes on disk (``dataset=folder``) is left to the stage, which lists them once it has read
    them."""
    classes = cfg.dataset.get("classes")
    if cfg.category is None and classes:
        raise category_missing(cfg.stage.name, verb, CategorySet(classes).abbreviations)


# Trainer arguments every trained stage passes itself, which would silently win over the same key in cfg.trainer;
# each with what to set instead.
STAGE_OWNED_TRAINER_SETTINGS = {
    "max_steps": "set stage.max_steps (ti, lora, full, dcgan, ddpm) or stage.max_epochs (classify)",
    "max_epochs": "set stage.max_epochs (classify) or stage.max_steps (ti, lora, full, dcgan, ddpm)",
    "logger": "choose logger=wandb, logger=csv or logger=none",
    "callbacks": "each stage sets its own checkpoints and validation",
    "num_sanity_val_steps": "each stage sets its own checkpoints and validation",
    "default_root_dir": "each training stage keeps Lightning's own files (a SLURM requeue's hpc_ckpt_<n>.ckpt) in "
                        "its checkpoints folder, where only a rerun of the same stage and settings resumes from them",
}


def stage_owned_trainer_setting(key: str, value: object) -> UserError:
    """The one-line error for ``trainer.<key>=<value>`` where ``key`` is one of ``STAGE_OWNED_TRAINER_SETTINGS``:
    it would do nothing, and what to set instead."""
    return UserError(f"trainer.{key} is set by each stage from its own settings, so trainer.{key}={value} would do "
                     f"nothing: drop it; {STAGE_OWNED_TRAINER_SETTINGS[key]}")


def require_trainer_settings(cfg: DictConfig) -> None:
    """The checks of ``cfg.trainer`` that need no run: a one-line ``UserError`` when it sets a key a stage sets
    itself (``STAGE_OWNED_TRAINER_SETTINGS``: ``+trainer.max_epochs=5`` would do nothing), when it sets
    ``trainer.fast_dev_run`` (no stage could finish under it, and a rerun would stop again), when
    ``trainer.accelerator`` asks for a GPU (``trainer=gpu``) and none is visible, when
    ``trainer.accumulate_grad_batches`` is not a positive integer (Lightning divides by it mid-run), or when
    ``trainer.gradient_clip_val`` is set to something other than a finite number >= 0 (Lightning refused nan with a
    stack trace at the first step), or when ``trainer.precision=16-mixed`` asks the CPU for float16 autocast, which
    Lightning would replace by bf16-mixed with a warning in its own terms. The other values Lightning checks itself
    (an unknown ``trainer.precision``) are refused once it has loaded, by
    ``stablesdg.training.require_accepted_trainer_settings``, before any data is read."""
    for key in STAGE_OWNED_TRAINER_SETTINGS:
        if key in cfg.trainer:
            raise stage_owned_trainer_setting(key, cfg.trainer[key])
    quick = cfg.trainer.get("fast_dev_run")
    if quick not in (None, False, 0):
        raise UserError(f"trainer.fast_dev_run={str(quick).lower()}: Lightning's quick check runs a few batches, "
                        "saves no checkpoint and logs nothing, so no stage could finish under it; drop it, and set "
                        "stage.max_steps=2 (ti, lora, full, dcgan, ddpm) or stage.max_epochs=1 (classify) for a quick run")
    require_integer("trainer.accumulate_grad_batches", cfg.trainer.get("accumulate_grad_batches", 1), 1,
                    "a positive integer")
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None and (not is_number(clip) or not 0 <= clip < math.inf):
        raise UserError(f"trainer.gradient_clip_val must be a finite number >= 0 (0 or null: no clipping), got {clip}")
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"trainer.accelerator={accelerator} needs a CUDA GPU and this machine shows none; "
                            "use trainer=cpu (or trainer.accelerator=cpu trainer.precision=32-true)")
    precision = str(cfg.trainer.get("precision", "32-true"))
    if accelerator == "cpu" and precision in ("16-mixed", "16"):
        raise UserError(f"trainer.precision={precision}: the CPU has no float16 mixed precision, and Lightning would "
                        "train in bf16-mixed instead; set trainer.precision=bf16-mixed (or 32-true)")


def require_every_step_run(cfg: DictConfig) -> None:
    """A one-line ``UserError`` for a trainer setting that would stop a stage that trains for ``stage.max_steps``
    optimiser steps of one batch each (drawn from the step's seed) short of them: ``trainer.accumulate_grad_batches``
    above 1 (Lightning would count each batch as a fraction of a step), ``trainer.limit_train_batches`` below all or
    ``trainer.overfit_batches`` (either would end its one epoch of steps early). Rerunning could not finish it."""
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    if accumulate != 1:
        raise UserError(f"stage={cfg.stage.name} trains on one batch per optimiser step and does not accumulate "
                        f"gradients: drop trainer.accumulate_grad_batches={accumulate} (a larger stage.batch_size "
                        "averages over as many images)")
    limit, overfit = cfg.trainer.get("limit_train_batches"), cfg.trainer.get("overfit_batches")
    every_batch = {"limit_train_batches": limit is None or (isinstance(limit, float) and limit == 1.0),  # 1: one batch
                   "overfit_batches": overfit is None or (is_number(overfit) and overfit == 0)}
    for key, runs_all in every_batch.items():
        if not runs_all:
            value = cfg.trainer[key]
            raise UserError(f"stage={cfg.stage.name} draws a batch of its own for each of its stage.max_steps steps, "
                            f"and trainer.{key}={value} would stop it short of them: drop it, and set "
                            "stage.max_steps for a shorter run")


def require_validated_and_tested(cfg: DictConfig) -> None:
    """A one-line ``UserError`` for a trainer setting that leaves ``stage=classify`` no validation, by which it keeps
    its best epoch (``trainer.limit_val_batches=0``, ``trainer.check_val_every_n_epoch`` above ``stage.max_epochs``),
    or no test, whose accuracy is its result (``trainer.limit_test_batches=0``)."""
    for key, what in (("limit_val_batches", "validates every epoch to keep its best one"),
                      ("limit_test_batches", "reports its accuracy on the test images")):
        value = cfg.trainer.get(key)
        if is_number(value) and value == 0:
            raise UserError(f"trainer.{key}={value}: stage=classify {what}, which this leaves it none of; drop it")
    every = cfg.trainer.get("check_val_every_n_epoch")
    if is_integer(every) and is_integer(cfg.stage.max_epochs) and every > cfg.stage.max_epochs:
        raise UserError(f"trainer.check_val_every_n_epoch={every} would validate none of stage.max_epochs="
                        f"{cfg.stage.max_epochs} epochs, and stage=classify keeps its best epoch on validation; "
                        f"lower it, or raise stage.max_epochs")


def require_logger_settings(cfg: DictConfig) -> None:
    """The checks of ``cfg.logger`` that need no run: W&B's ``logger.mode`` (``WANDB_MODE`` gives its default), and
    an API key where that mode reaches the server."""
    logger = cfg.get("logger")
    if logger and str(logger.get("_target_", "")).endswith("WandbLogger") and logger.get("mode") is not None:
        mode = require_wandb_mode(logger.mode, "logger.mode (WANDB_MODE gives its default)")
        require_wandb_credentials(mode, "logger.mode")


def require_model_settings(cfg: DictConfig) -> None:
    """The checks of ``cfg.model`` that need no weights read, for the stages that build it: ``model.resolution`` a
    positive multiple of 8, ``model.compile`` a switch or a ``torch.compile`` mode, ``model=sd15``'s ``model.path``
    a diffusers folder, a ``.safetensors`` file or a hub id (reachable where the loader would fetch from the hub:
    ``weight_files.require_hub_reachable``), and ``model.weights_cache`` a folder that can be made
    (the builders check them again, with the VAE's own factor, before they build or read anything)."""
    if "resolution" in cfg.model:
        require_resolution(cfg.model.resolution)
    compile_mode(cfg.model.get("compile"))
    if str(cfg.model.get("_target_", "")).endswith(".load_sd15"):
        require_hub_reachable(*sd15_location(cfg.model.get("path"), cfg.model.get("variant")), cfg.model.get("config"))
    if cfg.model.get("weights_cache"):
        make_weights_cache(cfg.model.weights_cache)
