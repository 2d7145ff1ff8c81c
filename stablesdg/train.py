"""The one entry point: ``python -m stablesdg.train stage=<stage> dataset=<dataset> category=<abbr> model=<model>``.

Composes the config, runs the chosen stage into its artifact directory and writes the
stage's ``result.json`` last. Problems the user can fix end in one line on stderr and exit
code 2 (a job under the submitit launcher hands that line back to the launching command instead),
Ctrl-C in one line and exit code 130 (the full trace with ``HYDRA_FULL_ERROR=1``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ContextManager

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from stablesdg.errors import RaisedOnEveryRank, find_user_error, require_folder_setting, say, unset_setting
from stablesdg.gpus import (
    gpu_freed_at_end, note_unused_gpu, require_gpus_this_torch_runs, require_one_process_outside_training,
    use_this_process_gpu,
)
from stablesdg.run_notes import (
    note_finished_before, note_stand_in_model, note_sweep_choice_not_used, note_unread_settings,
)
from stablesdg.schema import (as_written, check_overrides, config_groups, expand_home, register_schema,
                              require_parsable, require_resolvable, require_seed, require_top_level_types)

if TYPE_CHECKING:
    from stablesdg.artifacts import RunReads

# the repository's conf/, through the package's link to it, or the copy an installed wheel holds in its place
CONFIG_DIR = str((Path(__file__).resolve().parent / "conf").resolve())
register_schema()

# The command line (``sys.argv[1:]``) that ``refuse_unknown_keys`` checked in this process before Hydra composed it,
# with the task overrides (Hydra's ``overrides.task``) of each job it checked: ``main`` checks any other job's own
# (a job of a launcher's process, a call from Python), where nothing has.
checked_before_hydra: tuple[tuple[str, ...], set[tuple[str, ...]]] | None = None


def canonical_category(cfg: DictConfig) -> str | None:
    """The config's category as the dataset's abbreviation (``patches`` -> ``Pa``), or None for all classes."""
    if cfg.category is None:
        return None
    from stablesdg.data.categories import CategorySet

    classes = cfg.dataset.get("classes")
    return CategorySet(classes).resolve(cfg.category) if classes else str(cfg.category)


def missing_values(cfg: DictConfig) -> list[str]:
    """The settings of ``cfg`` that have no value (``???``), sorted; the ``pipeline`` settings count only for
    ``stage=pipeline`` (no other stage reads them)."""
    return sorted(key for key in OmegaConf.missing_keys(cfg)
                  if cfg.stage.name == "pipeline" or not key.startswith("pipeline."))


def require_values(cfg: DictConfig) -> None:
    """A one-line ``UserError`` naming the first setting of ``cfg`` that has no value (``missing_values``)."""
    missing = missing_values(cfg)
    if missing:
        raise unset_setting(missing[0])


def plan(cfg: DictConfig) -> tuple[Path, dict]:
    """Where ``cfg``'s stage writes, and the resolved config its ``result.json`` records (and hashes).

    Canonicalises ``cfg.category`` in place; a setting left without a value (``???``) or an empty ``paths.artifacts``
    is a one-line ``UserError``, reported before torch loads.
    """
    from stablesdg import artifacts
    from stablesdg.provenance import recorded_config

    category = canonical_category(cfg)
    if category != cfg.category:
        cfg.category = category
    require_values(cfg)
    require_folder_setting("paths.artifacts", cfg.paths.artifacts)
    resolved = recorded_config(cfg)
    out = artifacts.stage_dir(cfg.paths.artifacts, cfg.dataset.name, category, cfg.variant,
                              cfg.stage.get("artifact_name") or cfg.stage.name)
    return out, resolved


def check_settings(cfg: DictConfig) -> None:
    """Every check of ``cfg`` that needs no data, model or torch, each a one-line ``UserError``: the seed, the
    dataset's settings (its folder, not its images), the stage's own ``stage.checks``, the trainer's and logger's
    settings, and the finished stages it reads (``stage.inputs``). The entry point runs them before the heavy
    libraries load, so a bad setting is named in about a second."""
    from hydra.utils import get_method

    from stablesdg.data.settings import require_dataset_settings, require_outside_dataset
    from stablesdg.stages.settings import require_logger_settings, require_trainer_settings

    require_seed(cfg.seed)
    require_dataset_settings(cfg.dataset)
    require_outside_dataset(cfg.dataset, {"paths.artifacts": cfg.paths.artifacts, "paths.logs": cfg.paths.logs})
    if cfg.stage.get("checks"):
        get_method(cfg.stage.checks)(cfg)
    require_trainer_settings(cfg)
    require_logger_settings(cfg)
    if cfg.stage.get("inputs"):
        get_method(cfg.stage.inputs)(cfg)


def run(cfg: DictConfig, pipeline_step: bool = False) -> Path | None:
    """Run ``cfg.stage`` and return the path of the ``result.json`` it wrote, which records the finished stages its
    checks and its work read and the split its images came by (``artifacts.recording_reads``; a pipeline's steps
    record their own). What was made on another split than ``dataset.split`` is refused when read. A pipeline's dry
    run (``pipeline.dry_run=true``) writes no result: None. A run on its own says first when it makes again a result
    that was up to date (``note_finished_before``), and with ``skip_up_to_date`` skips it (returning its path, before
    Lightning loads); a ``pipeline_step`` runs only where it was not, and says why. The
    W&B run it logged into, if any, is ended when it ends, so that the next stage this process runs has its own, and
    what it built is freed (``garbage.freeing_what_it_builds``): its models live on in reference cycles (Lightning's
    trainer and module) until Python's collector next looks at long-lived objects, which may be while the next stage
    has built its own. SIGTERM where no training loop answers it stops the run with a one-line ``StoppedBySigterm``
    (``run_signals``)."""
    from stablesdg.garbage import freeing_what_it_builds
    from stablesdg.logger_run import logger_run_ended
    from stablesdg.run_signals import sigterm_stops_the_run

    expand_home(cfg)
    # SIGTERM: one line wherever no training loop answers it
    with freeing_what_it_builds(), sigterm_stops_the_run(cfg.stage.name), logger_run_ended(), \
            recording_reads_of(cfg) as reads:
        return _run(cfg, reads, pipeline_step)


def recording_reads_of(cfg: DictConfig) -> ContextManager[RunReads]:
    """``artifacts.recording_reads`` for a run of ``cfg``: what it reads is recorded, and what was made on another
    split than its ``dataset.split`` is refused."""
    from stablesdg import artifacts
    from stablesdg.data.settings import split_name

    return artifacts.recording_reads(split_name(cfg.dataset.get("split")))


def dry_run(cfg: DictConfig) -> bool:
    """Whether ``cfg`` is a pipeline's dry run, which lists its steps and runs none (``pipeline.dry_run``)."""
    return cfg.stage.name == "pipeline" and bool(cfg.pipeline.get("dry_run"))


def on_its_own(cfg: DictConfig, pipeline_step: bool) -> bool:
    """Whether a run of ``cfg`` is a stage run on its own: not a pipeline, nor a pipeline's step."""
    return cfg.stage.name != "pipeline" and not pipeline_step


def _run(cfg: DictConfig, reads: RunReads, pipeline_step: bool) -> Path | None:
    out, resolved = plan(cfg)
    check_settings(cfg)
    if on_its_own(cfg, pipeline_step) and cfg.get("skip_up_to_date"):  # before Lightning loads: a skip costs little
        from stablesdg import artifacts

        if note_finished_before(out, resolved, cfg.paths.artifacts, skip_up_to_date=True):
            return out / artifacts.RESULT_FILE
    from stablesdg.garbage import loading_uncollected

    with loading_uncollected():
        from lightning.fabric.utilities.rank_zero import rank_zero_only

    from stablesdg.progress import quiet_beyond_first_process
    from stablesdg.slurm_requeue import requeue_signal_answered
    from stablesdg.training import require_accepted_trainer_settings

    quiet_beyond_first_process(rank_zero_only.rank)  # DDP's later processes: each says what the first says
    require_one_process_outside_training(cfg, require_accepted_trainer_settings(cfg))
    require_gpus_this_torch_runs(cfg)
    with requeue_signal_answered(cfg.stage.name):  # under SLURM: its signal before the job's time runs out
        return _run_checked(cfg, reads, pipeline_step, out, resolved)


def _run_checked(cfg: DictConfig, reads: RunReads, pipeline_step: bool, out: Path, resolved: dict) -> Path | None:
    """``run`` once ``cfg``'s settings are checked and Lightning has loaded, writing to ``out`` what ``resolved``
    records."""
    from hydra.utils import get_method
    from lightning import seed_everything
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from stablesdg import artifacts
    from stablesdg.choices import DIFFUSION_STAGES
    from stablesdg.memory import out_of_memory_error
    from stablesdg.model_files import model_digest
    from stablesdg.provenance import machine
    from stablesdg.setting_files import setting_file_digests
    from stablesdg.stage_lock import stage_claimed
    from stablesdg.training import compute_device
    from stablesdg.training_output import quiet_trainer_notices

    use_this_process_gpu(cfg)
    if rank_zero_only.rank == 0 and not pipeline_step:
        note_unused_gpu(cfg)
        note_stand_in_model(cfg)
        note_sweep_choice_not_used(cfg)
    runner = get_method(cfg.stage.runner)
    quiet_trainer_notices()
    seed_everything(cfg.seed, workers=True, verbose=False)
    if dry_run(cfg):  # claims no folder and leaves its result.json as it is
        runner(cfg, out)
        return None
    started = time.perf_counter()
    if rank_zero_only.rank == 0 and on_its_own(cfg, pipeline_step) and not cfg.get("skip_up_to_date"):
        note_finished_before(out, resolved, cfg.paths.artifacts)  # with skip_up_to_date, _run said it

    try:
        # rank 0 claims the folder: DDP's other processes write into it with it
        with stage_claimed(out, rank_zero_only.rank), artifacts.result_cleared(out):
            metrics = runner(cfg, out)
    except Exception as err:
        exhausted = out_of_memory_error(cfg, err)
        if exhausted is None:
            raise
        raise exhausted from err
    if metrics is None:  # a non-zero DDP rank: rank 0 writes the result
        return out / artifacts.RESULT_FILE
    return artifacts.write_result(
        out, stage=cfg.stage.name, dataset=cfg.dataset.name, category=cfg.category, variant=cfg.variant,
        metrics=metrics, config=resolved, wall_time_s=time.perf_counter() - started,
        inputs=artifacts.store_relative(reads.stages, cfg.paths.artifacts), split=reads.split_read,
        model_files=model_digest(resolved.get("model"), cfg.paths.artifacts) if cfg.stage.name in DIFFUSION_STAGES
        else None,  # not where no weights are read: stage=inspect's data alone, or the pipeline, whose steps record them
        setting_files=setting_file_digests(resolved, cfg.paths.artifacts),
        machine=machine(compute_device(cfg)),
    )


def claim_in_multirun(out: Path, sweep_dir: str | Path, overrides: list[str]) -> None:
    """Record that this job of a multirun writes ``out`` (a marker under ``sweep_dir``); a one-line ``UserError``
    where another job of it, with other ``overrides``, already does: the later job would overwrite the earlier's
    artifacts (a sweep over a setting that does not name the folder, such as ``stage.lr``)."""
    import hashlib
    import tempfile

    from stablesdg.errors import UserError

    markers = Path(sweep_dir) / ".stage_folders"
    markers.mkdir(parents=True, exist_ok=True)
    marker = markers / f"{hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]}.json"
    with tempfile.NamedTemporaryFile("w", dir=markers, suffix=".tmp", delete=False, encoding="utf-8") as staged:
        json.dump(list(overrides), staged)
    try:
        os.link(staged.name, marker)  # made with its content at once, and only where no job made it first
        return
    except FileExistsError:
        other = json.loads(marker.read_text(encoding="utf-8"))
    finally:
        os.unlink(staged.name)
    if other == list(overrides):  # the same job run again (a requeued SLURM job) is no conflict
        return
    settings = [dict(o.lstrip("+~").split("=", 1) for o in job if "=" in o) for job in (other, overrides)]
    swept = sorted(key for key in settings[0].keys() & settings[1].keys() if settings[0][key] != settings[1][key])
    name = "_".join(f"{key.rsplit('.', 1)[-1]}${{{key}}}" for key in swept) or "NAME"
    raise UserError(f"the jobs '{' '.join(other)}' and '{' '.join(overrides)}' of this multirun both write {out}, so "
                    f"the later would overwrite the earlier's artifacts; name each job's variant after what it sweeps: "
                    f"add 'variant={name}' to the command")


class JobRefused(CompactHydraException):
    """A job of a multirun in a process of its launcher's (submitit: SLURM or local processes; joblib's pool) refused
    by a ``UserError``."""


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``metrics[stage.objective]`` when set (the value Optuna sweeps minimise)."""
    try:
        hydra_cfg = HydraConfig.get()
        task = as_written(hydra_cfg.overrides.task)
        require_resolvable(cfg, task)
        expand_home(cfg)
        if not checked_before(task):
            check_overrides(task, lambda overrides: compose(hydra_cfg.job.config_name, overrides=overrides),
                            config_groups())
        note_unread_settings(task, cfg.stage)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            claim_in_multirun(plan(cfg)[0], hydra_cfg.sweep.dir, task)
        with gpu_freed_at_end():  # a multirun job's own GPU (stablesdg.gpus), for the launcher's next job
            result = run(cfg)
    except KeyboardInterrupt as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        where = f" {exc}" if str(exc) else ""
        say(f"error: stage={cfg.stage.name} stopped by Ctrl-C{where}; run the same command again to resume")
        sys.exit(130)
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if isinstance(user_error, RaisedOnEveryRank):  # raised in training: Lightning is loaded by then
            from lightning.fabric.utilities.rank_zero import rank_zero_only

            if rank_zero_only.rank != 0:
                sys.exit(2)  # DDP's ranks met it alike: rank 0 says so for them all
        say(f"error: {user_error}")
        if any(name in str(HydraConfig.get().launcher.get("_target_", "")) for name in ("submitit", "joblib")):
            # a job that exits makes submitit's launcher print a page of its own trace, and joblib's stop the jobs
            # running beside it; a failed job's error goes back to the command that launched it once every job has
            # ended, and Hydra prints this kind in one line there
            raise JobRefused(f"error: {user_error}") from None
        sys.exit(2)
    if result is None:  # a dry run: its last line says what would run
        return None
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:  # DDP's other processes return here too: one line per command
        say(f"result: {result}", sys.stdout)
    objective = cfg.stage.get("objective")
    if objective and result.is_file():
        return float(json.loads(result.read_text())["metrics"][objective])
    return None


def checked_before(task: Sequence[str]) -> bool:
    """Whether ``refuse_unknown_keys`` checked a job with these task overrides on this process's command line."""
    return (checked_before_hydra is not None and checked_before_hydra[0] == tuple(sys.argv[1:])
            and task_overrides(task) in checked_before_hydra[1])


def task_overrides(job: Sequence[str]) -> tuple[str, ...]:
    """The words of ``job`` that Hydra keeps as its task overrides (all but those of its own ``hydra`` keys), each
    written as Hydra's sweeper writes a job's: ``stage.preload=False`` for ``stage.preload=false``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return tuple(f"{override.get_key_element()}={override.get_value_element_as_str()}"
                 for override in OverridesParser.create().parse_overrides(list(job))
                 if not override.is_hydra_override())


def refuse_unknown_keys(argv: list[str]) -> None:
    """Before Hydra composes a command line of ``key=value`` words, a multirun's (``-m``) included, with or without
    ``--config-dir``: exit with code 2 and one line, ``error: ...`` with what was meant, where a key names no setting
    (``stage.max_step=2``; ``stag=ti``) or a group no option (``stage=tl``), in any job of a multirun
    (``command_line.check_jobs``). Hydra's own message would take seven lines or more, and for a key advise adding it
    with ``+``, which nothing would read. A ``key=value`` word that Hydra's grammar cannot read is such a line in any
    command (``schema.require_parsable``), and so is a typed top-level setting given what it cannot be, in any job
    (``seed=1.5``, ``category=[Pa,Cr]``: ``schema.require_top_level_types``), and so is a setting written as an
    option (``--stage ti``: ``command_line.require_settings_not_options``), and so is an option that is none of Hydra's
    flags, one of its flags given a value it cannot take, or ``key=value`` words on both sides of its flags
    (``--badflag``, ``--cfg jobs``, ``stage=ti -m seed=3``: ``command_line.hydra_arguments``). A command with help
    (``--help``) or another primary config (``--config-name``), every other problem, and a command that passes, are
    left to Hydra (a config printed, ``--cfg job``, is checked as a run's); the jobs of one that passes are kept in
    ``checked_before_hydra``, so that ``main`` does not check them again."""
    from hydra.errors import HydraException

    from stablesdg.command_line import check_jobs, parse_command_line, require_settings_not_options
    from stablesdg.errors import UserError

    global checked_before_hydra
    try:
        require_settings_not_options(argv, CONFIG_DIR)
        parsed = parse_command_line(argv)
        words = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
        require_parsable(words)
        require_top_level_types(words)
        if parsed is not None and parsed[0]:
            jobs = check_jobs(*parsed, CONFIG_DIR)
            checked_before_hydra = tuple(argv), {task_overrides(job) for job in jobs}
    except HydraException:
        return
    except UserError as err:
        say(f"error: {err}")
        sys.exit(2)


# Python's resource tracker, and loky's own, which joblib's pool uses in its place on Python 3.13
QUIET_POOL_SHUTDOWN = ("ignore::UserWarning:multiprocessing.resource_tracker",
                       "ignore::UserWarning:joblib.externals.loky.backend.resource_tracker")


if __name__ == "__main__":
    if "--version" in sys.argv[1:]:  # Hydra's flag would print Hydra's version alone
        from stablesdg.provenance import versions_text

        print(versions_text())
        sys.exit(0)
    refuse_unknown_keys(sys.argv[1:])
    # a multirun's process pool (joblib) stopped by Ctrl-C or SIGTERM leaves its semaphores to a resource tracker, a
    # process of its own started from this environment, which would warn about them after the command's last line
    said = os.environ.get("PYTHONWARNINGS", "").split(",")
    quiet = [rule for rule in QUIET_POOL_SHUTDOWN if rule not in said]  # DDP's processes run this command again
    if quiet:
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), *quiet)))
    try:
        main()
    except KeyboardInterrupt:  # a run says its own line in main; this is the command launching a multirun's jobs
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        from stablesdg.multirun_signals import stopped_multirun_line, stopping_signal

        say(stopped_multirun_line())
        sys.exit(2 if stopping_signal() == "SIGTERM" else 130)  # as a run stopped by that signal exits
