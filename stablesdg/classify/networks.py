"""The paper's classifiers as torchvision architectures: AlexNet, VGG, ResNet, SqueezeNet 1.1, DenseNet."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from stablesdg.choices import architecture_name
from stablesdg.errors import UserError, first_line
from stablesdg.state_dicts import read_state_dict
from stablesdg.weight_files import require_classifier_weights


def _replace_head(network: nn.Module, arch: str, num_classes: int) -> None:
    if arch in ("alexnet", "vgg"):
        network.classifier[-1] = nn.Linear(network.classifier[-1].in_features, num_classes)
    elif arch == "resnet":
        network.fc = nn.Linear(network.fc.in_features, num_classes)
    elif arch == "squeezenet":
        network.classifier[1] = nn.Conv2d(network.classifier[1].in_channels, num_classes, kernel_size=1)
    else:
        network.classifier = nn.Linear(network.classifier.in_features, num_classes)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(require_classifier_weights(path), "classifier.weights")


def torchvision_name(arch: str, depth: int | None = None) -> str:
    """The torchvision model that ``classifier.arch`` and ``classifier.depth`` name (``resnet``, 50: ``resnet50``),
    or a one-line ``UserError`` when there is none."""
    name = architecture_name(arch, depth)
    if not hasattr(torchvision.models, name):
        family = name.rstrip("0123456789")
        depths = sorted(int(model[len(family):]) for model in torchvision.models.list_models(module=torchvision.models)
                        if model.startswith(family) and model[len(family):].isdigit())
        raise UserError(f"torchvision has no {name} (classifier.depth={depth}); classifier={arch} comes in depths "
                        f"{', '.join(map(str, depths))}")
    return name


def build_classifier(arch: str, num_classes: int, depth: int | None = None, weights: str | None = None) -> nn.Module:
    """A torchvision ``arch`` network with a ``num_classes``-way head.

    Random initialisation by default; with ``weights`` (a local ImageNet state dict, ``.safetensors``
    or ``.pth``, read with ``weights_only=True``) the backbone starts from it and the head is new.
    """
    name = torchvision_name(arch, depth)
    if weights is None:
        return getattr(torchvision.models, name)(weights=None, num_classes=int(num_classes))
    network = getattr(torchvision.models, name)(weights=None)
    try:
        missing, unexpected = network.load_state_dict(_read_weights(Path(weights)), strict=False)
    except RuntimeError as err:  # tensors of other shapes, e.g. a head with other than ImageNet's 1,000 classes
        shapes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise UserError(f"classifier.weights={weights} does not fit {name} with ImageNet's 1000-class head: "
                        f"{shapes[0] if shapes else first_line(err)}") from err
    if missing or unexpected:
        raise UserError(f"classifier.weights={weights} does not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    _replace_head(network, arch, int(num_classes))
    return network
