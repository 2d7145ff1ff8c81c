"""A Hydra callback for the command that launches a multirun's jobs into joblib's process pool: SIGTERM (``kill``, or
a scheduler ending the allocation) stops the pool's jobs and the command with one line, as Ctrl-C does. Python's
default would end the command alone and leave the pool's processes behind, each holding its job's memory (on a GPU
too) until loky's idle timeout, and the output pipe open."""

from __future__ import annotations

import signal
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

_stopped_by = {"signal": "Ctrl-C"}


def stopping_signal() -> str:
    """The name of the signal that stopped this command's multirun: ``Ctrl-C`` unless SIGTERM did."""
    return _stopped_by["signal"]


def _stop_like_ctrl_c(signum: int, frame: Any) -> None:
    _stopped_by["signal"] = "SIGTERM"
    raise KeyboardInterrupt  # joblib then stops the jobs in its pool, and the entry point says so in one line


class SigtermStopsParallelJobs(Callback):
    """Under ``hydra/launcher=joblib``, SIGTERM to the launching command stops it as Ctrl-C does."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "joblib" in str(config.hydra.launcher.get("_target_", "")):
            signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
