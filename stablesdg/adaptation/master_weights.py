"""fp32 master copies of trainable layer weights that the model holds in autocast's dtype while it trains.

Under ``torch.autocast`` an fp32 trainable weight of a linear or convolution layer is cast to autocast's dtype once
per step, and its gradient cast back to fp32 once: two operators per tensor, about 700 per SD1.5 LoRA step (rank-1
adapters on 176 layers). ``MasterWeights`` stores those weights in autocast's dtype instead and keeps fp32 copies
for the optimiser: one batched copy moves the gradients to the copies, one moves the updated copies back. The model
sees exactly the values autocast would have cast, and the optimiser exactly the gradients autocast's cast would have
passed back, so training computes the same numbers with a few operators per step in place of two per tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from stablesdg.precision import matmul_layer_parameters


def autocast_cast_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable floating-point parameters of ``model``'s linear and convolution layers, by state-dict name:
    the ones autocast casts at every step."""
    return {name: p for name, p in matmul_layer_parameters(model).items() if p.requires_grad}


class MasterWeights:
    """fp32 masters of ``parameters`` (by name), which are stored in ``dtype`` from ``store()`` until ``restore()``.

    Between the two: ``take_gradients()`` after the backward pass moves the parameters' gradients to the masters
    (and clears them from the parameters); ``publish()`` after the optimiser's step copies the masters into the
    parameters. The optimiser updates the masters (``by_name()``).
    """

    def __init__(self, parameters: dict[str, nn.Parameter], dtype: torch.dtype):
        self.names = list(parameters)
        self.parameters = list(parameters.values())
        self.dtype = dtype
        self.master = [p.detach().clone().float() for p in self.parameters]
        for master in self.master:
            master.requires_grad_(True)
        self.gradients = [torch.zeros_like(m) for m in self.master]

    def by_name(self) -> dict[str, torch.Tensor]:
        """The masters by their parameters' names: what the optimiser updates and a checkpoint stores."""
        return dict(zip(self.names, self.master))

    def store(self) -> None:
        """Hold the parameters in ``dtype`` (the masters' values, rounded)."""
        for p, master in zip(self.parameters, self.master):
            p.data = master.detach().to(self.dtype)

    def take_gradients(self) -> None:
        """Give each master its parameter's gradient in fp32 (None where the parameter has none) and clear the
        parameters' gradients."""
        pairs = [(g, p.grad) for g, p in zip(self.gradients, self.parameters) if p.grad is not None]
        if pairs:
            torch._foreach_copy_([g for g, _ in pairs], [grad for _, grad in pairs])
        for master, gradient, p in zip(self.master, self.gradients, self.parameters):
            master.grad = gradient if p.grad is not None else None
            p.grad = None

    @torch.no_grad()
    def publish(self) -> None:
        """Copy the masters into the parameters (rounded to ``dtype``)."""
        torch._foreach_copy_(self.parameters, self.master)

    def restore(self) -> None:
        """Hold the parameters in fp32 again, with the masters' values exactly."""
        for p, master in zip(self.parameters, self.master):
            p.data = master.detach().clone()
            p.grad = None
