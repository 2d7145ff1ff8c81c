"""``stage=pipeline``: a whole experiment for a dataset, as a chain of ordinary stage runs.

Per category: the method's adaptation stages (``pipeline.adapt``: TI → LoRA by default) → (s, ω)
sweep → generate with the best setting → FID; then, when the pipeline covers every category, the
classifiers (``conf/pipeline/``). Each step is composed like a
command line — this command's own overrides, then ``stage=<step>``, ``category=<c>`` and the step's
overrides — and run in this process with :func:`stablesdg.train.run`.

A step is skipped when its ``result.json`` exists, records the same config hash, and is not older
than the results the step builds on (make's rule); so a rerun does no work, an interrupted experiment
resumes where it stopped, and deleting one artifact reruns that step and the ones after it that read it
(a classifier trained on real images alone reads no generated set, so a new set never retrains it). For
parallel categories, run ``-m stage=pipeline category=A,B,... hydra/launcher=joblib`` (or submitit)
and then ``stage=pipeline`` once more for the classifiers. The steps and make's rule are ``pipeline_steps``'; the
checks run before the first step, ``pipeline_checks``'.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from stablesdg import artifacts
from stablesdg.commands import own_overrides, report_command
from stablesdg.data.categories import CategorySet
from stablesdg.errors import UserError
from stablesdg.generated import OWN_VARIANT
from stablesdg.logger_run import logger_run_ended
from stablesdg.pipeline_checks import check_external_folders, check_pipeline_settings, check_steps
from stablesdg.pipeline_steps import (
    Runner, adapt_overrides, classify_overrides, dry_run_summary, fid_overrides, generate_overrides, sweep_overrides,
)
from stablesdg.sweeps import aggregate_sweep
from stablesdg.up_to_date import WOULD_RUN

log = logging.getLogger(__name__)


def command_overrides() -> list[str]:
    """This command's own overrides, without those each step sets itself (``stage*``, ``category``)."""
    own = own_overrides("stage", "category")
    if own is None:  # composed in-process: the overrides are gone, and the steps would run elsewhere
        raise RuntimeError("stage=pipeline needs its command line: run it as python -m stablesdg.train stage=pipeline ...")
    return own


def dataset_categories(cfg: DictConfig) -> CategorySet:
    """The dataset's classes: from its config, or from the names of its folders or files when the config names none
    (``unscanned_categories``: nothing is written, so a dry run on an empty store leaves it empty). Where the store
    holds the dataset's split file, its images are scanned too and checked against it: other images under the
    dataset's name (the same ``dataset.name`` at another ``dataset.root``) are refused in one line before any step,
    also where every step is up to date, since make's rule does not count where the images are read from."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.dataset)
    if not dm.split_path.is_file():  # a dry run on an empty store writes nothing; a run's first step makes the split
        return dm.unscanned_categories()
    dm.setup()
    return dm.categories


def pipeline_categories(cfg: DictConfig, categories: CategorySet | None = None) -> tuple[list[str], bool]:
    """The categories to run, and whether they are all of the dataset's ``categories`` (``dataset_categories`` when
    not given; then the classifiers run too). A class named twice (``[Pa,patches]``) is a one-line ``UserError``."""
    categories = dataset_categories(cfg) if categories is None else categories
    chosen = cfg.pipeline.get("categories")
    if chosen is None and cfg.category is not None:
        chosen = [cfg.category]
    if chosen is None:
        return list(categories.abbreviations), True
    names = [categories.resolve(c) for c in chosen]
    twice = next((name for index, name in enumerate(names) if name in names[:index]), None)
    if twice is not None:
        given = ", ".join(str(c) for c, name in zip(chosen, names) if name == twice)
        raise UserError(f"pipeline.categories=[{','.join(map(str, chosen))}] names {twice} twice ({given}); give each "
                        "class once")
    return names, set(names) == set(categories.abbreviations)


def _sweep(runner: Runner, cfg: DictConfig, category: str, newest: int) -> tuple[list[str], int]:
    """Run the (s, ω) grid of one category; return the overrides that select its best setting, and ``newest``, the
    time of the newest result that a set made at that setting reads (its adapters': the points only choose its (s, ω),
    which its settings record, so a sweep rerun that chooses the same remakes no set), or ``WOULD_RUN`` in a dry run
    where a point would run."""
    pipe = cfg.pipeline
    points = []
    latest = newest
    for strength in pipe.sweep.strength:
        for guidance in pipe.sweep.guidance_scale:
            result, mtime = runner.step(f"sweep {category} s={strength} ω={guidance}",
                                        sweep_overrides(pipe, category, strength, guidance), newest)
            latest = max(latest, mtime)
            if mtime != WOULD_RUN:
                metrics = artifacts.read_result(result.parent)["metrics"]
                points.append((metrics[pipe.sweep.metric], strength, guidance, result.parent))
    if latest == WOULD_RUN:  # a dry run: the best point is known once every point has run
        log.info("pipeline: best for %s: chosen once the sweep's points have run", category)
        return [], latest
    value, strength, guidance, folder = min(points, key=lambda point: point[:3])
    if not runner.dry_run:  # the matrix of this pipeline's points, and the points of other sweeps scored alike
        with logger_run_ended():
            logger = sweep_logger(cfg, category)
            aggregate_sweep(cfg.paths.artifacts, cfg.dataset.name, cfg.variant, pipe.sweep.metric, logger=logger,
                            like=folder, logged={category})
            if logger is not None:
                logger.finalize("success")
    log.info("pipeline: best for %s: s=%s, ω=%s (%s %.4f)", category, strength, guidance, pipe.sweep.metric, value)
    return [f"stage.strength={strength}", f"stage.guidance_scale={guidance}"], newest


def sweep_logger(cfg: DictConfig, category: str) -> Any:
    """The logger of ``category``'s sweep matrix in a pipeline: a run of its own, named and grouped as a run of the
    category's ``sweep`` folder (``neu-Pa-default-sweep``); None where the configured logger takes no tables (csv,
    none), whose run would hold the settings alone."""
    from hydra.utils import get_class

    from stablesdg.loggers import build_logger

    if not cfg.get("logger") or "_target_" not in cfg.logger or not hasattr(get_class(cfg.logger._target_), "log_table"):
        return None
    named = copy.deepcopy(cfg)
    with open_dict(named):
        named.category = category
        named.stage.artifact_name = "sweep"
    return build_logger(named)


def _category_chain(runner: Runner, cfg: DictConfig, category: str) -> int:
    """Adaptation → sweep → generate → FID for one category; return when the generated set's result was written (0
    when the pipeline has no generate step), the one result of the chain the classifiers read."""
    pipe = cfg.pipeline
    steps = set(pipe.steps)
    newest = 0
    for name in (pipe.adapt if "adapt" in steps else []):
        _, mtime = runner.step(f"{name} {category}", adapt_overrides(pipe, name, category), newest)
        newest = max(newest, mtime)
    chosen: list[str] = []
    if "sweep" in steps and pipe.generator == "generate":  # (s, ω) only exist for the diffusion prior
        chosen, newest = _sweep(runner, cfg, category, newest)
    generated = 0
    if "generate" in steps:
        if "sweep" not in steps and pipe.generator == "generate":
            _warn_untuned(runner, cfg, category)
        _, generated = runner.step(f"generate {category}", generate_overrides(pipe, category, chosen), newest)
    if "fid" in steps:
        runner.step(f"fid {category}", fid_overrides(pipe, category), max(newest, generated))
    return generated


def _warn_untuned(runner: Runner, cfg: DictConfig, category: str) -> None:
    """A warning when ``category``'s set is to be made at the dataset table's (s, ω) while an earlier sweep of this
    variant chose others (its ``tuned_generation.yaml``): the sweep step is left out of ``pipeline.steps``."""
    from stablesdg.stages.checks import generation_values, sweep_choice_not_used

    try:
        step = runner.compose(generate_overrides(cfg.pipeline, category, []))
    except UserError:  # a setting the step itself refuses, in its own words
        return
    unused = sweep_choice_not_used(step, category)
    if unused is not None:
        used, chosen, tuned_file = unused
        log.warning("pipeline: generate %s at %s (conf/generation/), not at %s, which the sweep of variant %s chose "
                    "(%s): sweep is not in pipeline.steps; add it to generate at those (its finished points do not run "
                    "again)", category, generation_values(used), generation_values(chosen), step.variant, tuned_file)


def _classifiers(runner: Runner, cfg: DictConfig, newest_set: int) -> None:
    """Run the classifiers × compositions × seeds of ``pipeline.classify``. One trained on real images alone reads
    no generated set, so a method's own (variant other than ``default``) is the one of variant ``default``, where the
    report reads it: where that one is up to date with these settings, it stands for this step, which trains nothing
    (Table VI's methods would each train the same 15 again)."""
    spec = cfg.pipeline.classify

    def newest_read(step: DictConfig) -> int:
        return 0 if step.stage.mode == "none" else newest_set  # real images alone: no generated set is read

    for classifier in spec.classifiers:
        for composition in spec.compositions:
            for seed in spec.seeds:
                label = f"classify {classifier} {' '.join(composition)} seed={seed}"
                overrides = classify_overrides(spec, classifier, composition, seed)
                if cfg.variant != OWN_VARIANT and runner.compose(overrides).stage.mode == "none" and runner.shared(
                        label, [*overrides, f"variant={OWN_VARIANT}"], f"real images alone, as variant {OWN_VARIANT}'s"):
                    continue  # what it would train is there already, where the report reads it
                runner.step(label, overrides, newest_read)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run every step of ``cfg.pipeline`` that is not up to date; return what ran and what was skipped. With
    ``pipeline.dry_run``, run none: log each step that would run and why (``make -n``), after the same checks."""
    check_pipeline_settings(cfg)
    classes = dataset_categories(cfg)
    categories, complete = pipeline_categories(cfg, classes)
    runner = Runner(command_overrides(), dry_run=bool(cfg.pipeline.dry_run))
    check_steps(runner, cfg, categories[0], complete and "classify" in cfg.pipeline.steps)
    if cfg.pipeline.generator == "external" and "generate" in cfg.pipeline.steps:
        check_external_folders(runner, cfg, categories, classes)
    newest_set = 0
    for category in categories:
        newest_set = max(newest_set, _category_chain(runner, cfg, category))
    if "classify" in cfg.pipeline.steps:
        if complete:
            _classifiers(runner, cfg, newest_set)
        else:
            log.warning("pipeline: no classifier ran: they learn every class, and this run has %s of %s; once the "
                        "others have theirs (in jobs of their own), run stage=pipeline without category= and "
                        "pipeline.categories= for them", ", ".join(categories), ", ".join(classes.abbreviations))
    ran = sum(r["status"] != "skipped" for r in runner.record)
    if runner.dry_run:
        log.info("pipeline: %s", dry_run_summary(runner.record))
    else:
        log.info("pipeline: %d of %d steps ran (%d up to date)", ran, len(runner.record), len(runner.record) - ran)
        log.info("pipeline: its tables and figures: %s", report_command(cfg.paths.artifacts, cfg.dataset.name))
    return {"categories": categories, "ran": ran, "skipped": len(runner.record) - ran, "steps": runner.record,
            "pipeline": OmegaConf.to_container(cfg.pipeline, resolve=True)}
