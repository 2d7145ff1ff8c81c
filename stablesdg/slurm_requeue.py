"""SLURM's requeue signal (``#SBATCH --signal=USR1@90``): answered at the end of a training step, and elsewhere by
stopping the run; either way the job is requeued.

Lightning answers it inside the signal handler: it saves a checkpoint wherever the handler interrupts the process (an
optimiser step half applied), and under DDP each process starts the save's collectives from wherever it was, so one
rendering a validation grid while the others wait at the next step hangs the job until SLURM kills it, before it
requeues. Here the handler only notes the signal; at the end of the step in progress, on every process together,
the stage saves its state (``hpc_ckpt_<n>.ckpt`` in its checkpoints folder, where ``training.resume_checkpoint``
finds it), requeues the job (``scontrol requeue``) and stops. Elsewhere in a run (generating, scoring, caching
latents) the handler stops the run where it is, as Ctrl-C would (``RequeueSignalled``), and the entry point requeues
the job; without a handler, the signal would end the process before its time ran out, and nothing would requeue it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L

from stablesdg.checkpoint_files import save_whole_state
from stablesdg.errors import RaisedOnEveryRank, first_line
from stablesdg.gpus import multirun_job

log = logging.getLogger(__name__)

REQUEUE_SIGNAL = signal.SIGUSR1  # Lightning's SLURMEnvironment's requeue_signal

_training: RequeueAtStepEnd | None = None  # the training loop that answers the signal at its step's end
_pending = False  # a signal the loop ended before answering: answered where the next stage starts (a pipeline's step)
_depth = 0  # requeue_signal_answered blocks entered: a pipeline's, then its step's
_answering_process = 0  # the process whose run answers the signal


class RequeueSignalled(BaseException):
    """SLURM's requeue signal where no training loop answers it: raised by the handler to stop the run where it is,
    as Ctrl-C's ``KeyboardInterrupt`` would (a ``BaseException``, so that no ``except Exception`` takes it)."""


def requeue_job() -> tuple[str, str | None]:
    """Requeue this SLURM job with ``scontrol requeue`` (an array task as ``<array job id>_<task id>``, as
    Lightning names it), once: in a multirun whose jobs run side by side in this SLURM job (joblib), each of which
    has the signal, the first to requeue it leaves a marker in the sweep's folder, and the others requeue nothing.
    Returns the job's id and why the requeue failed, or None where it was requeued."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array else os.environ.get("SLURM_JOB_ID", "")
    if not job:
        return job, "SLURM_JOB_ID is not set"
    multirun = multirun_job()
    if multirun is None:
        return job, _scontrol_requeue(job)
    from filelock import FileLock

    # the same job requeued runs its multirun again: a marker of each time it ran (SLURM counts them)
    marker = multirun[1] / ".requeued" / f"{job}-run{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{marker}.lock"):
        if marker.exists():
            return job, None
        failure = _scontrol_requeue(job)
        if failure is None:
            marker.touch()
    return job, failure


def _scontrol_requeue(job: str) -> str | None:
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except OSError as err:
        return f"scontrol could not be run ({first_line(err)})"
    if done.returncode != 0:
        return f"scontrol requeue {job} failed ({first_line(done.stderr) or f'exit code {done.returncode}'})"
    return None


class RequeueAtStepEnd(L.Callback):
    """Save, requeue and stop at the end of the training step during which SLURM's requeue signal came, on every
    process at the same step (under DDP, the step where any of them has it). ``save_state``: save the trainer's state
    there (``hpc_ckpt_<n>.ckpt`` in ``trainer.default_root_dir``, in place of an earlier one's); without it, for
    a stage whose checkpoints resume exactly only at an epoch's end (``stage=classify``), the requeued job resumes
    from its last one. It stops by raising the one-line error of ``stage``, so that Lightning ends no epoch early
    (which would validate and checkpoint a part of one as if whole). Where the job cannot be requeued, training goes
    on, with a warning. ``optimizer_steps`` optimiser steps make one of the stage's steps (2 for a GAN), as its
    messages count them."""

    def __init__(self, stage: str, save_state: bool, optimizer_steps: int = 1) -> None:
        self.stage = stage
        self.save_state = save_state
        self.optimizer_steps = optimizer_steps
        self.signalled = False

    def note(self, signum: int, frame: Any) -> None:
        """The signal handler: note the signal, nothing more."""
        self.signalled = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        signalled = self.signalled
        if trainer.world_size > 1:  # a one-number collective: Lightning's SIGTERM broadcast waits on the device anyway
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled:
            return
        self.signalled = False
        step = trainer.global_step // self.optimizer_steps
        saved = str(save_whole_state(trainer)) if self.save_state else "its last checkpoint"
        job, failure = requeue_job() if trainer.is_global_zero else ("", None)
        job, failure = trainer.strategy.broadcast((job, failure), src=0)
        if failure is not None:
            if trainer.is_global_zero:
                log.warning("SLURM's requeue signal came at step %d, and the job was not requeued: %s; training goes "
                            "on until the job ends (the same command resumes from %s)", step, failure, saved)
            return
        if trainer.is_global_zero:
            log.info("SLURM's requeue signal came at step %d: requeued job %s, which resumes from %s", step, job, saved)
        resumes = "there" if self.save_state else "its last finished epoch"
        raise RaisedOnEveryRank(f"stage={self.stage} stopped at step {step} on SLURM's requeue signal; the requeued "
                                f"job resumes from {resumes}")


@contextmanager
def training_answers_requeue(trainer: L.Trainer, stage: str, save_state: bool,
                             optimizer_steps: int = 1) -> Iterator[None]:
    """Around ``trainer.fit``: where Lightning would requeue a SLURM job on its signal (its SLURM environment, with
    ``auto_requeue``), a ``RequeueAtStepEnd`` answers it in Lightning's place: added to ``trainer``'s callbacks, the
    signal noted for it by ``requeue_signal_answered``'s handler (or by the one Lightning registers when ``fit``
    starts, replaced by its ``note``). A signal the loop ended before answering (it came after the last step) is
    answered where the next stage starts. Elsewhere, nothing."""
    global _training, _pending
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = trainer._accelerator_connector.cluster_environment
    if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
        yield
        return
    requeue = RequeueAtStepEnd(stage, save_state, optimizer_steps)
    trainer.callbacks.append(requeue)
    trainer._signal_connector._slurm_sigusr_handler_fn = requeue.note  # read when fit registers its handlers
    _training = requeue
    try:
        yield
    finally:
        _training = None
        _pending = _pending or requeue.signalled


def _on_requeue_signal(signum: int, frame: Any) -> None:
    if os.getpid() != _answering_process:  # a data-loading worker forked from the run: its run answers
        return
    if _training is not None:
        _training.note(signum, frame)
    else:
        raise RequeueSignalled()


@contextmanager
def requeue_signal_answered(stage: str) -> Iterator[None]:
    """Under SLURM (where Lightning finds its environment: ``SLURMEnvironment.detect()``), SLURM's requeue signal
    answered in this block, by the loop of a training stage at its step's end (``training_answers_requeue``), and
    elsewhere by ``RequeueSignalled``, raised where the run is, which leaves this block as ``stopped_for_requeue``'s
    one-line error once the job is requeued. Blocks nest (a pipeline's, then its step's); a signal a training loop
    ended before answering is answered as the next one starts. Outside SLURM, nothing."""
    global _depth, _pending, _answering_process
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect() or threading.current_thread() is not threading.main_thread():
        yield
        return
    _answering_process = os.getpid()
    previous = signal.signal(REQUEUE_SIGNAL, _on_requeue_signal)
    _depth += 1
    try:
        if _pending:
            _pending = False
            raise RequeueSignalled()
        yield
    except RequeueSignalled as err:
        raise stopped_for_requeue(stage) from err
    finally:
        _depth -= 1
        signal.signal(REQUEUE_SIGNAL, previous)
        _pending = _pending and _depth > 0


def stopped_for_requeue(stage: str) -> RaisedOnEveryRank:
    """The one-line error of a run of ``stage`` that SLURM's requeue signal stopped outside a training loop, once
    the first process has requeued the job (``requeue_job``): every process stops alike, and the first says it."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    job, failure = requeue_job() if rank_zero_only.rank == 0 else ("", None)
    if failure is not None:
        return RaisedOnEveryRank(f"stage={stage} stopped on SLURM's requeue signal, and the job was not requeued: "
                                 f"{failure}; run the same command again to resume")
    return RaisedOnEveryRank(f"stage={stage} stopped on SLURM's requeue signal; requeued job {job}, which resumes it")
