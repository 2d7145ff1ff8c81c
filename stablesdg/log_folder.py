"""A Hydra callback that refuses, in one line, a run whose log folder is not named, cannot be made, or lies inside the
dataset's folder.

Hydra makes the run's folder (``hydra.run.dir``, or ``hydra.sweep.dir`` for a multirun, both under ``paths.logs``)
before the job starts, so the entry point's own error handling never sees a ``paths.logs`` that names a file or a
folder the user may not write to: Hydra would print a stack trace.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from stablesdg.data.settings import require_outside_dataset
from stablesdg.errors import UserError, require_folder_setting, say


def log_folder_problem(folder: str | Path) -> str | None:
    """Why ``folder`` could not be made, or None when it can. Makes its parent (which Hydra would make a moment
    later), not ``folder`` itself: its name holds the time, which Hydra reads again."""
    try:
        Path(folder).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"{err.strerror}: {err.filename}" if err.filename else str(err)
    return None


class LogFolderCheck(Callback):
    """At the start of a run or multirun, exit with code 2 and ``error: ...`` on stderr when ``paths.logs`` names no
    folder, lies inside ``dataset.root`` or its log folder cannot be made; with ``HYDRA_FULL_ERROR=1`` Hydra reports a
    folder it cannot make itself."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._require(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._require(config, "sweep")

    @staticmethod
    def _require(config: DictConfig, mode: str) -> None:
        # Hydra turns an exception raised in a callback into a warning, so each refusal here exits by itself
        try:
            require_folder_setting("paths.logs", config.paths.logs)
            # before Hydra makes the run's folder there, where a scan of the dataset would find it
            require_outside_dataset(config.dataset, {"paths.logs": config.paths.logs})
        except UserError as err:  # also under HYDRA_FULL_ERROR=1: nothing else stops a run writing to /runs
            say(f"error: {err}")
            sys.exit(2)
        folder = config.hydra[mode].dir
        problem = log_folder_problem(folder)
        if problem and os.environ.get("HYDRA_FULL_ERROR") != "1":
            say(f"error: cannot make the log folder {folder}: {problem} (check paths.logs)")
            sys.exit(2)
