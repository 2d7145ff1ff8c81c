"""A Hydra callback that refuses, in one line, a SLURM multirun started on a machine without SLURM.

Hydra's submitit launcher makes its executor only once the sweep runs, and submitit then raises ``Could not detect
"srun", are you indeed on a slurm cluster?`` from inside Hydra, which prints it as a page of stack trace.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


class SlurmCheck(Callback):
    """At the start of a multirun under ``hydra/launcher=submitit_slurm``, exit with code 2 and ``error: ...`` on
    stderr where submitit finds no SLURM here (no ``srun`` on ``PATH``), before any job is planned or submitted."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.launcher.get("_target_") != SLURM_LAUNCHER or os.environ.get("HYDRA_FULL_ERROR") == "1":
            return
        from submitit import SlurmExecutor

        from stablesdg.schema import as_written

        if SlurmExecutor.affinity() < 0:  # submitit's own test: srun on PATH
            sweep = next((o.split("=", 1)[1] for o in as_written(config.hydra.overrides.task)
                          if o.startswith("+sweep=") and o.endswith("_slurm")), None)
            here = (f"+sweep={sweep.removesuffix('_slurm')} runs the same jobs here" if sweep else
                    "without hydra/launcher=submitit_slurm the jobs run here")
            # Hydra turns an exception raised in a callback into a warning, so the refusal exits by itself
            print("error: hydra/launcher=submitit_slurm submits each job to SLURM, and SLURM's commands (srun) are not "
                  "on PATH here: run the command on a login node of the cluster (after `module load slurm` where it "
                  f"needs one), or {here}", file=sys.stderr)
            sys.exit(2)
