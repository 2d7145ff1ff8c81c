"""``DefectClassifier``: a torchvision network trained with cross-entropy, measured with torchmetrics."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchvision.transforms.v2 import functional as TF

from stablesdg.training import step_seed


AUGMENT = "augment."  # the augmentation's keys in the module's state dict


class ChannelNormalize(nn.Module):
    """``(images - mean) / std`` per channel, computed as torchvision's ``v2.Normalize`` computes it, with the
    statistics held as buffers (not saved in state dicts). They move to the device once with the model, where
    ``v2.Normalize`` builds them from Python lists at every call: on a GPU a blocking copy, which waits for the
    GPU to finish its queued work."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(-1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.sub(self.mean).div(self.std)


class DefectClassifier(L.LightningModule):
    """Adam on cross-entropy; logs ``train/acc``, ``val/acc`` (per epoch) and test accuracy, per-class accuracy
    and the confusion matrix.

    Batches are images as float in [0, 1] or as uint8 (0–255), grey or RGB; on the device they become float RGB in
    [0, 1], as torchvision's ``to_dtype(scale=True)`` and ``RGB`` make them (``on_after_batch_transfer``), so a
    loader may hand over the decoded bytes. ``normalize`` applies to every forward pass. ``augment`` (a whole batch
    at a time) applies to training batches in fp32, also under mixed precision, and under
    ``torch.manual_seed(step_seed(seed, step, rank))``, which also drives dropout, so a run resumed from an epoch
    checkpoint repeats an uninterrupted one exactly.
    """

    def __init__(self, network: nn.Module, num_classes: int, lr: float, normalize: Callable | None = None,
                 augment: Callable | None = None, seed: int = 0):
        super().__init__()
        self.network = network
        self.lr = float(lr)
        self.normalize = normalize
        self.augment = augment
        self.seed = int(seed)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_per_class = MulticlassAccuracy(num_classes, average=None)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints hold training state only: the augmentation's buffers (its settings) are rebuilt from the
        config, and checkpoints written before the augmentation had any still resume."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(AUGMENT)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"].update({k: v for k, v in self.state_dict().items() if k.startswith(AUGMENT)})

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        if images.dtype == torch.uint8:
            images = TF.to_dtype(images, torch.float32, scale=True)
        if images.shape[1] == 1:
            images = TF.grayscale_to_rgb(images)
        return images, labels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(images) if self.normalize is not None else images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        torch.manual_seed(step_seed(self.seed, self.global_step, self.global_rank))
        if self.augment is not None:
            with torch.autocast(images.device.type, enabled=False):  # autocast would compute the rotations in bf16
                images = self.augment(images)
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        self.log("train/loss", loss)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.val_acc(self(images), labels)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def test_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.test_acc(logits, labels)
        self.test_per_class.update(logits, labels)
        self.test_confusion.update(logits, labels)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trained = [p for p in self.parameters() if p.requires_grad]  # not the augmentation's range
        return torch.optim.Adam(trained, lr=self.lr, fused=True)
