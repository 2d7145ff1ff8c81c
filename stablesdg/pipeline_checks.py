"""The checks ``stage=pipeline`` runs before its first step: its own settings, then each kind of step composed once
and checked as its stage checks itself, and what the steps read from one another and from the store."""

from __future__ import annotations

import functools

from omegaconf import DictConfig, ListConfig, OmegaConf

from stablesdg import artifacts
from stablesdg.choices import sampled_model
from stablesdg.data.categories import CategorySet
from stablesdg.errors import UserError
from stablesdg.generated import flat_folder_images
from stablesdg.pipeline_steps import (
    ADAPTATIONS, GENERATORS, LIST_SETTINGS, STEPS, Runner, adapt_overrides, classify_overrides, fid_overrides,
    generate_overrides, sweep_overrides,
)
from stablesdg.schema import require_seed
from stablesdg.sweeps import METRICS


def _check_sweep_points(runner: Runner, pipe: DictConfig, category: str) -> None:
    """Every (s, ω) of ``pipeline.sweep`` passes ``stage=generate``'s own checks (one config composed for all)."""
    from stablesdg.stages.checks import check_generation_settings

    stage = runner.compose(sweep_overrides(pipe, category, pipe.sweep.strength[0], pipe.sweep.guidance_scale[0])).stage
    for strength in pipe.sweep.strength:
        for guidance in pipe.sweep.guidance_scale:
            try:
                check_generation_settings(stage, float(strength), float(guidance))
            except (UserError, TypeError, ValueError) as err:
                raise UserError(f"pipeline.sweep point s={strength}, ω={guidance}: {err}") from err


def check_steps(runner: Runner, cfg: DictConfig, category: str, classify: bool) -> None:
    """Compose each kind of step once before any runs and run its stage's own ``checks``: the chain of ``category``
    (one config for the sweep, whose every (s, ω) is checked) and, when ``classify``, every classifier and
    composition (a per-category job leaves them to the later run that trains them, which checks them before its
    first step). Across steps: the generator's model must come from an adaptation step or the artifact store, and
    its set must hold what the fid step (2 images) and an expand composition (``stage.extra_per_class``) read; what a
    step reads from the store and no earlier step makes must be there, made on the pipeline's split. A typo in an
    override list, or a setting its stage or Lightning refuses, then ends the command at once in one line naming the
    step, not after hours of training."""
    from hydra.utils import get_method

    from stablesdg.stages.settings import require_trainer_settings
    from stablesdg.training import require_accepted_trainer_settings

    pipe = cfg.pipeline
    steps = set(pipe.steps)
    # each step: its label, its overrides, and the pipeline key whose override list a user extends for it
    planned = [(f"{name} {category}", adapt_overrides(pipe, name, category), f"pipeline.{name}")
               for name in (pipe.adapt if "adapt" in steps else [])]
    if "sweep" in steps and pipe.generator == "generate":
        _check_sweep_points(runner, pipe, category)
    if "generate" in steps:
        planned.append((f"{pipe.generator} {category}", generate_overrides(pipe, category, []), "pipeline.generation"))
    if "fid" in steps:
        planned.append((f"fid {category}", fid_overrides(pipe, category), "pipeline.fid"))
    if classify:
        planned += [(f"classify {classifier} {' '.join(composition)}",
                     classify_overrides(pipe.classify, classifier, composition, pipe.classify.seeds[0]),
                     "pipeline.classify.overrides")
                    for classifier in pipe.classify.classifiers for composition in pipe.classify.compositions]
    generator_label, per_class, made = f"{pipe.generator} {category}", None, set()
    for label, overrides, key in planned:
        step = runner.compose(overrides)
        checks = [functools.partial(_values_given, key),
                  *([get_method(step.stage.checks)] if step.stage.get("checks") else []),
                  require_trainer_settings, require_accepted_trainer_settings]
        reads_the_store = _reads_the_store(step, made, steps)
        if step.stage.name in ADAPTATIONS:
            made.add((step.stage.name, step.variant))
        if label == generator_label:
            checks.append(functools.partial(_model_made_or_found, made, category))
            per_class = step.stage.get("num_images")  # the set the later steps read, per class (null: all)
            if "fid" in steps and per_class is not None:
                checks.append(_scores_its_images)
        elif label.startswith("classify ") and per_class is not None and step.stage.mode == "expand" \
                and str(step.stage.generated) == str(step.variant):
            checks.append(functools.partial(_expands_from, per_class))
        if reads_the_store:  # after the checks whose messages say what the pipeline lacks
            checks.append(_stored_inputs)
        try:
            for check in checks:
                check(step)
        except UserError as err:
            raise UserError(f"pipeline step {label}: {err}") from err


def check_external_folders(runner: Runner, cfg: DictConfig, categories: list[str], classes: CategorySet) -> None:
    """A one-line ``UserError`` naming every category the pipeline imports that ``stage.source`` has no sub-folder
    for (read with the dataset's ``classes``): one ``stage=external`` run needs only its own, so without this the
    later categories would fail only after the earlier ones were imported."""
    from stablesdg.stages.checks import external_class_folder, external_folders, external_source

    step = runner.compose(generate_overrides(cfg.pipeline, categories[0], []))
    source = external_source(step.stage)
    folders = external_folders(source, classes)
    if len(categories) > 1 and not folders and flat_folder_images(source):
        raise UserError(f"pipeline step external {categories[0]}: stage.source={source} holds images directly, not in "
                        f"class sub-folders, so every category would import the same images (the pipeline imports "
                        f"{', '.join(categories)}); put each class's images in a sub-folder named by the class, or "
                        "import one category with category=")
    missing = [c for c in categories if external_class_folder(source, classes, c) is None]
    if missing:
        raise UserError(f"pipeline step external {missing[0]}: stage.source={source} has no sub-folder for "
                        f"{', '.join(missing)} (the pipeline imports {', '.join(categories)}; name each folder by a "
                        "class, or choose the categories with pipeline.categories)")


def _values_given(key: str, step: DictConfig) -> None:
    """A one-line ``UserError`` when ``step`` leaves a setting without a value (``???``, such as ``stage=external``'s
    ``stage.source``), naming ``key``, the pipeline setting whose override list gives it."""
    from stablesdg import train

    missing = train.missing_values(step)
    if missing:
        raise UserError(f"{missing[0]} has no value (??? in its config); give it in that step's overrides, e.g. "
                        f"'{key}=[\"{missing[0]}=<value>\"]'")


def _model_made_or_found(made: set[tuple[str, str]], category: str, step: DictConfig) -> None:
    """A one-line ``UserError`` when the generator ``step`` reads a trained model (an adapter, a DCGAN or DDPM) that
    no adaptation step of the pipeline makes and the artifact store does not hold: it would fail only after the
    steps before it had run."""
    model = _model_read(step)
    if model is None:
        return
    needed, variant, setting = model
    found = artifacts.stage_finished(step.paths.artifacts, step.dataset.name, category, variant, needed)
    if (needed, variant) not in made and not found:
        raise UserError(f"{setting} needs the {needed} model of variant {variant}, which no step of this pipeline makes "
                        f"and the artifact store does not hold yet; add {needed} to pipeline.adapt (with adapt in "
                        f"pipeline.steps), or train it first")


def _model_read(step: DictConfig) -> tuple[str, str, str] | None:
    """The trained model the generator ``step`` reads, as (its stage, its variant, the setting that names it); None
    for one that reads none (``stage.adapter=base``, an import)."""
    stage = step.stage
    if stage.name == "generate" and stage.adapter != "base":
        return stage.adapter, stage.model_variant, f"stage.adapter={stage.adapter}"
    if stage.name == "sample":
        return sampled_model(stage.generator), stage.model_variant, f"stage.generator={stage.generator}"
    return None


def _reads_the_store(step: DictConfig, made: set[tuple[str, str]], steps: set[str]) -> bool:
    """Whether ``step`` reads a finished stage that no step of the pipeline before it makes (``made``: the
    adaptation steps so far, as (stage, variant); ``steps``: ``pipeline.steps``)."""
    stage = step.stage
    if stage.name in ADAPTATIONS:
        return bool(stage.get("use_ti")) and ("ti", step.variant) not in made
    if stage.name in ("generate", "sample"):
        model = _model_read(step)
        return model is not None and model[:2] not in made
    if stage.name == "fid":
        return "generate" not in steps
    if stage.name == "classify":
        return stage.mode != "none" and ("generate" not in steps or str(stage.generated) != str(step.variant))
    return False


def _stored_inputs(step: DictConfig) -> None:
    """The step's own checks of what it reads (``stage.inputs``), for a step that reads from the store: each input
    there, finished, and made on the pipeline's split (``artifacts.note_made_on``)."""
    from hydra.utils import get_method

    from stablesdg.train import recording_reads_of

    if step.stage.get("inputs"):
        with recording_reads_of(step):
            get_method(step.stage.inputs)(step)


def _scores_its_images(step: DictConfig) -> None:
    from stablesdg.stages.checks import require_enough_to_score

    require_enough_to_score(step.stage, "num_images")


def _expands_from(per_class: int, step: DictConfig) -> None:
    if step.stage.extra_per_class > per_class:
        raise UserError(f"stage.mode=expand adds stage.extra_per_class={step.stage.extra_per_class} generated images "
                        f"per class, but the pipeline's {step.variant} set has {per_class} (its stage.num_images)")


# the pipeline settings that hold settings of their own, each with an example of one
SECTIONS = {"sweep": "metric=fid", "method_overrides": "ti='[\"stage.max_steps=500\"]'", "classify": "seeds=[0,1,2]"}


def check_pipeline_settings(cfg: DictConfig) -> None:
    """A one-line ``UserError`` for a ``pipeline`` setting that names no step, stage, generator or metric, or for an
    empty list that would leave a chosen step with nothing to run (found before any step runs)."""
    pipe = cfg.pipeline
    for section, example in SECTIONS.items():
        if not isinstance(pipe.get(section), DictConfig):
            raise UserError(f"pipeline.{section} must map its settings to values, as conf/pipeline/default.yaml "
                            f"does, got {pipe.get(section)!r}; set them one by one, e.g. pipeline.{section}.{example}")
    for key in LIST_SETTINGS:
        value = OmegaConf.select(pipe, key)
        if not isinstance(value, ListConfig) and not (key == "categories" and value is None):
            raise UserError(f"pipeline.{key} must be a list, got {value!r}; e.g. pipeline.{key}=[{value}] "
                            "(quote a list of overrides: 'pipeline.ti=[\"stage.max_steps=500\"]')")
    if pipe.categories is not None and not pipe.categories:
        raise UserError("pipeline.categories is empty, so no category would run; "
                        "name some, e.g. pipeline.categories=[Pa,Sc], or null for every class")
    if pipe.categories is not None and cfg.category is not None:  # pipeline.categories would win without a word
        named = ",".join(map(str, pipe.categories))
        raise UserError(f"category={cfg.category} and pipeline.categories=[{named}] both name the categories to run; "
                        "keep one")
    if not pipe.steps:
        raise UserError(f"pipeline.steps is empty, so nothing would run; name some of {', '.join(STEPS)}")
    unknown = sorted(set(pipe.steps) - set(STEPS))
    if unknown:
        raise UserError(f"pipeline.steps has unknown steps {unknown}; choose from {', '.join(STEPS)}")
    if "ddp" in str(cfg.trainer.get("strategy", "")):
        raise UserError("stage=pipeline runs its stages in one process; with trainer=ddp run the training stages "
                        "one by one (stage=ti, stage=lora, ...), or run the pipeline per category with one GPU each "
                        "(trainer=gpu -m category=... hydra/launcher=joblib on one machine, or "
                        "hydra/launcher=submitit_slurm)")
    unknown = sorted(set(pipe.adapt) - set(ADAPTATIONS))
    if unknown:
        raise UserError(f"pipeline.adapt has unknown stages {unknown}; choose from {', '.join(ADAPTATIONS)}")
    if pipe.generator not in GENERATORS:
        raise UserError(f"pipeline.generator must be one of {', '.join(GENERATORS)}, got {pipe.generator!r}")
    if "sweep" in pipe.steps and pipe.generator == "generate":
        if pipe.sweep.metric not in METRICS:
            raise UserError(f"pipeline.sweep.metric must be one of {', '.join(METRICS)}, got {pipe.sweep.metric!r}")
        for key in ("strength", "guidance_scale"):
            if not pipe.sweep[key]:
                raise UserError(f"pipeline.sweep.{key} is empty, so the sweep has no point to run; "
                                "give it values, or drop sweep from pipeline.steps")
    if "classify" in pipe.steps:
        for key in ("classifiers", "compositions", "seeds"):
            if not pipe.classify[key]:
                raise UserError(f"pipeline.classify.{key} is empty, so no classifier would train; "
                                "give it values, or drop classify from pipeline.steps")
        for seed in pipe.classify.seeds:
            require_seed(seed, "each of pipeline.classify.seeds")
