"""What every trained stage shares: per-step seeds, resumable checkpoints keyed by the config, and a finished-run check.

Every trained stage draws the randomness of training step ``k`` from a seed derived from ``(seed, k, rank)``
(``step_seed``), never from RNG state carried over from earlier steps, so a run resumed from a checkpoint
takes exactly the steps of an uninterrupted one (bit-identical on a CPU).
"""

from __future__ import annotations

import logging
import pickle
import shutil
import signal
import sys
import traceback
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from stablesdg import artifacts, atomic_files, model_files, provenance, setting_files, up_to_date
from stablesdg.checkpoint_files import CheckpointWrittenBeside, save_whole_state
from stablesdg.errors import RaisedOnEveryRank, StoppedBySigterm, UserError, first_line
from stablesdg.gpus import on_gpus, this_process_gpu
from stablesdg.run_signals import sigterm_left_to_lightning
from stablesdg.slurm_requeue import training_answers_requeue
from stablesdg.training_output import (MetricsEveryLogStep, ProgressLines, max_steps_notice_in_stage_steps,
                                       stdout_is_terminal)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = artifacts.CHECKPOINT_DIR
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


def _only_item(items: list[int]) -> int:
    return items[0]


class _StepTicks(DataLoader):
    """``step_ticks``' loader. It resumes anywhere: its items carry no data (each step draws its batch from its
    global step's seed, which a checkpoint restores), so its state is empty. Saying so (``state_dict``) keeps
    Lightning from warning at every mid-run resume that the run may not resume exactly."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def step_ticks(max_steps: int, world_size: int) -> DataLoader:
    """A loader that only paces the training loop: one item per step and rank (each step draws its own batch).

    Its items are Python ints, so no step copies anything to the device (a copy from pageable host memory may
    make the host wait for the GPU)."""
    return _StepTicks(range(int(max_steps) * int(world_size)), batch_size=1, collate_fn=_only_item)


def log_interval(cfg: DictConfig, batches_per_epoch: int) -> int:
    """``trainer.log_every_n_steps``, shortened to an epoch's ``batches_per_epoch`` where it is longer: an interval
    longer than the epoch logs no training metric at all (and Lightning warns about it)."""
    return max(1, min(int(cfg.trainer.get("log_every_n_steps", 50)), int(batches_per_epoch)))


def build_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """``cfg.trainer`` instantiated with ``kwargs``, writing its checkpoints beside their paths
    (``CheckpointWrittenBeside``) unless ``trainer.plugins`` names its own; a trainer setting Lightning refuses
    (``trainer.precision=foo``, ``trainer.devices=abc``) ends in a one-line ``UserError`` with Lightning's reason, not
    Hydra's three-line report."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from stablesdg.library_arguments import require_config_arguments

    index = this_process_gpu(cfg)
    if index is not None:  # a multirun job's own GPU (stablesdg.gpus), not the first for every job
        kwargs.setdefault("devices", [index])
    if "plugins" not in cfg.trainer:
        kwargs.setdefault("plugins", [CheckpointWrittenBeside()])
    kwargs.setdefault("default_root_dir", f"{cfg.paths.logs}/lightning")  # a training stage passes its checkpoints/
    require_config_arguments(cfg.trainer, "trainer")
    try:
        return instantiate(cfg.trainer, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, (ValueError, TypeError, MisconfigurationException)):
            raise UserError(refused_by_lightning(cause)) from err
        raise


def require_accepted_trainer_settings(cfg: DictConfig) -> int:
    """A one-line ``UserError`` for a ``cfg.trainer`` setting Lightning refuses (``trainer.precision=fp8``,
    ``trainer.devices=abc``, a key ``lightning.Trainer`` has no argument for), found by building that trainer once,
    before any image is read or model built. Every stage runs it: the training stages build the trainer later, and
    ``stage=generate`` and ``stage=fid`` take their device and dtype from ``trainer.accelerator`` and
    ``trainer.precision``, where a misspelt precision would otherwise mean float32 without a word. The trial trainer
    has no logger, checkpoints or progress bar, says nothing, and leaves torch's determinism and cuDNN flags as they
    are (those are the real trainer's to set). A ``+logger.<key>`` its logger's class takes no argument for is refused
    here too. Returns the number of devices (processes) Lightning would train on."""
    from stablesdg.library_arguments import require_config_arguments

    if cfg.get("logger") and "_target_" in cfg.logger:
        require_config_arguments(cfg.logger, "logger")
    device_notices = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = device_notices.level
    device_notices.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = build_trainer(cfg, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                  enable_model_summary=False, deterministic=None, benchmark=None)
    finally:
        device_notices.setLevel(level)
    return int(trial.num_devices) * int(trial.num_nodes)


def compute_device(cfg: DictConfig) -> torch.device:
    """The device for work outside the Lightning loop (latent caching, generation): CUDA unless ``trainer.accelerator=cpu``,
    torch's current device, which the entry point sets to the trainer's (``stablesdg.gpus.use_this_process_gpu``)."""
    if torch.cuda.is_available() and on_gpus(cfg.trainer):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def run_identities(cfg: DictConfig, inputs: Any = None, ignore: Iterable[str] = ()) -> tuple[str, ...]:
    """Hashes of the settings that shape a run (``up_to_date.settings_keying_unfinished_work``: not paths or logger,
    nor where the stage's code lives), less the ``stage`` keys in ``ignore`` and the trainer, so a moved store and a
    new version that moves a stage's code still resume; and of ``inputs``: what identifies the artifacts the run reads
    (``artifacts.recorded_checksums``, ``files_identity``). The first is what a run stamps its work with: without the
    config groups its stage never reads (``up_to_date.groups_read``: a classifier's work whatever the diffusion
    model, an adaptation's whatever the classifier), and where it reads a model from local files, by their content
    in place of ``model.path`` (``model_files``: a job that finds the weights elsewhere, a node's own copy, resumes),
    and likewise by what the files a setting names hold (``setting_files``: work begun from a weights file or a folder
    of images since replaced by others there is not resumed). The second, of every setting as it is, is what earlier
    versions stamped, which still resumes."""
    config, ignored = OmegaConf.to_container(cfg, resolve=True), set(ignore)
    shaping = up_to_date.settings_keying_unfinished_work(config)
    identity = {k: shaping.get(k) for k in _IDENTITY_KEYS}
    identity["dataset"] = identity["dataset"] or {}
    identity["stage"] = {k: v for k, v in (identity["stage"] or {}).items() if k not in ignored}
    if inputs is not None:
        identity["inputs"] = inputs
    by_settings = provenance.config_hash(identity)
    read = up_to_date.groups_read(identity)
    if "model" in read:
        read["model"] = model_files.model_by_content(read["model"], cfg.paths.artifacts)
    read_by_setting = {setting: digest for setting, digest in setting_files.setting_file_digests(
        config, cfg.paths.artifacts).items() if setting.removeprefix("stage.") not in ignored}
    if read_by_setting:
        read = provenance.without_settings(read, list(read_by_setting))
        read[setting_files.RECORD_KEY] = read_by_setting
    return provenance.config_hash(read), by_settings


def claim_directory(directory: Path, cfg: DictConfig, inputs: Any = None, ignore: Iterable[str] = ()) -> bool:
    """Keep ``directory``'s partial work if this same config (up to the ``stage`` keys in ``ignore``, which do not
    shape the work) made it from the same ``inputs`` (return True): its stamp is one of ``run_identities``; else
    empty it and stamp it. Work made from a model or images since replaced is discarded, never resumed. The processes
    of a DDP job that srun starts together claim the folder in turn (``atomic_files.made_once``): the first stamps
    it, and the others keep what it stamped."""
    stamp = directory / artifacts.STAMP_FILE
    identities = run_identities(cfg, inputs, ignore)
    with atomic_files.made_once(directory):
        if cfg.stage.get("resume", True) and stamp.is_file() and stamp.read_text().strip() in identities:
            return True
        if directory.exists():
            log.info("discarding the work in %s, made with other settings or from inputs since replaced", directory)
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        atomic_files.write_bytes_atomic(stamp, identities[0].encode())
        return False


def resume_checkpoint(out_dir: Path, cfg: DictConfig, inputs: Any = None) -> Path | None:
    """The checkpoint in ``out_dir/checkpoints`` (``last.ckpt``, or the ``hpc_ckpt_<n>.ckpt`` saved there, the
    trainer's ``default_root_dir``, on SLURM's requeue signal or on SIGTERM: ``save_whole_state``) that is furthest
    into training by the step it records, not by its file's time (which a copy scrambles), if the folder was made by
    this same config from the same ``inputs`` (see ``claim_directory``); otherwise a clean checkpoint folder. A
    checkpoint that cannot be read, which no rerun could resume from, is discarded with a warning, and the run
    resumes from another, or trains anew where none is left."""
    folder = out_dir / CHECKPOINT_DIR
    if not claim_directory(folder, cfg, inputs):
        return None
    saved = sorted(artifacts.saved_checkpoints(folder), key=lambda path: path.stat().st_mtime_ns, reverse=True)
    readable: dict[Path, int] = {}
    for path in saved:
        step = saved_step(path)
        if isinstance(step, int):
            readable[path] = step
            continue
        others = [other for other in artifacts.saved_checkpoints(folder) if other != path]
        log.warning("%s cannot be read (%s), so the run cannot resume from it: discarding it%s", path, step,
                    "" if others else " and training anew")
        path.unlink()
    if not readable:
        if saved:  # damaged ones only: what was saved beside them (a classifier's best epoch) goes with them
            shutil.rmtree(folder)
            claim_directory(folder, cfg, inputs)
        return None
    last = max(readable, key=readable.__getitem__)  # of equal steps, the newest file (``readable`` is newest first)
    log.info("resuming from %s", last)
    return last


def saved_step(path: Path) -> int | str:
    """The training step (``global_step``) that the Lightning checkpoint ``path`` was saved at, or why torch could
    not read it (a zip archive cut short: its index at the end is missing). The tensors are mapped, not read."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
    except (zipfile.BadZipFile, OSError, RuntimeError, pickle.UnpicklingError) as err:
        return first_line(err)


class StopOnSigterm(L.Callback):
    """Stop after the current step when the job gets SIGTERM (pre-emption, ``kill``, a scheduler's time limit)
    instead of at the epoch's end. Where ``save_state`` (a stage whose checkpoints resume exactly within an epoch),
    the training's state at that step is saved first (``save_whole_state``: ``saved`` is then True), so that a rerun
    resumes from that step, not from the last periodic checkpoint. The signal is only noted (``signalled``) until
    that step's end, where Lightning learns of it (``trainer.received_sigterm``): told at once, Lightning could stop
    the step after this hook had run, without the save. One process only: under DDP the ranks stop together at a
    step's end (``StopTogetherOnSigterm``), from their last checkpoint."""

    def __init__(self, save_state: bool) -> None:
        self.save_state = save_state
        self.signalled = False
        self.saved = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.signalled and not trainer.received_sigterm:
            if self.save_state and not trainer.should_stop:
                save_whole_state(trainer)
                self.saved = True
            trainer._signal_connector.received_sigterm = True  # Lightning ends the fit with SIGTERMException
            trainer.should_stop = True


class StopTogetherOnSigterm(L.Callback):
    """Under DDP: every rank stops at the end of the first step where any of them has had SIGTERM. Each process only
    notes the signal (``signalled``); at every step's end a one-number collective (as for SLURM's requeue signal)
    tells each whether any has, and all then tell Lightning together (``trainer.received_sigterm``), which ends the fit
    there. Told directly, Lightning stopped a rank at the end of the step in which that rank had the signal, while a
    rank that had it a moment later (a busy process runs its handler when its current operation ends) went on into
    the next step's collectives, which failed with gloo's or NCCL's trace. The collective reads its number on the
    host, as Lightning's own broadcast of rank 0's SIGTERM does at every DDP step."""

    def __init__(self) -> None:
        self.signalled = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.strategy.reduce_boolean_decision(self.signalled, all=False):  # whether any rank has had it
            trainer._signal_connector.received_sigterm = True  # Lightning ends the fit with SIGTERMException


def sigterm_received(trainer: L.Trainer) -> bool:
    """Whether this process has had SIGTERM during ``trainer``'s fit, noted by Lightning or, until the step's end, by
    ``StopOnSigterm`` or ``StopTogetherOnSigterm``."""
    return trainer.received_sigterm or any(isinstance(callback, (StopOnSigterm, StopTogetherOnSigterm))
                                           and callback.signalled for callback in trainer.callbacks)


def sigterm_only_noted(trainer: L.Trainer, noted_by: StopOnSigterm | StopTogetherOnSigterm) -> None:
    """Make Lightning's SIGTERM handler only note the signal, in ``noted_by`` (one process: ``StopOnSigterm``; DDP:
    ``StopTogetherOnSigterm``), which tells Lightning at a step's end. Lightning's own handler also broadcasts from
    inside the signal handler and forwards the signal to the DDP processes it started; a rank waiting in another
    collective then (the other ranks at a step while rank 0 renders validation images, or in the end-of-training
    checkpoint barrier) never answers, and the job hangs or dies with a page of gloo/NCCL trace."""
    connector = trainer._signal_connector

    def note(signum: int, frame: Any) -> None:  # also the handler of a later trainer.test, which stops at once
        if trainer.state.fn == "fit" and not sigterm_received(trainer) and trainer.is_global_zero:
            log.info("SIGTERM received: stopping at the end of this training step (work already finished is saved)")
        noted_by.signalled = True

    connector._sigterm_notifier_fn = note  # read when trainer.fit registers its signal handlers


def run_fit(trainer: L.Trainer, cfg: DictConfig, *args: Any, optimizer_steps: int = 1, resumes_mid_epoch: bool = True,
            **kwargs: Any) -> None:
    """``trainer.fit(*args, **kwargs)``; a SIGTERM stops it after the current step with the one-line resume message,
    and Ctrl-C comes back as a ``KeyboardInterrupt`` saying the step it stopped at (the entry point's one line). Under
    SLURM, its requeue signal saves the training's state at the end of the step (where ``resumes_mid_epoch``: a
    checkpoint saved within an epoch resumes exactly), requeues the job and stops (``slurm_requeue``).

    ``optimizer_steps`` is how many optimiser steps, as Lightning counts them, make one step of the stage (2 for a
    GAN); progress and messages count the stage's steps. Lightning's Rich progress bar shows only where standard
    output is a terminal, and reads metrics every ``trainer.log_every_n_steps`` steps (``MetricsEveryLogStep``), so no
    training step waits for the GPU. Where standard output or error goes to a file (SLURM, nohup), progress is logged
    as lines instead (``ProgressLines``).
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    terminal = stdout_is_terminal()
    bar = trainer.progress_bar_callback
    if type(bar) is RichProgressBar:
        trainer.callbacks.remove(bar)
        if terminal:  # in a file Rich draws only each bar's last frame, wrapped at 80 columns
            trainer.callbacks.append(MetricsEveryLogStep(trainer.log_every_n_steps))
    stop_on_sigterm = StopOnSigterm(save_state=resumes_mid_epoch) if trainer.world_size == 1 else None
    noted_by = stop_on_sigterm or StopTogetherOnSigterm()
    sigterm_only_noted(trainer, noted_by)
    trainer.callbacks.append(noted_by)
    if not (terminal and sys.stderr.isatty()):
        trainer.callbacks.append(ProgressLines(str(cfg.stage.name), optimizer_steps=optimizer_steps))
    try:
        with (training_answers_requeue(trainer, str(cfg.stage.name), resumes_mid_epoch, optimizer_steps),
              max_steps_notice_in_stage_steps(optimizer_steps), sigterm_left_to_lightning()):
            trainer.fit(*args, **kwargs)
    except SIGTERMException as err:
        resumes = "there" if stop_on_sigterm is not None and stop_on_sigterm.saved else "the last checkpoint"
        raise StoppedBySigterm(f"stage={cfg.stage.name} stopped by SIGTERM at step "
                               f"{trainer.global_step // optimizer_steps}; run the same command again to resume from "
                               f"{resumes}") from err
    except SystemExit as err:
        if not isinstance(err.__context__, KeyboardInterrupt):
            raise
        # Lightning answers Ctrl-C with its shutdown, sys.exit(1) and SIGINT ignored from then on
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt(f"at step {trainer.global_step // optimizer_steps}") from err
    except ValueError as err:
        refused = refused_trainer_setting(err, cfg)
        if refused is None:
            raise
        raise refused from err


def refused_trainer_setting(err: ValueError, cfg: DictConfig) -> UserError | None:
    """The one-line ``UserError`` for an error Lightning raised itself that names a ``cfg.trainer`` setting (it
    checks some only once it has the data: ``trainer.val_check_interval`` above an epoch's batches), which every DDP
    process meets alike; None for any other error."""
    import lightning.pytorch

    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    raised_by_lightning = frame is not None and Path(frame.filename).is_relative_to(
        Path(lightning.pytorch.__file__).parent)
    named = [key for key in cfg.trainer if f"`{key}`" in str(err) or f"{key}=" in str(err)]
    if not (raised_by_lightning and named):
        return None
    return RaisedOnEveryRank(refused_by_lightning(err))


def refused_by_lightning(err: BaseException) -> str:
    """The one line for a trainer setting Lightning refused with ``err``: its reason, in its words."""
    return f"Lightning refused a trainer setting: {first_line(err)}"


def require_finite_weights(module: torch.nn.Module, cfg: DictConfig, where: str) -> None:
    """A one-line ``UserError`` when a trainable tensor of ``module`` holds nan or inf, as training leaves it once its
    loss diverged: saved, it would make every later stage read garbage (black images, nan scores). One read of a
    device value, after training. DDP's processes hold the same weights, so each raises it and rank 0 alone says it
    (``RaisedOnEveryRank``)."""
    trained = [p.detach() for p in module.parameters() if p.requires_grad]
    if not trained or bool(torch.stack([torch.isfinite(p).all() for p in trained]).all()):
        return
    precision = str(cfg.trainer.get("precision", "32-true"))
    half = f", or trainer.precision=bf16-mixed (now {precision})" if precision.startswith("16") else ""
    raise RaisedOnEveryRank(f"stage={cfg.stage.name} diverged: its trained weights hold nan or inf values at {where}, "
                            f"so nothing was saved; train it again with a smaller stage.lr (now {float(cfg.stage.lr):g})"
                            f"{half}")


def require_finished(trainer: L.Trainer, cfg: DictConfig, reached: bool, where: Any) -> None:
    """A one-line error (rerun to resume) if ``trainer`` was interrupted before ``reached``; where
    ``trainer.max_time`` ran out, the line says to raise it, since a rerun would stop again at once. DDP's processes
    stop together, so rank 0 alone says it (``RaisedOnEveryRank``)."""
    if not trainer.interrupted and reached:
        return
    if _time_limit_spent(trainer):
        raise RaisedOnEveryRank(f"stage={cfg.stage.name} stopped at {where}: trainer.max_time={cfg.trainer.max_time} "
                                "ran out, and Lightning counts it over every run that resumes, so the same command "
                                "would stop again at once; raise trainer.max_time (or leave it out) to train on from "
                                "the last checkpoint")
    raise RaisedOnEveryRank(f"stage={cfg.stage.name} stopped at {where}; run the same command again to resume "
                            "from the last checkpoint")


def _time_limit_spent(trainer: L.Trainer) -> bool:
    """Whether Lightning's ``Timer`` (``trainer.max_time``) stopped the training."""
    from lightning.pytorch.callbacks import Timer

    remaining = [c.time_remaining() for c in trainer.callbacks if isinstance(c, Timer)]
    return any(left is not None and left <= 0 for left in remaining)


def remove_checkpoints(out_dir: Path, cfg: DictConfig) -> None:
    """Delete the run's checkpoints once its artifact is written (unless ``stage.keep_checkpoints``)."""
    if not cfg.stage.get("keep_checkpoints", False):
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
