"""A Hydra callback for the command that launches a multirun: it notes the launcher, and under joblib's process pool
makes SIGTERM (``kill``, or a scheduler ending the allocation) stop the pool's jobs and the command with one line, as
Ctrl-C does. Python's default would end the command alone and leave the pool's processes behind, each holding its
job's memory (on a GPU too) until loky's idle timeout, and the output pipe open. Under SLURM, the command ignores
SLURM's requeue signal, which SLURM sends to every process of the job step: each job of the pool answers it (saves,
stops, and the job is requeued), where the signal's default would end the command at once and, with it, the jobs
before they saved. ``stopped_multirun_line`` is the line of a multirun stopped by Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from stablesdg.slurm_check import SLURM_LAUNCHER

_this_command: dict[str, str | None] = {"launcher": None, "signal": "Ctrl-C"}  # its multirun's launcher, what stopped it


def stopping_signal() -> str:
    """The name of the signal that stopped this command's multirun: ``Ctrl-C`` unless SIGTERM did."""
    return str(_this_command["signal"])


def stopped_multirun_line() -> str:
    """The one line for a Ctrl-C (or, under joblib, a SIGTERM) that stops the command waiting for a multirun's jobs
    (each local job says its own), or that comes before any run began."""
    if _this_command["launcher"] is None:
        return "error: stopped by Ctrl-C before the run began"
    if _this_command["launcher"] == SLURM_LAUNCHER:
        return ("error: stopped by Ctrl-C while waiting for the multirun's jobs; those submitted to SLURM run on "
                "(squeue lists them, scancel stops them; python -m stablesdg.report status shows their stages)")
    return f"error: the multirun stopped by {stopping_signal()}; run the same command again to resume its jobs"


def _stop_like_ctrl_c(signum: int, frame: Any) -> None:
    _this_command["signal"] = "SIGTERM"
    raise KeyboardInterrupt  # joblib then stops the jobs in its pool, and the entry point says so in one line


class SignalsToParallelJobs(Callback):
    """Notes this command's multirun launcher; under ``hydra/launcher=joblib``, SIGTERM to the command stops it as
    Ctrl-C does, and under SLURM the command (and so each process of its pool, which inherits that, until its job
    answers the signal itself: ``slurm_requeue``) ignores SLURM's requeue signal."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _this_command["launcher"] = str(config.hydra.launcher.get("_target_"))
        if "joblib" in _this_command["launcher"]:
            from lightning.fabric.plugins.environments import SLURMEnvironment  # loaded for a joblib multirun only

            from stablesdg.slurm_requeue import REQUEUE_SIGNAL

            signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
            if SLURMEnvironment.detect():  # before the pool starts: its processes inherit an ignored signal
                signal.signal(REQUEUE_SIGNAL, signal.SIG_IGN)
