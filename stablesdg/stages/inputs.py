"""The checks that the finished stages a stage reads exist (``stage.inputs`` in its config), importable without
torch: the entry point runs them before the heavy libraries load, but ``stage=pipeline`` not before its first step,
whose earlier steps make them. Each names the command that makes what is missing, in one line. Also here: the
generated images ``stage=fid`` scores, which its check and its run both find."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from stablesdg import artifacts
from stablesdg.choices import sampled_model
from stablesdg.commands import shell_word
from stablesdg.data.categories import CategorySet
from stablesdg.errors import UserError
from stablesdg.generated import generated_images, reads_folder

MIN_IMAGES = 2  # FID's covariance needs at least 2 images per set


def ti_reader(cfg: DictConfig) -> str:
    """How a missing TI artifact's error names the stage that reads it (LoRA or full fine-tuning with
    ``stage.use_ti``)."""
    return f"stage={cfg.stage.name} (or set stage.use_ti=false)"


def adapter_reader(cfg: DictConfig) -> str:
    """How a missing adapter's error names ``stage=generate``'s ``stage.adapter``."""
    return f"stage.adapter={cfg.stage.adapter}"


def sampler_reader(cfg: DictConfig) -> str:
    """How a missing DCGAN or DDPM's error names ``stage=sample``'s ``stage.generator``."""
    return f"stage=sample stage.generator={cfg.stage.generator}"


def _named_classes(cfg: DictConfig) -> CategorySet | None:
    """The dataset's classes where its config names them, so that the category is already its folder's name (plan()
    made it so); None where only a scan of the data finds them (``dataset=folder``): its stages check at run time."""
    return CategorySet(cfg.dataset.classes) if cfg.dataset.get("classes") else None


def _finished_input(cfg: DictConfig, stage: str, variant: str, reader: str) -> None:
    if cfg.category is not None and _named_classes(cfg) is not None:
        artifacts.note_read(artifacts.require_stage_finished(cfg.paths.artifacts, cfg.dataset.name, cfg.category,
                                                             variant, stage, reader))


def require_adaptation_inputs(cfg: DictConfig) -> None:
    """``stage=lora|full`` with ``stage.use_ti``: the category's finished TI, else the one-line error naming the
    command that makes it."""
    if cfg.stage.get("use_ti"):
        _finished_input(cfg, "ti", cfg.variant, ti_reader(cfg))


def require_generation_inputs(cfg: DictConfig) -> None:
    """``stage=generate``: the finished adapter of ``stage.adapter`` (ti, lora or full; base needs none) in the
    variant ``stage.model_variant``."""
    if cfg.stage.adapter in ("ti", "lora", "full"):
        _finished_input(cfg, cfg.stage.adapter, cfg.stage.model_variant, adapter_reader(cfg))


def require_sampling_inputs(cfg: DictConfig) -> None:
    """``stage=sample``: the finished DCGAN or DDPM of ``stage.model_variant`` that ``stage.generator`` draws from."""
    _finished_input(cfg, sampled_model(cfg.stage.generator), cfg.stage.model_variant, sampler_reader(cfg))


def scored_images(cfg: DictConfig, categories: CategorySet, category: str) -> list[Path]:
    """The generated images of ``category`` that ``stage=fid`` scores: those of ``stage.generated`` (a variant name in
    the store, or a folder: of class sub-folders, or of that category's images), the first ``stage.max_images`` of
    them; a one-line ``UserError`` when the set cannot be found or holds fewer than the 2 images FID needs."""
    label = categories.abbreviations.index(category)
    files = generated_images(cfg.stage.generated, cfg.paths.artifacts, cfg.dataset.name, categories,
                             [label], flat_label=label).get(label, [])
    limit = cfg.stage.get("max_images")
    files = files[:limit] if limit is not None else files
    if len(files) < MIN_IMAGES:
        source = str(cfg.stage.generated)
        maker = "" if reads_folder(source, cfg.paths.artifacts, cfg.dataset.name, categories) else \
            f"; stage=generate {shell_word('category', category)} {shell_word('variant', source)} makes them"
        raise UserError(f"stage.generated={source} has {len(files)} images of {category}; "
                        f"FID needs at least {MIN_IMAGES}{maker}")
    return files


def require_scoring_inputs(cfg: DictConfig) -> None:
    """``stage=fid``: the category's generated set (``scored_images``), where the dataset config names its classes."""
    categories = _named_classes(cfg)
    if cfg.category is not None and categories is not None:
        scored_images(cfg, categories, cfg.category)


def require_composition_inputs(cfg: DictConfig) -> None:
    """``stage=classify`` with generated images (``stage.mode`` substitute or expand): the set ``stage.generated``
    names, where the dataset config names its classes."""
    categories = _named_classes(cfg)
    if cfg.stage.mode != "none" and categories is not None:
        generated_images(cfg.stage.generated, cfg.paths.artifacts, cfg.dataset.name, categories)


def require_export_inputs(cfg: DictConfig) -> None:
    """``stage=export``: the set ``stage.generated`` names, where the dataset config names its classes."""
    categories = _named_classes(cfg)
    if categories is not None:
        generated_images(cfg.stage.generated, cfg.paths.artifacts, cfg.dataset.name, categories)
