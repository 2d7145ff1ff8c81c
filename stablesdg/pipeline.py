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
and then ``stage=pipeline`` once more for the classifiers.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from stablesdg import artifacts, provenance
from stablesdg.choices import sampled_model
from stablesdg.commands import override_word, own_overrides
from stablesdg.compare import differing_keys
from stablesdg.data.categories import CategorySet
from stablesdg.errors import RaisedOnEveryRank, StoppedBySigterm, UserError, first_line, is_number
from stablesdg.generated import flat_folder_images
from stablesdg.schema import require_seed
from stablesdg.sweeps import METRICS, TUNED_FILE, aggregate_sweep

log = logging.getLogger(__name__)

STEPS = ("adapt", "sweep", "generate", "fid", "classify")
ADAPTATIONS = ("ti", "lora", "full", "dcgan", "ddpm")
GENERATORS = ("generate", "sample", "external")
METHOD_LISTS = ("adaptation", *ADAPTATIONS, "generation")  # a method's own override lists: method_overrides.<list>
LIST_SETTINGS = ("steps", "adapt", "categories", *METHOD_LISTS, "generate", "fid", "sweep.strength",
                 "sweep.guidance_scale", "sweep.overrides", "classify.classifiers", "classify.compositions",
                 "classify.seeds", "classify.overrides", *(f"method_overrides.{name}" for name in METHOD_LISTS))
SWEEP_NAME = "sweep_s${stage.strength}_g${stage.guidance_scale}"


def command_overrides() -> list[str]:
    """This command's own overrides, without those each step sets itself (``stage*``, ``category``)."""
    own = own_overrides("stage", "category")
    if own is None:  # composed in-process: the overrides are gone, and the steps would run elsewhere
        raise RuntimeError("stage=pipeline needs its command line: run it as python -m stablesdg.train stage=pipeline ...")
    return own


def dataset_categories(cfg: DictConfig) -> CategorySet:
    """The dataset's classes: from its config, or from its folders (scanned) when the config names none."""
    if cfg.dataset.get("classes"):
        return CategorySet(cfg.dataset.classes)
    from hydra.utils import instantiate

    dm = instantiate(cfg.dataset)
    dm.setup()
    return dm.categories


def pipeline_categories(cfg: DictConfig, categories: CategorySet | None = None) -> tuple[list[str], bool]:
    """The categories to run, and whether they are all of the dataset's ``categories`` (``dataset_categories`` when
    not given; then the classifiers run too)."""
    categories = dataset_categories(cfg) if categories is None else categories
    chosen = cfg.pipeline.get("categories")
    if chosen is None and cfg.category is not None:
        chosen = [cfg.category]
    if chosen is None:
        return list(categories.abbreviations), True
    names = [categories.resolve(c) for c in chosen]
    return names, set(names) == set(categories.abbreviations)


# a dry run's time for a result it would make again: later than every file's, so each step reading it would run too
WOULD_RUN = sys.maxsize


@dataclass
class Runner:
    """Runs steps with make's rule and keeps the record of what ran; a ``dry_run`` runs none and records which
    would run, and why."""

    base: list[str]
    dry_run: bool = False
    record: list[dict[str, Any]] = field(default_factory=list)

    def compose(self, overrides: list[str]) -> DictConfig:
        """The config of the step ``overrides`` (after this command's own), or a one-line ``UserError`` naming the
        step when they do not compose (an unknown option or key, a value of the wrong kind)."""
        from hydra import compose
        from hydra.errors import HydraException

        from stablesdg.schema import check_overrides, config_groups

        given = [*self.base, *overrides]
        try:
            check_overrides(given, lambda some: compose(config_name="config", overrides=some), config_groups())
            return compose(config_name="config", overrides=given)
        except HydraException as err:
            raise UserError(f"pipeline step {' '.join(overrides)}: {composition_problem(err)}") from err

    def step(self, label: str, overrides: list[str],
             newest_input: int | Callable[[DictConfig], int] = 0) -> tuple[Path, int]:
        """Run the stage ``overrides`` compose to unless it is up to date; return its result and its mtime (ns). In
        a dry run, a step that would run is only recorded, and its mtime is ``WOULD_RUN``.

        ``newest_input`` is the mtime of the newest result the stage reads, or a function of the stage's composed
        config that gives it."""
        from stablesdg import train

        cfg = self.compose(overrides)
        if callable(newest_input):
            newest_input = newest_input(cfg)
        out, resolved = train.plan(cfg)
        result = out / artifacts.RESULT_FILE
        why = self._why_not_up_to_date(result, resolved, newest_input, cfg.paths.artifacts)
        if why is None:
            log.info("pipeline: %-28s up to date (%s)", label, result.parent)
            self.record.append({"step": label, "status": "skipped", "result": str(result)})
        elif self.dry_run:
            log.info("pipeline: %-28s would run (%s): %s", label, why, " ".join(overrides))
            self.record.append({"step": label, "status": "would run", "why": why, "result": str(result)})
            return result, WOULD_RUN
        else:
            log.info("pipeline: %-28s running (%s): %s", label, why, " ".join(overrides))
            try:
                result = train.run(cfg)
            except KeyboardInterrupt as stopped:  # the entry point's line says which step, then where in it
                raise KeyboardInterrupt(" ".join(filter(None, [f"in its step '{label}'", str(stopped)]))) from stopped
            except StoppedBySigterm:
                raise
            except UserError as err:  # its settings go in the step's list (pipeline.lora=[...]): the line names it
                said = RaisedOnEveryRank if isinstance(err, RaisedOnEveryRank) else UserError
                raise said(f"pipeline step {label}: {err}") from err
            self.record.append({"step": label, "status": "ran", "why": why, "result": str(result)})
        return result, result.stat().st_mtime_ns

    @staticmethod
    def _why_not_up_to_date(result: Path, resolved: dict, newest_input: int, store: str) -> str | None:
        """None where ``result`` records this config (up to ``provenance.settings_shaping_results``: not where files
        go or how the run is logged), is not older than the results it reads, and its inputs still hold what it read
        (a set whose images were left out by hand since is scored again); else why not, in a few words."""
        if not result.is_file():
            return "not made yet"
        try:
            record = artifacts.read_result(result.parent)
        except UserError:
            return "its result.json is unreadable"
        if newest_input == WOULD_RUN:  # before the settings: a generate step's (s, ω) are not known yet
            return "it reads a step that runs first"
        made_by = provenance.settings_shaping_results(record.get("config") or {})
        wanted = provenance.settings_shaping_results(resolved)
        if provenance.config_hash(made_by) != provenance.config_hash(wanted):
            named = changed_settings(made_by, wanted)
            return f"made with other settings: {named}" if named else "made with other settings"
        if result.stat().st_mtime_ns < newest_input:
            return "older than a result it reads"
        changed = artifacts.changed_inputs(store, record)
        if changed:
            return f"made from {', '.join(changed)}, remade or removed since"
        return None


def changed_settings(made_by: dict[str, Any], wanted: dict[str, Any], most: int = 3) -> str:
    """The settings in which the configs ``made_by`` (a result's) and ``wanted`` (this run's) differ, as
    ``key=old (now new)``, at most ``most`` of them and how many more; empty where they differ only in a setting one
    holds as null and the other lacks (``compare.differing_keys``)."""
    before, now = (provenance.without_later_defaults(config) for config in (made_by, wanted))
    keys = differing_keys(before, now)
    shown = [f"{key}={_setting(before, key)} (now {_setting(now, key)})" for key in keys[:most]]
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return ", ".join(shown) + more


def _setting(config: dict[str, Any], key: str) -> str:
    """The value at the dotted ``key`` of the nested ``config`` as YAML writes a scalar (``true``, ``null``, ``0.5``);
    ``unset`` where there is none."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return "unset"
        value = value[part]
    return value if isinstance(value, str) else json.dumps(value)


def composition_problem(err: Exception) -> str:
    """Hydra's composition error in one line: its first line, the options of a group it could not find, and the
    reason behind a failed merge (``Value 'abc' could not be converted to Integer``)."""
    problem = first_line(err)
    options = getattr(err, "options", None)
    if options:
        problem += f"; choose from {', '.join(options)}"
    if err.__cause__ is not None:
        problem = f"{problem.rstrip('.')}: {first_line(err.__cause__)}"
    return problem


def _listed(pipe: DictConfig, name: str) -> list[str]:
    """The overrides ``pipeline.<name>`` gives its steps: the method's (``method_overrides``), then the user's."""
    return [*pipe.method_overrides[name], *pipe[name]]


def _adapt_overrides(pipe: DictConfig, name: str, category: str) -> list[str]:
    shared = [f"variant={pipe.adapt_variant}"] if pipe.get("adapt_variant") else []
    return [f"stage={name}", override_word("category", category), *shared, *_listed(pipe, "adaptation"),
            *_listed(pipe, name)]


def _sweep_overrides(pipe: DictConfig, category: str, strength: Any, guidance: Any) -> list[str]:
    return ["stage=generate", override_word("category", category), *_model_source(pipe), "stage.score=true",
            f"stage.strength={strength}", f"stage.guidance_scale={guidance}", f"stage.artifact_name={SWEEP_NAME}",
            *_listed(pipe, "generation"),
            f"stage.num_images={pipe.sweep.num_images}", *pipe.sweep.overrides]


def _generate_overrides(pipe: DictConfig, category: str, chosen: list[str]) -> list[str]:
    return [f"stage={pipe.generator}", override_word("category", category), *_model_source(pipe),
            *_listed(pipe, "generation"), *chosen, *pipe.generate]


def _model_source(pipe: DictConfig) -> list[str]:
    """``stage.model_variant`` for the generators that read a trained model (generate, sample) where
    ``pipeline.adapt_variant`` trains it into another variant."""
    return [f"stage.model_variant={pipe.adapt_variant}"] if pipe.get("adapt_variant") and pipe.generator != "external" \
        else []


def _fid_overrides(pipe: DictConfig, category: str) -> list[str]:
    return ["stage=fid", override_word("category", category), *pipe.fid]


def _classify_overrides(spec: DictConfig, classifier: str, composition: list[str], seed: Any) -> list[str]:
    return ["stage=classify", "category=null", f"classifier={classifier}", f"seed={seed}", *composition,
            *spec.overrides]


def _check_sweep_points(runner: Runner, pipe: DictConfig, category: str) -> None:
    """Every (s, ω) of ``pipeline.sweep`` passes ``stage=generate``'s own checks (one config composed for all)."""
    from stablesdg.stages.checks import check_generation_settings

    stage = runner.compose(_sweep_overrides(pipe, category, pipe.sweep.strength[0], pipe.sweep.guidance_scale[0])).stage
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
    planned = [(f"{name} {category}", _adapt_overrides(pipe, name, category), f"pipeline.{name}")
               for name in (pipe.adapt if "adapt" in steps else [])]
    if "sweep" in steps and pipe.generator == "generate":
        _check_sweep_points(runner, pipe, category)
    if "generate" in steps:
        planned.append((f"{pipe.generator} {category}", _generate_overrides(pipe, category, []), "pipeline.generation"))
    if "fid" in steps:
        planned.append((f"fid {category}", _fid_overrides(pipe, category), "pipeline.fid"))
    if classify:
        planned += [(f"classify {classifier} {' '.join(composition)}",
                     _classify_overrides(pipe.classify, classifier, composition, pipe.classify.seeds[0]),
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

    step = runner.compose(_generate_overrides(cfg.pipeline, categories[0], []))
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


def _sweep(runner: Runner, cfg: DictConfig, category: str, newest: int) -> tuple[list[str], int]:
    """Run the (s, ω) grid of one category; return the overrides that select its best setting, and the newest result."""
    pipe = cfg.pipeline
    points = []
    latest = newest
    for strength in pipe.sweep.strength:
        for guidance in pipe.sweep.guidance_scale:
            result, mtime = runner.step(f"sweep {category} s={strength} ω={guidance}",
                                        _sweep_overrides(pipe, category, strength, guidance), newest)
            latest = max(latest, mtime)
            if mtime != WOULD_RUN:
                metrics = artifacts.read_result(result.parent)["metrics"]
                points.append((metrics[pipe.sweep.metric], strength, guidance, result.parent))
    if latest == WOULD_RUN:  # a dry run: the best point is known once every point has run
        log.info("pipeline: best for %s: chosen once the sweep's points have run", category)
        return [], latest
    value, strength, guidance, folder = min(points, key=lambda point: point[:3])
    if not runner.dry_run:  # the matrix of this pipeline's points, and the points of other sweeps scored alike
        aggregate_sweep(cfg.paths.artifacts, cfg.dataset.name, cfg.variant, pipe.sweep.metric, like=folder)
    log.info("pipeline: best for %s: s=%s, ω=%s (%s %.4f)", category, strength, guidance, pipe.sweep.metric, value)
    return [f"stage.strength={strength}", f"stage.guidance_scale={guidance}"], latest


def _category_chain(runner: Runner, cfg: DictConfig, category: str) -> int:
    """Adaptation → sweep → generate → FID for one category; return the mtime of the generated set's result (0 when
    the pipeline has no generate step), the one result of the chain the classifiers read."""
    pipe = cfg.pipeline
    steps = set(pipe.steps)
    newest = 0
    for name in (pipe.adapt if "adapt" in steps else []):
        _, mtime = runner.step(f"{name} {category}", _adapt_overrides(pipe, name, category), newest)
        newest = max(newest, mtime)
    chosen: list[str] = []
    if "sweep" in steps and pipe.generator == "generate":  # (s, ω) only exist for the diffusion prior
        chosen, newest = _sweep(runner, cfg, category, newest)
    generated = 0
    if "generate" in steps:
        if "sweep" not in steps and pipe.generator == "generate":
            _warn_untuned(runner, cfg, category)
        _, generated = runner.step(f"generate {category}", _generate_overrides(pipe, category, chosen), newest)
    if "fid" in steps:
        runner.step(f"fid {category}", _fid_overrides(pipe, category), max(newest, generated))
    return generated


def _warn_untuned(runner: Runner, cfg: DictConfig, category: str) -> None:
    """A warning when ``category``'s set is to be made at the dataset table's (s, ω) while an earlier sweep of this
    variant chose others (its ``tuned_generation.yaml``): the sweep step is left out of ``pipeline.steps``."""
    from stablesdg.stages.checks import read_tuned, resolve_settings

    tuned_file = Path(cfg.paths.artifacts, cfg.dataset.name, "sweeps", cfg.variant, TUNED_FILE)
    try:
        chosen = read_tuned(tuned_file).get(category) or {} if tuned_file.is_file() else {}
        used = resolve_settings(runner.compose(_generate_overrides(cfg.pipeline, category, [])), category)
    except UserError:  # a damaged file, or a setting the step itself refuses, in its own words
        return
    if any(used[f"{key}_source"] in ("table", "fallback") and is_number(chosen.get(key)) and chosen[key] != used[key]
           for key in ("strength", "guidance_scale")):
        tuned = [chosen[key] if is_number(chosen.get(key)) else used[key] for key in ("strength", "guidance_scale")]
        log.warning("pipeline: generate %s at s=%g, ω=%g (conf/generation/), not at s=%g, ω=%g, which the sweep of "
                    "variant %s chose (%s): sweep is not in pipeline.steps; add it to generate at those (its finished "
                    "points do not run again)", category, used["strength"], used["guidance_scale"], *tuned, cfg.variant,
                    tuned_file)


def _classifiers(runner: Runner, cfg: DictConfig, newest_set: int) -> None:
    spec = cfg.pipeline.classify

    def newest_read(step: DictConfig) -> int:
        return 0 if step.stage.mode == "none" else newest_set  # real images alone: no generated set is read

    for classifier in spec.classifiers:
        for composition in spec.compositions:
            for seed in spec.seeds:
                runner.step(f"classify {classifier} {' '.join(composition)} seed={seed}",
                            _classify_overrides(spec, classifier, composition, seed), newest_read)


def check_pipeline_settings(cfg: DictConfig) -> None:
    """A one-line ``UserError`` for a ``pipeline`` setting that names no step, stage, generator or metric, or for an
    empty list that would leave a chosen step with nothing to run (found before any step runs)."""
    pipe = cfg.pipeline
    for key in LIST_SETTINGS:
        value = OmegaConf.select(pipe, key)
        if not isinstance(value, ListConfig) and not (key == "categories" and value is None):
            raise UserError(f"pipeline.{key} must be a list, got {value!r}; e.g. pipeline.{key}=[{value}] "
                            "(quote a list of overrides: 'pipeline.ti=[\"stage.max_steps=500\"]')")
    if pipe.categories is not None and not pipe.categories:
        raise UserError("pipeline.categories is empty, so no category would run; "
                        "name some, e.g. pipeline.categories=[Pa,Sc], or null for every class")
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
            log.warning("pipeline: the classifiers need every category; run stage=pipeline without category= "
                        "once the per-category jobs are done")
    ran = sum(r["status"] != "skipped" for r in runner.record)
    if runner.dry_run:
        log.info("pipeline: dry run: %d of %d steps would run (%d up to date); nothing ran (run without "
                 "pipeline.dry_run=true to run them)", ran, len(runner.record), len(runner.record) - ran)
    else:
        log.info("pipeline: %d steps ran, %d were up to date", ran, len(runner.record) - ran)
    return {"categories": categories, "ran": ran, "skipped": len(runner.record) - ran, "steps": runner.record,
            "pipeline": OmegaConf.to_container(cfg.pipeline, resolve=True)}
