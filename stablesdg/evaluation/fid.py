"""FID and KID between two feature sets, computed by torchmetrics, with real-image features cached per category.

Features are extracted once (``features.py``) and fed to torchmetrics through an identity
"extractor", so the cached real-image features of a category are reused by every job of a sweep.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from stablesdg.atomic_files import cached_tensor
from stablesdg.errors import UserError

KID_MAX_SUBSET = 1000


class PrecomputedFeatures(nn.Module):
    """Passes already-extracted ``N×d`` features through to torchmetrics."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def kid_subset_size(n_real: int, n_fake: int) -> int:
    """KID's subset size: 1,000 (the usual), or fewer when either set is smaller."""
    return max(2, min(KID_MAX_SUBSET, n_real, n_fake))


def fid_kid(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, kid_subsets: int = 100) -> dict[str, float]:
    """``{fid, kid_mean, kid_std, kid_subset_size, n_real, n_fake}`` of two float64 feature matrices."""
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise UserError(f"FID needs at least 2 images per set, got {real.shape[0]} real and {fake.shape[0]} generated")
    identity = PrecomputedFeatures(real.shape[1])
    fid = FrechetInceptionDistance(feature=identity).set_dtype(torch.float64)
    subset = kid_subset_size(real.shape[0], fake.shape[0])
    with warnings.catch_warnings():  # its notice that it buffers every feature: these are the features, already held
        warnings.filterwarnings("ignore", message=r".*will save all extracted features in buffer")
        kid = KernelInceptionDistance(feature=identity, subsets=kid_subsets, subset_size=subset)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # KID draws random subsets
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "kid_subset_size": subset, "n_real": int(real.shape[0]), "n_fake": int(fake.shape[0])}


def cached_features(path: Path, compute) -> torch.Tensor:
    """Features stored at ``path``, or ``compute()`` saved there first (concurrent jobs compute once)."""
    return cached_tensor(path, "features", compute, what="feature cache")
