"""How the training stages write Lightning checkpoints: whole or not at all, beside where they go.

Lightning's own writer (``TorchCheckpointIO`` through fsspec's local transaction) stages each checkpoint in the
system's temporary folder, mode 0600, and then moves it: a full fine-tune's gigabytes must fit in ``/tmp`` (often
small on a cluster node), a stop during the move across disks leaves a truncated file, and a group sharing a store
cannot read a colleague's checkpoint to resume it.
"""

from __future__ import annotations

from typing import Any

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
