"""What a run says before it starts, where its settings likely mean something other than what it will do: a finished
result it makes again or replaces, settings its stage leaves unread (``pipeline.`` ones; a classifier's generated
images at ``stage.mode=none``), a random-weight stand-in for SD1.5 on real images. Each is a log line, never an
error; the entry point (``stablesdg.train``) calls them."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

from omegaconf import DictConfig

from stablesdg.choices import DIFFUSION_STAGES, STAND_IN_MODELS
from stablesdg.once import warn_once
from stablesdg.schema import unread_composition_settings, unread_pipeline_settings, unread_scoring_settings

log = logging.getLogger("stablesdg.train")


def note_finished_before(out: Path, resolved: dict, store: str) -> None:
    """Log that ``out`` already holds a finished result, when it does: of these same settings, made from inputs that
    still hold what they held then (``up_to_date.why_not_up_to_date``), which a stage run on its own makes again,
    where ``stage=pipeline`` would skip it; or made with other settings (named) or from inputs since replaced, whose
    result this run replaces (keeping what work of it the stage can). The user learns it before the work starts."""
    from stablesdg.artifacts import RESULT_FILE
    from stablesdg.up_to_date import NOT_MADE, UNREADABLE, why_not_up_to_date

    result = out / RESULT_FILE
    why = why_not_up_to_date(result, resolved, 0, store)
    if why is None:
        made = datetime.datetime.fromtimestamp(result.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        log.info(
            "%s holds a finished run of these settings (made %s); this run makes it again (stage=pipeline skips "
            "what is up to date)", out, made)
    elif why not in (NOT_MADE, UNREADABLE):  # made with other settings, or from inputs since replaced
        log.info("%s holds a finished run %s; this run makes a new result in its place (another variant=<name> keeps "
                 "both)", out, why)


def note_unread_settings(overrides: list[str], stage: DictConfig) -> None:
    """Warn where the command's ``overrides`` set what its ``stage`` leaves unread: ``pipeline.`` settings outside
    ``stage=pipeline`` (``schema.unread_pipeline_settings``), or the generated images of ``stage=classify`` at
    ``stage.mode=none``, or their number at ``stage.mode=substitute`` (``schema.unread_composition_settings``), or the
    FID settings of ``stage=generate`` without ``stage.score=true`` (``schema.unread_scoring_settings``). Said once
    under DDP, whose processes each run the command, and once in a multirun's process. Not errors: one set of
    arguments may serve a pipeline and the ``stage=inspect`` before it (``make quickstart QUICKSTART_ARGS=...``), and
    a multirun may sweep ``stage.mode`` over none and expand, or ``stage.score`` over false and true."""
    pipeline = unread_pipeline_settings(overrides, stage.name)
    composition = unread_composition_settings(overrides, stage.name, stage.get("mode"))
    scoring = unread_scoring_settings(overrides, stage.name, stage.get("score"))
    if not pipeline and not composition and not scoring:
        return
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    if pipeline:
        warn_once(log, "%s: only stage=pipeline reads the pipeline's settings, and this command runs stage=%s, which "
                  "leaves them unread (its own: python -m stablesdg.train stage=%s --cfg job --package stage)",
                  " ".join(pipeline), stage.name, stage.name)
    if composition and stage.mode == "none":
        warn_once(log, "%s: stage.mode=none trains on real images only and leaves %s unread; stage.mode=expand (or "
                  "substitute) trains on the generated images too", " ".join(composition),
                  "it" if len(composition) == 1 else "them")
    elif composition:
        warn_once(log, "%s: stage.mode=substitute tops each class up to its full real count with generated images "
                  "and leaves it unread; stage.mode=expand adds stage.extra_per_class generated images to each class",
                  " ".join(composition))
    if scoring:
        warn_once(log, "%s: stage=generate scores its set only with stage.score=true, and leaves %s unread; add "
                  "stage.score=true, or score the finished set with stage=fid", " ".join(scoring),
                  "it" if len(scoring) == 1 else "them")


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
