"""What a run says before it starts, where its settings likely mean something other than what it will do: a finished
result it makes again or replaces, settings its stage leaves unread (``stablesdg.unread_settings``), a random-weight
stand-in for SD1.5 on real images, a sweep's choice of (s, ω) left unread. Each is a log line, never an error; the
entry point (``stablesdg.train``) calls them."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

from omegaconf import DictConfig

from stablesdg.choices import DIFFUSION_STAGES, STAND_IN_MODELS
from stablesdg.once import warn_once
from stablesdg.unread_settings import unread_setting_notes

log = logging.getLogger("stablesdg.train")


def note_finished_before(out: Path, resolved: dict, store: str, skip_up_to_date: bool = False) -> bool:
    """Log that ``out`` already holds a finished result, when it does: of these same settings, made from inputs that
    still hold what they held then (``up_to_date.why_not_up_to_date``), which a stage run on its own makes again,
    where ``stage=pipeline`` would skip it (and so does this run with ``skip_up_to_date``); or made with other settings
    (named) or from inputs since replaced, whose result this run replaces (keeping what work of it the stage can). The
    user learns it before the work starts. Returns whether the result is up to date."""
    from stablesdg.artifacts import RESULT_FILE, finished_time
    from stablesdg.up_to_date import NOT_MADE, UNREADABLE, why_not_up_to_date

    result = out / RESULT_FILE
    why = why_not_up_to_date(result, resolved, 0, store)
    if why is None:
        made = datetime.datetime.fromtimestamp(finished_time(result) / 1e9).strftime("%Y-%m-%d %H:%M")
        if skip_up_to_date:
            log.info("%s holds a finished run of these settings (made %s), up to date: skipped (skip_up_to_date=true)",
                     out, made)
        else:
            log.info("%s holds a finished run of these settings (made %s); this run makes it again (stage=pipeline "
                     "skips what is up to date, and so does skip_up_to_date=true)", out, made)
    elif why not in (NOT_MADE, UNREADABLE):  # made with other settings, or from inputs since replaced
        log.info("%s holds a finished run %s; this run makes a new result in its place (another variant=<name> keeps "
                 "both)", out, why)
    return why is None


def note_unread_settings(overrides: list[str], stage: DictConfig) -> None:
    """Warn where the command's ``overrides`` set what its ``stage`` leaves unread, a line for each kind
    (``unread_settings.unread_setting_notes``). Said once under DDP, whose processes each run the command, and once
    in a multirun's process. Not errors: one set of arguments may serve a pipeline and the ``stage=inspect`` before
    it (``make quickstart QUICKSTART_ARGS=...``), and a multirun may sweep ``stage.mode`` over none and expand, or
    ``stage.score`` over false and true."""
    notes = unread_setting_notes(overrides, stage)
    if not notes:
        return
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    for note in notes:
        warn_once(log, "%s", note)


def uses_diffusion_model(cfg: DictConfig) -> bool:
    """Whether a run of ``cfg`` adapts, or generates with, the Stable Diffusion model of ``model=``: a stage of
    ``DIFFUSION_STAGES``, or a pipeline with such a step (an adapt step of ti, lora or full; a sweep or a set made by
    stage=generate)."""
    if cfg.stage.name != "pipeline":
        return cfg.stage.name in DIFFUSION_STAGES
    steps = set(cfg.pipeline.steps)
    adapts = "adapt" in steps and bool(set(cfg.pipeline.adapt) & set(DIFFUSION_STAGES))
    return adapts or (cfg.pipeline.generator == "generate" and bool(steps & {"sweep", "generate"}))


def note_stand_in_model(cfg: DictConfig) -> None:
    """Warn where a random-weight stand-in for SD1.5 (``model=tiny``, the default, or ``model=sd15_random``) is
    adapted to, or generates from, a dataset of real images: the headline command without ``model=sd15`` would
    otherwise train and generate for hours and show only that the pipeline runs. The synthetic set, the quickstart's,
    is a demonstration, and no note is made there. Said once per process: a multirun's jobs share it."""
    if cfg.model.get("name") in STAND_IN_MODELS and not cfg.dataset.get("synthetic") and uses_diffusion_model(cfg):
        warn_once(log, "model=%s is a random-weight stand-in for SD1.5: what it learns from and makes of %s shows "
                  "that the pipeline runs, not what the method achieves; for that, model=sd15 model.path=<SD1.5 weights>",
                  cfg.model.name, cfg.dataset.name)


def note_sweep_choice_not_used(cfg: DictConfig) -> None:
    """Warn where ``stage=generate`` makes an image-oriented set at the (s, ω) of ``conf/generation/`` while the sweep
    of its variant chose others. A sweep's ``tuned_generation.yaml`` is read where ``stage.tuned`` names it (a pipeline
    with its sweep step passes on what it chose), so after a sweep run on its own the set would otherwise be made at
    the table's values without a word. Said once per process: a multirun over seeds says it at its first job."""
    from stablesdg.generated import GENERATE_STAGE

    if cfg.stage.name != GENERATE_STAGE or cfg.category is None or cfg.stage.get("tuned") or cfg.stage.init != "image":
        return
    from stablesdg.commands import shell_word
    from stablesdg.stages.checks import generation_values, sweep_choice_not_used

    unused = sweep_choice_not_used(cfg, str(cfg.category))
    if unused is not None:
        used, chosen, tuned_file = unused
        warn_once(log, "stage=generate: %s at %s (conf/generation/), not at %s, which the sweep of variant %s chose; "
                  "to generate at those, add %s", cfg.category, generation_values(used), generation_values(chosen),
                  cfg.variant, shell_word("stage.tuned", str(tuned_file)))
