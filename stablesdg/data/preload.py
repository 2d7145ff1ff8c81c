"""Decode a set of images once into memory, for training that reads the same images every epoch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import TensorDataset
from torchvision.transforms.v2 import functional as TF

from stablesdg.data.datamodule import DefectImageDataset
from stablesdg.progress import progress_bar


def preload_images(datasets: Sequence[DefectImageDataset], desc: str) -> TensorDataset:
    """Every image of ``datasets``, in order, decoded once: a ``TensorDataset`` of uint8 images
    ``N×C×size×size`` (0–255, the datasets' channels and size, which all must share) and int64 labels.

    An epoch then reads memory instead of decoding files, and a batch moves to the device as uint8 in the
    dataset's channels, 1/12 of the bytes of float RGB for a grey dataset; ``image_to_tensor`` of each image
    equals its entry here converted by torchvision's ``to_dtype(..., torch.float32, scale=True)``. Each dataset's
    own ``transform`` is not applied."""
    shapes = {(d.channels, d.size) for d in datasets}
    if len(shapes) > 1:
        raise ValueError(f"datasets to preload must share channels and size, got {sorted(shapes)}")
    channels, size = shapes.pop() if shapes else (1, 1)
    total = sum(len(d) for d in datasets)
    images = torch.empty(total, channels, size, size, dtype=torch.uint8)
    labels = torch.empty(total, dtype=torch.int64)
    position = 0
    with progress_bar(total=total, desc=desc, unit="image") as progress:
        for dataset in datasets:
            for index in range(len(dataset)):
                images[position] = TF.pil_to_tensor(dataset.load_image(index))
                labels[position] = dataset.records[index].label
                position += 1
                progress.update()
    return TensorDataset(images, labels)
