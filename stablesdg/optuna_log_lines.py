"""A Hydra callback that sends Optuna's log lines through Hydra's logging, as every other line of a multirun goes.

Optuna gives its loggers a handler of its own that colours each line with terminal escape codes, whatever the output
is: a sweep's output redirected to a file (SLURM, ``nohup``, CI) would hold ``\\x1b[32m[I 2026-...]\\x1b[0m A new study
created in memory ...``.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class OptunaLogLines(Callback):
    """At the start of a multirun under ``hydra/sweeper=optuna``, before the sweeper imports Optuna's study, drop
    Optuna's own coloured handler and let its lines propagate to Hydra's handlers (plain text, Hydra's format)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "optuna" not in str(config.hydra.sweeper.get("_target_", "")):
            return
        import optuna  # loaded for an Optuna sweep only; the sweeper imports it next

        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
