"""The dtypes a run computes and stores in: what autocast computes in under a Lightning precision, frozen weights
stored in half precision, and the weight dtype for inference outside the Lightning loop."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig


def autocast_dtype(precision: Any) -> torch.dtype | None:
    """The dtype ``torch.autocast`` computes in under Lightning precision ``precision``: ``bfloat16`` for
    ``bf16-mixed``, ``float16`` for ``16-mixed``, None for any precision that is not mixed."""
    return {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "16-mixed": torch.float16, "16": torch.float16}.get(
        str(precision))


def trains_under_autocast(cfg: DictConfig) -> bool:
    """Whether ``trainer.precision`` is Lightning mixed precision (``bf16-mixed``, ``16-mixed``): the forward pass
    under ``torch.autocast``."""
    return autocast_dtype(cfg.trainer.get("precision", "32-true")) is not None


AUTOCAST_MATMUL_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def matmul_layer_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The floating-point weights and biases of ``model``'s ``AUTOCAST_MATMUL_LAYERS``, by state-dict name: the
    parameters autocast casts to its dtype at every use."""
    return {f"{prefix}.{name}" if prefix else name: p
            for prefix, layer in model.named_modules() if isinstance(layer, AUTOCAST_MATMUL_LAYERS)
            for name, p in layer.named_parameters(recurse=False) if p.is_floating_point()}


def store_frozen_weights(modules: Any, dtype: torch.dtype, matmul_layers_only: bool = False) -> None:
    """Store the frozen floating-point parameters of ``modules`` in ``dtype``, in place (the same ``Parameter``
    objects); trainable ones are left as they are. ``matmul_layers_only``: only ``matmul_layer_parameters``, which
    autocast casts to its dtype at every use anyway, so that under autocast in ``dtype`` every number computed stays
    the same."""
    for module in modules:
        parameters = matmul_layer_parameters(module).values() if matmul_layers_only else module.parameters()
        for parameter in parameters:
            if not parameter.requires_grad and parameter.is_floating_point():
                parameter.data = parameter.data.to(dtype)


def inference_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype:
    """The weight dtype for inference outside the Lightning loop (generation): ``bfloat16`` or ``float16`` on a GPU
    when ``trainer.precision`` trains in that type (``bf16-mixed``, ``16-mixed``, ``bf16-true`` ...), else ``float32``
    (always on a CPU, so CPU runs stay bit-identical)."""
    if device.type != "cuda":
        return torch.float32
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32
