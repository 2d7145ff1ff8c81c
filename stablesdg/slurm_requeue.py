"""SLURM's requeue signal (``#SBATCH --signal=USR1@90``), answered at the end of a training step.

Lightning answers it inside the signal handler: it saves a checkpoint wherever the handler interrupts the process (an
optimiser step half applied), and under DDP each process starts the save's collectives from wherever it was, so one
rendering a validation grid while the others wait at the next step hangs the job until SLURM kills it, before it
requeues. Here the handler only notes the signal; at the end of the step in progress, on every process together,
the stage saves its state (``hpc_ckpt_<n>.ckpt`` in its checkpoints folder, where ``training.resume_checkpoint``
finds it), requeues the job (``scontrol requeue``) and stops.
"""

from __future__ import annotations

import logging
import os
import subprocess
from typing import Any

import lightning as L

from stablesdg.errors import first_line

log = logging.getLogger(__name__)


def requeue_job() -> tuple[str, str | None]:
    """Requeue this SLURM job with ``scontrol requeue`` (an array task as ``<array job id>_<task id>``, as
    Lightning names it). Returns the job's id and why the requeue failed, or None where it was requeued."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array else os.environ.get("SLURM_JOB_ID", "")
    if not job:
        return job, "SLURM_JOB_ID is not set"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except OSError as err:
        return job, f"scontrol could not be run ({first_line(err)})"
    if done.returncode != 0:
        return job, f"scontrol requeue {job} failed ({first_line(done.stderr) or f'exit code {done.returncode}'})"
    return job, None


class RequeueAtStepEnd(L.Callback):
    """Save, requeue and stop at the end of the training step during which SLURM's requeue signal came, on every
    process at the same step (under DDP, the step where any of them has it). ``save_state``: save the trainer's state
    there (``hpc_ckpt_<n>.ckpt`` in ``trainer.default_root_dir``); without it, for a stage whose checkpoints resume
    exactly only at an epoch's end (``stage=classify``), the requeued job resumes from its last one. Where the job
    cannot be requeued, training goes on, with a warning. ``optimizer_steps`` optimiser steps make one of the stage's
    steps (2 for a GAN), as its messages count them."""

    def __init__(self, save_state: bool, optimizer_steps: int = 1) -> None:
        self.save_state = save_state
        self.optimizer_steps = optimizer_steps
        self.signalled = False
        self.requeued = False

    def note(self, signum: int, frame: Any) -> None:
        """The signal handler: note the signal, nothing more."""
        self.signalled = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        signalled = self.signalled
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled:
            return
        self.signalled = False
        step = trainer.global_step // self.optimizer_steps
        saved = "its last checkpoint"
        if self.save_state:
            saved = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
            trainer.save_checkpoint(saved, weights_only=False)  # the whole state, optimiser and loops too
        job, failure = requeue_job() if trainer.is_global_zero else ("", None)
        job, failure = trainer.strategy.broadcast((job, failure), src=0)
        if failure is not None:
            if trainer.is_global_zero:
                log.warning("SLURM's requeue signal came at step %d, and the job was not requeued: %s; training goes "
                            "on until the job ends (the same command resumes from %s)", step, failure, saved)
            return
        if trainer.is_global_zero:
            log.info("SLURM's requeue signal came at step %d: requeued job %s, which resumes from %s", step, job, saved)
        self.requeued = True
        trainer.should_stop = True


def requeue_at_step_end(trainer: L.Trainer, save_state: bool, optimizer_steps: int = 1) -> RequeueAtStepEnd | None:
    """Where Lightning would requeue a SLURM job on its signal (its SLURM environment, with ``auto_requeue``), a
    ``RequeueAtStepEnd`` in its place: added to ``trainer``'s callbacks, and the handler Lightning registers when
    ``fit`` starts replaced by its ``note``. None elsewhere."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = trainer._accelerator_connector.cluster_environment
    if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
        return None
    requeue = RequeueAtStepEnd(save_state, optimizer_steps)
    trainer.callbacks.append(requeue)
    trainer._signal_connector._slurm_sigusr_handler_fn = requeue.note  # read when fit registers its handlers
    return requeue
