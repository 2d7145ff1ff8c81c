"""``stage=classify``: train a defect classifier on real (+ generated) images; keep the best epoch on validation.

Writes ``classifier.safetensors`` (the best-on-validation weights), ``confusion_matrix.png`` and
``result.json`` with test accuracy, best validation accuracy, per-class accuracy, the confusion
matrix and the training-set composition.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from kornia.augmentation import RandomHorizontalFlip, RandomRotation, RandomVerticalFlip
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from stablesdg.atomic_files import save_safetensors_atomic
from stablesdg.classify.composition import TrainingSet, compose_training_set
from stablesdg.classify.module import ChannelNormalize, DefectClassifier
from stablesdg.classify.networks import build_classifier
from stablesdg.data import DefectDataModule
from stablesdg.data.preload import preload_images
from stablesdg.data.sources import PathSource
from stablesdg.data.splits import empty_split_advice
from stablesdg.errors import RaisedOnEveryRank, UserError
from stablesdg.generated import generated_images, how_to_make_more, noted_set_read
from stablesdg.loggers import build_logger
from stablesdg.once import warn_once
from stablesdg.plots import heatmap_png
from stablesdg.provenance import files_identity
from stablesdg.stages.checks import check_classification
from stablesdg.training import (
    CHECKPOINT_DIR, build_trainer, compute_device, log_interval, remove_checkpoints, require_finished,
    require_finite_weights, resume_checkpoint, run_fit,
)

log = logging.getLogger(__name__)

WEIGHTS_FILE = "classifier.safetensors"
CONFUSION_FILE = "confusion_matrix.png"


def augmentation() -> nn.Sequential:
    """The paper's training augmentation of a batch of images (B, C, H, W): each image its own random rotation
    within ±10° (nearest neighbour, zeros outside, as torchvision's ``RandomRotation``), and its own random horizontal
    and vertical flip (p = 0.5 each), drawn from torch's seeded RNG on the device the module is moved to.

    kornia augments the whole batch with one set of kernels and reads no value back, so on a GPU no step waits for
    the device; torchvision's transforms work one image at a time, with three blocking copies to the device per
    image. The rotation's range is a parameter (not trained) because kornia's generator moves each batch's angles
    to the device and dtype of its range: a float range would send them from the GPU to the host at every step,
    a copy the host waits for, where a parameter moves with the module."""
    degrees = nn.Parameter(torch.tensor([-10.0, 10.0]), requires_grad=False)
    return nn.Sequential(RandomRotation(degrees, p=1.0, resample="nearest"), RandomHorizontalFlip(),
                         RandomVerticalFlip())


def normalization(pretrained: bool) -> ChannelNormalize:
    """ImageNet statistics for ImageNet-initialised networks, else mean = std = 0.5 per channel."""
    mean, std = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if pretrained else ([0.5] * 3, [0.5] * 3)
    return ChannelNormalize(mean, std)


def image_sets(dm: DefectDataModule, composition: TrainingSet, preload: bool) -> tuple[Dataset, Dataset, Dataset]:
    """The training (real then generated), validation and test images, in the dataset's channels. With ``preload``
    each set is decoded once into memory as uint8 (``preload_images``), else decoded at every epoch as float; the
    classifier sees the same float RGB values either way (``DefectClassifier.on_after_batch_transfer``)."""
    train = [dm.images(composition.real), dm.images(composition.generated, PathSource())]
    val, test = dm.dataset("val"), dm.dataset("test")
    if preload:
        sets = [preload_images(parts, f"decoding the {name} images")
                for name, parts in (("training", train), ("validation", [val]), ("test", [test]))]
        held = sum(s.tensors[0].numel() for s in sets)
        log.info("stage=classify: %d images decoded once into memory (%.1f MB; stage.preload=false decodes them every "
                 "epoch instead)", sum(len(s) for s in sets), held / 1e6)
        return sets[0], sets[1], sets[2]
    return ConcatDataset(train), val, test


def require_held_out_images(dm: DefectDataModule) -> None:
    """Raise a ``UserError`` naming ``dataset.split.fractions`` unless the validation split (which picks the best
    epoch) and the test split (which scores it) each hold at least one image."""
    empty = [name for name in ("val", "test") if not dm.select(name)]
    if empty:
        sizes = Counter(dm.categories.abbreviations[r.label] for r in dm.records)
        splits = " and ".join(empty) + (" splits" if len(empty) > 1 else " split")
        raise UserError(f"stage=classify needs validation and test images, but dataset.split.fractions="
                        f"{dm.split_fractions} leaves the {splits} empty; "
                        + empty_split_advice(dm.split_fractions, sizes, empty))


def warn_of_classes_not_held_out(dm: DefectDataModule) -> None:
    """A warning, once per process, for each class with no validation or no test image (a class of a few images: 0.1
    of 4 rounds to none): the best epoch is then picked without it, or its accuracy is not measured (null in
    ``per_class_accuracy``, where 0 would read as a class never recognised)."""
    sizes = Counter(dm.categories.abbreviations[r.label] for r in dm.records)
    held_out = {name: dm.class_counts(name) for name in ("val", "test")}
    words = {"val": "validation", "test": "test"}
    effects = {"val": "the best epoch is picked without it",
               "test": "its accuracy is not measured (null in per_class_accuracy)"}
    for abbreviation in dm.categories.abbreviations:
        empty = [name for name in ("val", "test") if not held_out[name][abbreviation]]
        if empty:
            warn_once(log, "stage=classify: class %s has no %s images, so %s; %s", abbreviation,
                      " or ".join(words[name] for name in empty), " and ".join(effects[name] for name in empty),
                      empty_split_advice(dm.split_fractions, {abbreviation: sizes[abbreviation]}, empty))


def per_class_accuracy(names: list[str], accuracy: torch.Tensor, confusion: torch.Tensor) -> dict[str, float | None]:
    """Each class's test accuracy by name; None for a class with no test image (its accuracy is unknown, not 0)."""
    tested = confusion.sum(dim=1)
    return {name: float(value) if int(count) else None for name, value, count in zip(names, accuracy, tested)}


def loader_settings(cfg: DictConfig) -> dict[str, Any]:
    """The classifier's data loaders' settings: ``stage.batch_size``, ``stage.num_workers`` and, where training runs
    on a GPU, pinned batches, which Lightning copies to the GPU without the host waiting for the GPU's earlier work."""
    return {"batch_size": int(cfg.stage.batch_size), "num_workers": int(cfg.stage.num_workers),
            "pin_memory": compute_device(cfg).type == "cuda"}


def data_loaders(cfg: DictConfig, trainer: L.Trainer, train_set: Dataset, val_set: Dataset,
                 test_set: Dataset) -> tuple[DataLoader, DataLoader, DataLoader]:
    """The training, validation and test loaders (``loader_settings``). Each of ``trainer``'s processes trains on its
    own share of the training images, shuffled anew each epoch from ``seed`` and the epoch alone, so a run resumed
    from an epoch checkpoint sees an uninterrupted run's order. Under DDP each process also validates and tests its
    own share of those images, none repeated (``evaluated_once_each``)."""
    loader = loader_settings(cfg)
    world, rank = trainer.world_size, trainer.global_rank
    shuffled = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=int(cfg.seed))
    return (DataLoader(train_set, sampler=shuffled, **loader),
            DataLoader(val_set, sampler=evaluated_once_each(val_set, world, rank), **loader),
            DataLoader(test_set, sampler=evaluated_once_each(test_set, world, rank), **loader))


def evaluated_once_each(images: Dataset, world: int, rank: int) -> UnrepeatedDistributedSampler | None:
    """Process ``rank``'s share of ``images`` under DDP's ``world`` processes, none repeated, where each process gets
    one at least (Lightning's ``UnrepeatedDistributedSampler``: the model evaluates without gradients, where DDP syncs
    nothing after its first batch, so shares may differ by one image); else None: one process, or fewer images than
    processes, which Lightning shares out with repeats (``note_uneven_evaluation``)."""
    if not 1 < world <= len(images):
        return None
    return UnrepeatedDistributedSampler(images, num_replicas=world, rank=rank, shuffle=False)


def note_uneven_evaluation(trainer: L.Trainer, val_set: Dataset, test_set: Dataset) -> None:
    """A warning, from the first process, where the validation or test images are fewer than ``trainer``'s processes,
    so Lightning's ``DistributedSampler`` gives some of them to two processes and they count twice."""
    world = trainer.world_size
    if not trainer.is_global_zero:
        return
    for split, images in (("validation", val_set), ("test", test_set)):
        twice = -len(images) % world if len(images) < world else 0
        if twice:
            log.warning("stage=classify: the %d %s images are fewer than the %d processes, so Lightning's "
                        "DistributedSampler gives some to two processes and the %s accuracy counts %d image%s twice; "
                        "trainer.devices=1 counts each once", len(images), split, world, split, twice,
                        "" if twice == 1 else "s")


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """Train, pick the best epoch on validation, test it; return the metrics (None on non-zero DDP ranks)."""
    stage = cfg.stage
    check_classification(cfg)
    dm: DefectDataModule = instantiate(cfg.dataset)
    dm.setup()
    if len(dm.categories) < 2:
        raise UserError(f"stage=classify needs at least 2 classes; dataset {dm.name} has only "
                        f"{', '.join(dm.categories.abbreviations)}")
    require_held_out_images(dm)
    warn_of_classes_not_held_out(dm)
    # before any image is decoded: a classifier.weights file that does not fit is named at once
    network = build_classifier(cfg.classifier.arch, len(dm.categories), cfg.classifier.depth, cfg.classifier.weights)
    generated = read = None
    if stage.mode != "none":
        generated = generated_images(stage.generated, cfg.paths.artifacts, dm.name, dm.categories)
        read = noted_set_read(stage.generated, cfg.variant, cfg.paths.artifacts, dm.name, dm.categories)
    composition = compose_training_set(
        dm, float(stage.alpha), stage.mode, generated, int(stage.extra_per_class),
        lambda category, have, wanted: how_to_make_more(stage.generated, cfg.paths.artifacts, dm.name, category, have,
                                                        wanted))
    if composition.made_beyond_alpha:
        log.info("stage=classify: %d of its %d generated images were made (img2img) from real training images "
                 "outside its α=%g subset; for generated images that know only the subset, adapt and generate with "
                 "stage.alpha=%g too", composition.made_beyond_alpha, len(composition.generated), float(stage.alpha),
                 float(stage.alpha))
    train_set, val_set, test_set = image_sets(dm, composition, bool(stage.preload))

    module = DefectClassifier(network, len(dm.categories), stage.lr, normalize=normalization(cfg.classifier.weights is not None),
                              augment=augmentation(), seed=int(cfg.seed))
    # a checkpoint trained on a generated set since remade is not resumed
    ckpt_path = resume_checkpoint(out_dir, cfg, files_identity([r.key for r in composition.generated]))
    best = ModelCheckpoint(dirpath=out_dir / CHECKPOINT_DIR, monitor="val/acc", mode="max", save_top_k=1,
                           filename="best")
    # Lightning ≥ 2.6 writes save_last's file only in an epoch whose score enters the top k; a resumed run would
    # go back to the best epoch. This one is written every epoch, after ``best`` (its state included).
    latest = ModelCheckpoint(dirpath=out_dir / CHECKPOINT_DIR, save_top_k=1, filename="last",
                             enable_version_counter=False)
    logger = build_logger(cfg)
    trainer: L.Trainer = build_trainer(cfg, max_epochs=int(stage.max_epochs), default_root_dir=out_dir / CHECKPOINT_DIR,
                                       logger=logger or False, callbacks=[best, latest], num_sanity_val_steps=0)
    train_loader, val_loader, test_loader = data_loaders(cfg, trainer, train_set, val_set, test_set)
    note_uneven_evaluation(trainer, val_set, test_set)
    trainer.log_every_n_steps = log_interval(cfg, len(train_loader))  # this process's share of an epoch
    run_fit(trainer, cfg, module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True,
            resumes_mid_epoch=False)  # its batches come from a sampler a mid-epoch checkpoint does not hold
    # the epochs trained; current_epoch is one fewer where a resumed run stopped before its first step
    trained = trainer.fit_loop.epoch_progress.current.processed
    require_finished(trainer, cfg, trainer.current_epoch >= int(stage.max_epochs),
                     f"epoch {trained} of {stage.max_epochs}")
    if not best.best_model_path:
        raise RaisedOnEveryRank("stage=classify validated none of its epochs, so it has no best epoch to test; drop "
                                "the trainer settings that skip validation (trainer.limit_val_batches, "
                                "trainer.check_val_every_n_epoch, trainer.val_check_interval)")
    tested = trainer.test(module, test_loader, ckpt_path=best.best_model_path, weights_only=True, verbose=False)
    require_finite_weights(module, cfg, f"the best epoch on validation ({best.best_model_path})")
    # under DDP every process takes part in gathering the test counts
    confusion, per_class = module.test_confusion.compute().cpu(), module.test_per_class.compute().cpu()
    if not trainer.is_global_zero:
        return None

    names = dm.categories.abbreviations
    save_safetensors_atomic(out_dir / WEIGHTS_FILE, module.network.state_dict())
    heatmap_png(confusion.numpy(), names, names, out_dir / CONFUSION_FILE, xlabel="predicted", ylabel="true", fmt="{:.0f}")
    best_epoch = int(torch.load(best.best_model_path, map_location="cpu", weights_only=True)["epoch"])
    metrics = {
        "test_accuracy": float(tested[0]["test/acc"]),
        "test_images": len(test_set),  # one image moves the accuracy by 1/test_images
        "best_val_accuracy": float(best.best_model_score),
        "best_epoch": best_epoch,
        "epochs": int(stage.max_epochs),
        "steps": int(trainer.global_step),
        "world_size": int(trainer.world_size),
        "per_class_accuracy": per_class_accuracy(names, per_class, confusion),
        "confusion_matrix": confusion.tolist(),
        "composition": composition.counts,
        "train_images": {"real": len(composition.real), "generated": len(composition.generated)},
        "generated_made_beyond_alpha": composition.made_beyond_alpha,
        "classifier": cfg.classifier.name,
        "alpha": float(stage.alpha),
        "mode": stage.mode,
        "generated": read,  # the generated set read (a variant name, or a folder's path); None with stage.mode=none
    }
    if hasattr(logger, "log_table"):
        logger.log_table(key="confusion_matrix", columns=["true \\ predicted", *names],
                         data=[[n, *row] for n, row in zip(names, confusion.tolist())])
        logger.log_image(key="confusion_matrix_png", images=[str(out_dir / CONFUSION_FILE)])
    remove_checkpoints(out_dir, cfg)
    log.info("stage=classify: %s on %d real + %d generated images: test accuracy %.4f on %d test images with epoch %d "
             "of %d (the best on validation, %.4f); per class %s", cfg.classifier.name, len(composition.real),
             len(composition.generated), metrics["test_accuracy"], metrics["test_images"], best_epoch + 1,
             metrics["epochs"], metrics["best_val_accuracy"],
             ", ".join(f"{name} {'–' if value is None else f'{value:.3f}'}"
                       for name, value in metrics["per_class_accuracy"].items()))
    return metrics
