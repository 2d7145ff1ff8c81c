"""``stage=fid``: FID and KID between a category's generated images and its real images.

Both sets go through the same conversion (dataset resolution and mode, then the extractor's own
resize), real-image features are cached per category, split and extractor, and torchmetrics
computes the statistics. KID's subset size adapts to the number of real images.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from stablesdg.data import DefectDataModule, DefectImageDataset
from stablesdg.data.sources import ImageRecord, PathSource
from stablesdg.errors import UserError
from stablesdg.evaluation.features import build_feature_extractor, extract_features
from stablesdg.evaluation.fid import cached_features, fid_kid
from stablesdg.generated import noted_set_read
from stablesdg.loggers import log_run
from stablesdg.stages.checks import check_fid
from stablesdg.stages.inputs import MIN_IMAGES, scored_images
from stablesdg.stages.common import category_data, category_images
from stablesdg.stages.settings import require_split
from stablesdg.store_layout import cache_folder
from stablesdg.training import compute_device

log = logging.getLogger(__name__)


def real_images(cfg: DictConfig, dm: DefectDataModule, category: str) -> DefectImageDataset:
    """The category's real images in ``stage.real_split``, which generated images are scored against; a one-line
    ``UserError`` when that is not a split name or holds fewer than the 2 images FID needs."""
    split = require_split(cfg.stage, "real_split")
    real = category_images(dm, split, category, None, "stage.alpha")
    if len(real) < MIN_IMAGES:
        raise UserError(f"stage.real_split={split} holds only {len(real)} image of {category}; "
                        f"FID needs at least {MIN_IMAGES}")
    return real


def score_images(cfg: DictConfig, dm: DefectDataModule, category: str, files: list[Path]) -> dict[str, Any]:
    """FID/KID of ``files`` against the category's real images (``real_images``), by ``stage.features``
    (features computed on the GPU when ``trainer`` uses one)."""
    stage = cfg.stage
    real = real_images(cfg, dm, category)
    device = compute_device(cfg)
    extractor = build_feature_extractor(stage.features, stage.get("inception_weights"), int(stage.get("feature_seed", 0)))
    identity = {"features": stage.features, "seed": stage.get("feature_seed", 0), "split": stage.real_split,
                "images": [r.digest for r in real.records], **dm.read_as}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    cache = (cache_folder(cfg.paths.artifacts, dm.name, category)
             / f"fid-real-{stage.features}-{stage.real_split}-{key}.safetensors")
    real_features = cached_features(
        cache, lambda: extract_features(extractor, (real[i][0] for i in range(len(real))), device=device,
                                        desc=f"{stage.features} features of {category}, real", total=len(real)))
    label = dm.categories.abbreviations.index(category)
    fake = dm.images([ImageRecord(str(f), label, "") for f in files], PathSource())
    fake_features = extract_features(extractor, (fake[i][0] for i in range(len(fake))), device=device,
                                     desc=f"{stage.features} features of {category}, generated", total=len(fake))
    metrics = fid_kid(real_features, fake_features, seed=int(cfg.seed))
    metrics.update({"features": stage.features, "real_split": stage.real_split})
    return metrics


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Score the category's generated set (``stage.generated``: a variant name or a folder)."""
    check_fid(cfg)
    dm, category = category_data(cfg, "scores")
    real_images(cfg, dm, category)  # too few real images are named before the generated set is looked for
    files = scored_images(cfg, dm.categories, category)
    read = noted_set_read(cfg.stage.generated, cfg.variant, cfg.paths.artifacts, dm.name, dm.categories)
    metrics = {**score_images(cfg, dm, category, files), "generated": read}
    log.info("stage=fid: %s", describe_score(category, metrics))
    log_run(cfg, metrics)
    return metrics


def describe_score(category: str, metrics: dict[str, Any]) -> str:
    """One line for a log: the FID and KID in ``metrics`` (``score_images``'), what was compared, and for features
    other than the standard InceptionV3 that the numbers compare runs of this tool, not published FIDs."""
    line = (f"{category}, {metrics['n_fake']} generated images ({metrics['generated']}) against {metrics['n_real']} real "
            f"{metrics['real_split']} images: FID {metrics['fid']:.4g}, KID {metrics['kid_mean']:.4g} ± "
            f"{metrics['kid_std']:.3g}")
    if metrics["features"] != "inception":
        line += f" ({metrics['features']} features: they compare runs of this tool, not published FIDs)"
    return line
