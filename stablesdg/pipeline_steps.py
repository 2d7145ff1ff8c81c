"""The steps of ``stage=pipeline``: what they are called, the overrides that compose each one, and the runner that runs
a step with make's rule (``up_to_date``: skip it where its result is up to date; in a dry run, only say whether it
would run, and why)."""

from __future__ import annotations

import copy
import datetime
import json
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from stablesdg import artifacts
from stablesdg.commands import override_word
from stablesdg.errors import RaisedOnEveryRank, StoppedBySigterm, UserError, first_line
from stablesdg.up_to_date import WOULD_RUN, why_not_up_to_date

log = logging.getLogger("stablesdg.pipeline")  # its lines are the pipeline's, wherever they are written

STEPS = ("adapt", "sweep", "generate", "fid", "classify")
ADAPTATIONS = ("ti", "lora", "full", "dcgan", "ddpm")
GENERATORS = ("generate", "sample", "external")
METHOD_LISTS = ("adaptation", *ADAPTATIONS, "generation")  # a method's own override lists: method_overrides.<list>
LIST_SETTINGS = ("steps", "adapt", "categories", *METHOD_LISTS, "generate", "fid", "sweep.strength",
                 "sweep.guidance_scale", "sweep.overrides", "classify.classifiers", "classify.compositions",
                 "classify.seeds", "classify.overrides", *(f"method_overrides.{name}" for name in METHOD_LISTS))
SWEEP_NAME = "sweep_s${stage.strength}_g${stage.guidance_scale}"

@dataclass
class Runner:
    """Runs steps with make's rule and keeps the record of what ran; a ``dry_run`` runs none and records which
    would run, and why."""

    base: list[str]
    dry_run: bool = False
    record: list[dict[str, Any]] = field(default_factory=list)
    _checking: tuple[Callable[[list[str]], DictConfig], dict[str, list[str]]] | None = field(
        default=None, init=False, repr=False)
    _composed: dict[tuple[str, ...], DictConfig] = field(default_factory=dict, init=False, repr=False)

    def compose(self, overrides: list[str]) -> DictConfig:
        """The config of the step ``overrides`` (after this command's own), a copy of its own for the caller, or a
        one-line ``UserError`` naming the step when they do not compose (an unknown option or key, a value of the
        wrong kind). Each step is composed once: the checks before the first step, the plan and the run share it."""
        from hydra import compose
        from hydra.errors import HydraException

        from stablesdg.schema import check_overrides, composing_once, config_groups

        if self._checking is None:  # the steps share the config groups, and a config per shape of their overrides
            self._checking = composing_once(lambda some: compose(config_name="config", overrides=some)), config_groups()
        given = (*self.base, *overrides)
        if given not in self._composed:
            try:
                check_overrides(given, *self._checking)
                self._composed[given] = compose(config_name="config", overrides=list(given))
            except HydraException as err:
                raise UserError(f"pipeline step {' '.join(overrides)}: {composition_problem(err)}") from err
        return copy.deepcopy(self._composed[given])

    def _planned(self, overrides: list[str], newest_input: int | Callable[[DictConfig], int]
                 ) -> tuple[DictConfig, Path, str | None]:
        """The config ``overrides`` compose to, the path of its ``result.json``, and why that is not up to date (None
        where it is: ``why_not_up_to_date``)."""
        from stablesdg import train

        cfg = self.compose(overrides)
        if callable(newest_input):
            newest_input = newest_input(cfg)
        out, resolved = train.plan(cfg)
        result = out / artifacts.RESULT_FILE
        return cfg, result, why_not_up_to_date(result, resolved, newest_input, cfg.paths.artifacts)

    def _skipped(self, label: str, result: Path, whose: str | None = None) -> None:
        """Say and record that step ``label`` is up to date: ``result``, of ``whose`` where it is not the step's own."""
        log.info("pipeline: %-28s up to date (%s)", label, f"{whose}: {result.parent}" if whose else result.parent)
        self.record.append({"step": label, "status": "skipped", "result": str(result)})

    def shared(self, label: str, overrides: list[str], whose: str) -> bool:
        """Whether the stage ``overrides`` compose to is up to date, recorded as step ``label`` skipped, with a line
        saying it is ``whose`` (another variant's result, which stands for this step's); False, with nothing said or
        recorded, where it is not. For a step that reads no earlier step's result."""
        _, result, why = self._planned(overrides, 0)
        if why is not None:
            return False
        self._skipped(label, result, whose)
        return True

    def step(self, label: str, overrides: list[str],
             newest_input: int | Callable[[DictConfig], int] = 0) -> tuple[Path, int]:
        """Run the stage ``overrides`` compose to unless it is up to date; return its result and when that was
        written (``artifacts.finished_time``, ns). In a dry run, a step that would run is only recorded, and its time
        is ``WOULD_RUN``.

        ``newest_input`` is that time of the newest result the stage reads, or a function of the stage's composed
        config that gives it."""
        from stablesdg import train

        cfg, result, why = self._planned(overrides, newest_input)
        if why is None:
            self._skipped(label, result)
        elif self.dry_run:
            log.info("pipeline: %-28s would run (%s): %s", label, why, shlex.join(overrides))
            self.record.append({"step": label, "status": "would run", "why": why, "result": str(result),
                                "last_wall_time_s": last_wall_time(result)})
            return result, WOULD_RUN
        else:
            log.info("pipeline: %-28s running (%s): %s", label, why, shlex.join(overrides))
            try:
                result = train.run(cfg, pipeline_step=True)
            except KeyboardInterrupt as stopped:  # the entry point's line says which step, then where in it
                raise KeyboardInterrupt(" ".join(filter(None, [f"in its step '{label}'", str(stopped)]))) from stopped
            except StoppedBySigterm as err:  # the step named, as in a refused step's line
                raise StoppedBySigterm(f"pipeline step {label}: {err}") from err
            except UserError as err:  # its settings go in the step's list (pipeline.lora=[...]): the line names it
                said = RaisedOnEveryRank if isinstance(err, RaisedOnEveryRank) else UserError
                raise said(f"pipeline step {label}: {err}") from err
            self.record.append({"step": label, "status": "ran", "why": why, "result": str(result)})
        return result, artifacts.finished_time(result)


def last_wall_time(result: Path) -> float | None:
    """The seconds the run that wrote ``result`` took (its ``wall_time_s``); None where it is missing or unreadable."""
    try:
        seconds = json.loads(result.read_text(encoding="utf-8")).get("wall_time_s")
    except (OSError, ValueError, AttributeError):
        return None
    return float(seconds) if isinstance(seconds, (int, float)) else None


def dry_run_summary(record: list[dict[str, Any]]) -> str:
    """What a dry run's ``record`` (``Runner.record``) found, in one line: how many steps would run, how long those
    that ran before took then, and how many never ran."""
    would = [step for step in record if step["status"] == "would run"]
    timed = [step["last_wall_time_s"] for step in would if step.get("last_wall_time_s") is not None]
    line = f"dry run: {len(would)} of {len(record)} steps would run ({len(record) - len(would)} up to date)"
    if timed:
        took = datetime.timedelta(seconds=round(sum(timed)))
        line += f"; {len(timed)} of them took {took} when they last ran"
        if len(timed) < len(would):
            line += f" ({len(would) - len(timed)} never ran)"
    return line + "; nothing ran (run without pipeline.dry_run=true to run them)"


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


def listed_overrides(pipe: DictConfig, name: str) -> list[str]:
    """The overrides ``pipeline.<name>`` gives its steps: the method's (``method_overrides``), then the user's."""
    return [*pipe.method_overrides[name], *pipe[name]]


def adapt_overrides(pipe: DictConfig, name: str, category: str) -> list[str]:
    shared = [f"variant={pipe.adapt_variant}"] if pipe.get("adapt_variant") else []
    return [f"stage={name}", override_word("category", category), *shared, *listed_overrides(pipe, "adaptation"),
            *listed_overrides(pipe, name)]


def sweep_overrides(pipe: DictConfig, category: str, strength: Any, guidance: Any) -> list[str]:
    return ["stage=generate", override_word("category", category), *model_source(pipe), "stage.score=true",
            f"stage.strength={strength}", f"stage.guidance_scale={guidance}", f"stage.artifact_name={SWEEP_NAME}",
            *listed_overrides(pipe, "generation"),
            f"stage.num_images={pipe.sweep.num_images}", *pipe.sweep.overrides]


def generate_overrides(pipe: DictConfig, category: str, chosen: list[str]) -> list[str]:
    return [f"stage={pipe.generator}", override_word("category", category), *model_source(pipe),
            *listed_overrides(pipe, "generation"), *chosen, *pipe.generate]


def model_source(pipe: DictConfig) -> list[str]:
    """``stage.model_variant`` for the generators that read a trained model (generate, sample) where
    ``pipeline.adapt_variant`` trains it into another variant."""
    return [f"stage.model_variant={pipe.adapt_variant}"] if pipe.get("adapt_variant") and pipe.generator != "external" \
        else []


def fid_overrides(pipe: DictConfig, category: str) -> list[str]:
    return ["stage=fid", override_word("category", category), *pipe.fid]


def classify_overrides(spec: DictConfig, classifier: str, composition: list[str], seed: Any) -> list[str]:
    return ["stage=classify", "category=null", f"classifier={classifier}", f"seed={seed}", *composition,
            *spec.overrides]
