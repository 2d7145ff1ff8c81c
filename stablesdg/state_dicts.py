"""Reading a weight file a user names (``classifier.weights``, ``stage.inception_weights``) as a state dict, safely:
safetensors, or a pickle through ``torch.load(weights_only=True)``, which runs no code from the file."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from stablesdg.errors import UserError, first_line


def read_state_dict(path: Path, setting: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` (``.safetensors``, else a ``torch.save`` pickle read with ``weights_only=True``); a
    one-line ``UserError`` naming ``setting`` when the file cannot be read, or holds more than tensors and plain
    containers (a pickle that would run code, or that is no PyTorch file at all)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable or unsafe file
        text = str(err)
        if "Weights only load failed" in text:  # torch's page of advice; what counts is the refusal's first sentence
            refusal = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            reason = ("not a state dict that torch.load(weights_only=True) reads: not a PyTorch file, or it holds "
                      "objects besides tensors, which are not unpickled since that could run code "
                      f"({refusal.group(1).strip().split('. ')[0].rstrip('.') if refusal else 'refused'})")
        else:
            reason = first_line(err)
        raise UserError(f"cannot read {setting}={path}: {reason}") from err
