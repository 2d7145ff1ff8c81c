"""The end of a stage's W&B run: every stage that one process runs (a pipeline's steps, the jobs of a multirun that
Hydra's basic launcher runs one after another) logs into a W&B run of its own.

Lightning's ``WandbLogger`` reuses a W&B run that is still open in the process, so without an end to each, every stage
after the first would log into the first one's run (under its name, its steps out of order) with a warning each time;
and a run left for the interpreter's exit to end prints W&B's closing lines with terminal colour codes, after the
command's last line.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


def end_logger_run(failed: bool = False) -> None:
    """End this process's open W&B run, if any (``failed``: with exit code 1, which W&B shows as a failed run). Does
    not import ``wandb``: a process that never loaded it has no run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


@contextmanager
def logger_run_ended() -> Iterator[None]:
    """The block's W&B run, if it opened one, is ended when the block ends: failed where the block raised. Ending it
    then does not hide the block's own error (a W&B that fails to end it after an error is not reported)."""
    try:
        yield
    except BaseException:
        try:
            end_logger_run(failed=True)
        except Exception:  # the block's error is what the user needs to see
            pass
        raise
    end_logger_run()
