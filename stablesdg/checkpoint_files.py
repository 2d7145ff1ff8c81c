"""How the training stages write Lightning checkpoints: whole or not at all, beside where they go.

Lightning's own writer (``TorchCheckpointIO`` through fsspec's local transaction) stages each checkpoint in the
system's temporary folder, mode 0600, and then moves it: a full fine-tune's gigabytes must fit in ``/tmp`` (often
small on a cluster node), a stop during the move across disks leaves a truncated file, and a group sharing a store
cannot read a colleague's checkpoint to resume it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from stablesdg.atomic_files import atomic_path


class CheckpointWrittenBeside(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose checkpoints are written to a temporary file beside their path and renamed onto
    it (``atomic_files.atomic_path``): no copy through the system's temporary folder, the permissions the umask
    gives, and a failure to write (a full disk) is a one-line ``UserError`` naming the checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:  # Lightning's refusal, in its words
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as staged, open(staged, "wb") as file:
            try:
                torch.save(checkpoint, file)
            except RuntimeError as err:  # torch's writer reports the file's OSError (a full disk) as its own error
                if isinstance(err.__context__, OSError):
                    raise err.__context__ from err
                raise


def save_whole_state(trainer: L.Trainer) -> Path:
    """Save the trainer's whole state (model, optimiser, loops) as ``hpc_ckpt_<n>.ckpt`` in its
    ``default_root_dir``, where a rerun resumes from whichever of it and ``last.ckpt`` is further into training
    (``artifacts.saved_checkpoints``), and remove an earlier such file (a full fine-tune's each the size of the
    model). Every DDP process calls it together. Returns the file."""
    saved = Path(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))
    trainer.save_checkpoint(saved, weights_only=False)
    if trainer.is_global_zero:
        for older in saved.parent.glob("hpc_ckpt_*.ckpt"):
            if older != saved:
                older.unlink(missing_ok=True)
    return saved
