"""Each stage's own settings checks (``stage.checks`` in its config), importable without torch: the entry point runs
them before the heavy libraries load, and ``stage=pipeline`` runs every step's before its first step. Each refuses a
bad setting with a one-line ``UserError`` and reads no training data and builds no model. Also here: the strength and
guidance that ``stage=generate`` resolves for a category, which its checks need. The checks that the finished stages
a stage reads exist are in ``stablesdg.stages.inputs``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from stablesdg import artifacts
from stablesdg.choices import (
    ADAPTERS, IMAGE_EXTENSIONS, INITS, SAMPLERS, architecture_name, require_extractor, require_mode, require_scheduler,
)
from stablesdg.commands import shell_word
from stablesdg.data.categories import CategorySet
from stablesdg.data.settings import require_outside_dataset
from stablesdg.errors import UserError, first_line, is_integer, is_number, not_a_file, require_folder_setting
from stablesdg.generated import EXPORT_MARKER, flat_folder_images
from stablesdg.image_files import image_files
from stablesdg.stages.inputs import MIN_IMAGES
from stablesdg.stages.settings import (
    fill_prompt, require_category, require_every_step_run, require_model_settings, require_non_negative,
    require_positive, require_positive_number, require_split, require_validated_and_tested,
)
from stablesdg.store_layout import TUNED_FILE, sweep_folder
from stablesdg.sweeps import METRICS
from stablesdg.weight_files import require_classifier_weights


def check_adaptation(cfg: DictConfig) -> None:
    """The settings of ``stage=ti|lora|full`` that a one-line ``UserError`` refuses before any image is read or model
    built: the category, the model's resolution and compile mode, the counts, the learning rate, the prompt template,
    LoRA's rank and DreamBooth's prior preservation."""
    require_category(cfg, "adapts")
    require_model_settings(cfg)
    stage = cfg.stage
    require_positive(stage, ("max_steps", "batch_size", "checkpoint_every"))
    require_every_step_run(cfg)
    require_non_negative(stage, ("validation_every", "validation_images"))
    if stage.validation_every and stage.validation_images:
        require_positive(stage, ("validation_steps",))
    require_positive_number(stage, ("lr",))
    fill_prompt(stage.prompt, "x", "stage.prompt")
    if "rank" in stage:
        require_positive(stage, ("rank",))
    if stage.get("prior_images"):
        require_positive_number(stage, ("prior_loss_weight",))  # a negative weight would push away from the prior
        if stage.prior_images == "auto":
            require_positive(stage, ("num_prior_images", "prior_steps"))
        else:
            prior_image_files(stage.prior_images)


def prior_image_files(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (``stage.prior_images``), sorted; a one-line ``UserError`` when it is not a
    folder or holds none."""
    if not Path(folder).is_dir():
        raise UserError(f"stage.prior_images={folder} is not a folder; give a folder of class images, "
                        "or stage.prior_images=auto to make them")
    files = image_files(folder)
    if not files:
        raise UserError(f"stage.prior_images={folder} holds no images")
    return files


EXAMPLE = "{strength: 0.5, guidance_scale: 5.0}"  # a category's generation settings, as the error messages show them


def read_tuned(path: Path) -> dict[str, Any]:
    """The per-category settings of a ``tuned_generation.yaml`` (``{category: {strength, guidance_scale}}``), or a
    one-line ``UserError`` when ``path`` holds anything else."""
    try:
        tuned = OmegaConf.to_container(OmegaConf.load(path)) or {}
    except Exception as err:  # YAML syntax, or not text at all
        raise UserError(f"stage.tuned={path} is not readable YAML ({first_line(err)})") from err
    if not isinstance(tuned, dict) or not all(isinstance(v, dict) for v in tuned.values()):
        raise UserError(f"stage.tuned={path} must map each category to its settings, e.g. "
                        f"Pa: {EXAMPLE} (the sweep aggregation writes it)")
    return tuned


def tuned_entry(path: Path, category: str) -> dict[str, Any]:
    """The settings the ``tuned_generation.yaml`` at ``path`` gives ``category`` ({} where it gives none), or
    ``read_tuned``'s one-line ``UserError``."""
    return read_tuned(path).get(category) or {}


GENERATION_KEYS = ("strength", "guidance_scale")  # what stage=generate looks up where the command gives none
SYMBOLS = {"strength": "s", "guidance_scale": "ω"}  # the paper's names for them


def first_given(sources: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, tuple[str, Any]]:
    """For each of ``GENERATION_KEYS``, the first of ``sources`` (name, values), in order, that gives it a value:
    ``{key: (name, value)}``; a key none gives is left out. The order ``resolve_settings`` looks them up in: the
    stage's own settings, the tuned file's entry, the generation table's entry, its fallback."""
    given: dict[str, tuple[str, Any]] = {}
    for key in GENERATION_KEYS:
        found = next(((name, values[key]) for name, values in sources if values.get(key) is not None), None)
        if found is not None:
            given[key] = found
    return given


def resolve_settings(cfg: DictConfig, category: str) -> dict[str, Any]:
    """``strength`` and ``guidance_scale``: explicit stage values, else a tuned file, else the dataset's Table I entry."""
    table = cfg.get("generation") or {}
    tuned = {}
    if cfg.stage.get("tuned"):
        path = Path(cfg.stage.tuned)
        if not path.is_file():
            raise UserError(f"stage.tuned={path} {not_a_file(path)} (the sweep aggregation writes it)")
        tuned = tuned_entry(path, category)
    entries = table.get("categories") or {}
    if not isinstance(entries, Mapping):
        raise UserError(f"generation.categories must map each category to its settings, e.g. {{Pa: {EXAMPLE}}}, "
                        f"got {entries!r}")
    paper, fallback = entries.get(category) or {}, table.get("fallback") or {}
    for where, values in ((f"generation.categories.{category}", paper), ("generation.fallback", fallback)):
        if not isinstance(values, Mapping):
            raise UserError(f"{where} must map strength and guidance_scale to numbers, e.g. {EXAMPLE}, got {values!r}")
    given = first_given((("config", cfg.stage), ("tuned", tuned), ("table", paper), ("fallback", fallback)))
    settings = {}
    for key in GENERATION_KEYS:
        if key not in given:
            raise UserError(f"no stage.{key} given and no default for {category} in conf/generation/")
        source, value = given[key]
        if not is_number(value):
            where = {"config": f"stage.{key}", "tuned": f"{category}.{key} in stage.tuned={cfg.stage.tuned}",
                     "table": f"generation.categories.{category}.{key}", "fallback": f"generation.fallback.{key}"}
            raise UserError(f"{where[source]} must be a number, got {value!r}")
        settings[key], settings[f"{key}_source"] = float(value), source
    return settings


def sweep_choice_not_used(cfg: DictConfig, category: str) -> tuple[dict[str, float], dict[str, float], Path] | None:
    """Where ``cfg``'s ``stage=generate`` makes ``category``'s set at an s or ω of the generation table
    (``conf/generation/``) while the sweep of ``cfg.variant`` chose another (the ``tuned_generation.yaml`` it left in
    the store): those of ``strength`` and ``guidance_scale`` the run takes from the table, ``{key: value}``, the values
    the sweep chose for them and the sweep's file; else None, also where that file or a setting is refused (the run
    then says so in its own words)."""
    tuned_file = sweep_folder(cfg.paths.artifacts, cfg.dataset.name, cfg.variant) / TUNED_FILE
    try:
        chosen = tuned_entry(tuned_file, category) if tuned_file.is_file() else {}
        used = resolve_settings(cfg, category)
    except UserError:
        return None
    differing = [key for key in GENERATION_KEYS if used[f"{key}_source"] in ("table", "fallback")
                 and is_number(chosen.get(key)) and float(chosen[key]) != used[key]]
    if not differing:
        return None
    return {key: used[key] for key in differing}, {key: float(chosen[key]) for key in differing}, tuned_file


def generation_values(values: Mapping[str, float]) -> str:
    """``{"strength": 0.5, "guidance_scale": 5.0}`` in words: ``s=0.5, ω=5``."""
    return ", ".join(f"{SYMBOLS[key]}={values[key]:g}" for key in GENERATION_KEYS if key in values)


def check_generation_settings(stage: DictConfig, strength: float, guidance: float) -> int:
    """``stage=generate``'s sampling settings at ``strength`` and ``guidance``, each refused in one line; returns the
    number of denoising steps they give."""
    require_positive(stage, ("num_images", "num_inference_steps", "batch_size"))
    require_non_negative(stage, ("grid_images",))
    require_split(stage, "source_split")
    require_scheduler(stage.scheduler)
    if stage.init not in INITS:
        raise UserError(f"stage.init must be one of {INITS}, got {stage.init!r}")
    if stage.adapter not in ADAPTERS:
        raise UserError(f"stage.adapter must be one of {ADAPTERS}, got {stage.adapter!r}")
    artifacts.require_directory_name("stage.model_variant", stage.model_variant)
    if stage.prompt is None:
        fill_prompt(stage.prompt_template, "x", "stage.prompt_template")
    if stage.score:
        check_scoring_settings(stage)
        require_enough_to_score(stage, "num_images")
    objective = stage.get("objective")
    if objective is not None:
        if objective not in METRICS:
            raise UserError(f"stage.objective must be one of {', '.join(METRICS)} (or null), got {objective!r}")
        if not stage.score:
            raise UserError(f"stage.objective={objective} needs stage.score=true: the set's {objective} is what the "
                            "command returns to the sweeper")
    if not 0 <= guidance < math.inf:  # nan or inf would make every image nan, written as black
        raise UserError(f"stage.guidance_scale must be a finite number >= 0, got {guidance}")
    if stage.init == "noise":
        if stage.get("strength") is not None and float(stage.strength) != 1.0:  # a sweep over it: identical sets
            raise UserError(f"stage.strength={stage.strength} does nothing with stage.init=noise: text-to-image starts "
                            "from pure noise (strength 1); drop stage.strength, or set stage.init=image for img2img "
                            "from real images")
        for key, unread in (("source_split", "train"), ("alpha", None)):  # which real images img2img starts from
            if stage.get(key, unread) != unread:
                raise UserError(f"stage.{key}={stage[key]} does nothing with stage.init=noise: text-to-image starts "
                                f"from no real image; drop stage.{key}, or set stage.init=image for img2img")
        return int(stage.num_inference_steps)
    if not 0.0 < strength <= 1.0:
        raise UserError(f"stage.strength must be in (0, 1], got {strength}")
    effective = int(int(stage.num_inference_steps) * strength)
    if effective < 1:
        raise UserError(f"stage.num_inference_steps={stage.num_inference_steps} x stage.strength={strength} gives "
                        f"{effective} denoising steps; raise one of them")
    return effective


def check_generation(cfg: DictConfig) -> None:
    """The category and the model's settings, a ``stage.model_variant`` that ``stage.adapter=base`` would not read,
    then ``check_generation_settings`` at the strength and guidance ``resolve_settings`` gives for ``cfg.category``
    (an abbreviation; a sweep's own points are checked one by one)."""
    require_category(cfg, "makes")
    require_model_settings(cfg)
    if cfg.stage.adapter == "base" and cfg.stage.model_variant != cfg.variant:
        raise UserError(f"stage.model_variant={cfg.stage.model_variant} does nothing with stage.adapter=base: the base "
                        "model loads no adapter; drop stage.model_variant, or choose the adapter it names "
                        "(stage.adapter=lora, ti or full)")
    settings = resolve_settings(cfg, cfg.category)
    check_generation_settings(cfg.stage, settings["strength"], settings["guidance_scale"])


def require_enough_to_score(stage: DictConfig, key: str) -> None:
    """A one-line ``UserError`` when ``stage[key]``, a number of generated images to score, is below the 2 that FID
    needs (the images would be made, or read, before the score failed)."""
    if stage[key] < MIN_IMAGES:
        raise UserError(f"stage.{key}={stage[key]} leaves FID fewer than the {MIN_IMAGES} generated images it needs")


def check_scoring_settings(stage: DictConfig) -> None:
    """A one-line ``UserError`` for an unknown ``stage.features``, a ``stage.real_split`` that names no split, or,
    for ``stage.features=inception``, no weights file where ``stage.inception_weights`` (or torch's hub cache) says
    (found before ``stage=generate stage.score=true`` makes a single image)."""
    require_extractor(stage.features)
    require_split(stage, "real_split")
    if stage.features == "inception":  # torch says where its hub cache is: a second more, for this setting only
        from stablesdg.evaluation.features import inception_weights_path

        inception_weights_path(stage.get("inception_weights"))


def check_fid(cfg: DictConfig) -> None:
    """``stage=fid``'s checks that need no data: the category, the scoring settings and ``stage.max_images``."""
    require_category(cfg, "scores")
    check_scoring_settings(cfg.stage)
    if cfg.stage.get("max_images") is not None:
        require_positive(cfg.stage, ("max_images",))
        require_enough_to_score(cfg.stage, "max_images")


def check_classification(cfg: DictConfig) -> None:
    """``stage=classify``'s settings, refused in one line before any image is read: no category, the counts, the
    learning rate, α, the mode (with the generated set, to expand the count it needs, and to substitute an α below 1,
    where there is something to substitute), the classifier (a ``classifier.depth`` is looked up in torchvision, a
    few seconds), the file of its ``classifier.weights``, and trainer settings that would leave it no validation or
    test."""
    stage = cfg.stage
    if cfg.category is not None:  # its artifact would land under that category, where no report looks for it
        raise UserError(f"stage=classify trains on every class of the dataset; drop category={cfg.category}")
    require_positive(stage, ("max_epochs", "batch_size"))
    require_non_negative(stage, ("num_workers",))
    require_validated_and_tested(cfg)
    require_positive_number(stage, ("lr",))
    if not 0.0 < float(stage.alpha) <= 1.0:
        raise UserError(f"stage.alpha must be in (0, 1], got {stage.alpha}")
    require_mode(stage.mode)
    if stage.mode != "none" and not stage.generated:
        raise UserError(f"stage.mode={stage.mode} needs stage.generated=<variant name of a generated set, or a folder>")
    if stage.mode == "substitute" and float(stage.alpha) == 1.0:
        raise UserError("stage.mode=substitute at stage.alpha=1.0 substitutes nothing: it tops each class up to its "
                        "full real count, which every real image already fills; lower stage.alpha (the paper's 0.8, "
                        "0.6, 0.4), or add generated images with stage.mode=expand")
    if stage.mode == "expand":
        require_positive(stage, ("extra_per_class",))
    architecture_name(cfg.classifier.arch, cfg.classifier.depth)
    if cfg.classifier.depth is not None:  # whether torchvision has that depth is torchvision's to say
        from stablesdg.classify.networks import torchvision_name

        torchvision_name(cfg.classifier.arch, cfg.classifier.depth)
    if cfg.classifier.get("weights"):
        require_classifier_weights(cfg.classifier.weights)


def check_dcgan(cfg: DictConfig) -> None:
    """``stage=dcgan``'s settings, refused in one line before any image is read: the category, counts, learning rate,
    resolution."""
    require_category(cfg, "works on")
    stage = cfg.stage
    require_positive(stage, ("max_steps", "batch_size", "checkpoint_every", "latent_dim", "width"))
    require_every_step_run(cfg)
    require_positive_number(stage, ("lr",))
    if not is_number(stage.resolution) or stage.resolution not in (64, 128):
        raise UserError(f"stage.resolution must be 64 or 128 for DCGAN, got {stage.resolution}")
    if cfg.trainer.get("gradient_clip_val"):  # 0 and null mean no clipping
        raise UserError("stage=dcgan steps its generator and discriminator optimisers itself, which Lightning's "
                        f"clipping does not support: drop trainer.gradient_clip_val={cfg.trainer.gradient_clip_val}")


def require_unet_shape(stage: DictConfig) -> None:
    """A one-line ``UserError`` unless ``stage.widths`` is a list of positive integers that ``build_unet`` can use at
    ``stage.resolution``: each a multiple of its GroupNorm group count (min(32, first width)), and the resolution
    divisible by 2 per downsampling (len(widths) - 1 of them)."""
    widths = stage.widths
    if (not isinstance(widths, ListConfig) or not widths
            or any(not is_integer(w) or w < 1 for w in widths)):
        raise UserError(f"stage.widths must be a list of positive integers (the UNet's channels per level), got {widths}")
    groups = min(32, widths[0])
    if any(w % groups for w in widths):
        raise UserError(f"stage.widths={list(widths)}: each must be a multiple of {groups} "
                        "(GroupNorm groups: the first width, at most 32)")
    if int(stage.resolution) % 2 ** (len(widths) - 1):
        raise UserError(f"stage.resolution={stage.resolution} must be divisible by {2 ** (len(widths) - 1)} "
                        f"(the UNet halves it {len(widths) - 1} times for stage.widths={list(widths)})")


def check_ddpm(cfg: DictConfig) -> None:
    """``stage=ddpm``'s settings, refused in one line before any image is read: the category, counts, learning rate,
    UNet shape."""
    require_category(cfg, "works on")
    stage = cfg.stage
    require_positive(stage, ("max_steps", "batch_size", "checkpoint_every", "resolution", "num_train_timesteps",
                             "layers_per_block"))
    require_every_step_run(cfg)
    require_positive_number(stage, ("lr",))
    require_unet_shape(stage)


def check_sample(cfg: DictConfig) -> None:
    """``stage=sample``'s checks that need no model: the category, a known ``stage.generator``, positive counts, a
    ``stage.grid_images`` of 0 or more and a ``stage.model_variant`` that can name a variant."""
    require_category(cfg, "works on")
    stage = cfg.stage
    if stage.generator not in SAMPLERS:
        raise UserError(f"stage.generator must be one of {SAMPLERS}, got {stage.generator!r}")
    require_positive(stage, ("num_images", "batch_size", "num_inference_steps"))
    require_non_negative(stage, ("grid_images",))
    artifacts.require_directory_name("stage.model_variant", stage.model_variant)


def external_source(stage: Mapping[str, Any]) -> Path:
    """``stage=external``'s ``stage.source`` as a ``Path`` when it is a folder of another tool's images; else a
    one-line ``UserError``: also for a folder ``stage=export`` wrote, whose generated images come with the split they
    were made on and may have real training images beside them, which an import would take for generated images of
    no split."""
    source = Path(str(stage["source"])).expanduser()
    if not source.is_dir():
        raise UserError(f"stage.source={source} is not a folder (of one sub-folder per class, or of the category's "
                        "images)")
    if (source / EXPORT_MARKER).is_file():
        raise UserError(f"stage.source={source} was written by stage=export: read it where it is with "
                        f"stage.generated={source} (stage=fid, stage=classify), which takes its generated images only "
                        "and checks the split they were made on; stage=external imports other tools' images")
    return source


def external_folders(source: Path, categories: CategorySet) -> dict[str, Path]:
    """The sub-folders of ``source`` that name a class of ``categories`` (by abbreviation or full name), by
    abbreviation in class order; other sub-folders are not read. Two folders of one class are a ``UserError``."""
    found: dict[int | None, Path] = {}
    for path in sorted(source.iterdir()):
        index = categories.index_of(path.name) if path.is_dir() else None
        if index is not None and index in found:
            raise UserError(f"stage.source={source}: both {found[index].name}/ and {path.name}/ name class "
                            f"{categories.abbreviations[index]}; keep one")
        found[index] = path
    return {abbreviation: found[i] for i, abbreviation in enumerate(categories.abbreviations) if i in found}


def external_class_folder(source: Path, categories: CategorySet, category: str) -> Path | None:
    """The folder ``stage=external`` imports ``category`` from: ``source``'s sub-folder named by the class, or, where
    ``source`` has no class sub-folders and holds images directly (a generator's output for one class, as StyleGAN3's
    ``gen_images.py --outdir`` writes it; a generated set's folder by its manifest, as ``stage.generated`` reads
    one), ``source`` itself; None when it is neither. Such a folder named after
    another class (``samples/Sc`` for ``Pa``) is a one-line ``UserError``: its images are not the category's."""
    folders = external_folders(source, categories)
    if category in folders:
        return folders[category]
    if folders or not flat_folder_images(source):
        return None
    other = categories.other_class_named(source.name, categories.index_of(category))
    if other is not None:
        raise UserError(f"stage.source={source} holds the images of class {other}, by its name, not of {category}: "
                        f"give {category}'s folder, or {shell_word('category', other)}")
    return source


def external_images(source: Path, categories: CategorySet, category: str) -> list[Path]:
    """The image files of ``category`` in ``source``, an external folder with a sub-folder for the category (the
    classes it does not import need none) or, without class sub-folders, the category's images directly in it, by path
    (a generated set's in its manifest's order); a one-line ``UserError`` where it has none. None of them is read
    here."""
    folder = external_class_folder(source, categories, category)
    if folder is None:
        folders = external_folders(source, categories)
        found = f"its class folders: {', '.join(folders)}" if folders else "it has none, and no images directly in it"
        raise UserError(f"stage.source={source} has no sub-folder for {category} ({found}; name each folder by a "
                        f"class: {categories.describe()})")
    images = image_files(folder) if folder != source else flat_folder_images(source)
    if not images:
        raise UserError(f"{folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def check_external(cfg: DictConfig) -> None:
    """``stage=external``'s category, counts and folder: a positive batch size, ``stage.grid_images`` of 0 or more,
    ``stage.num_images`` null or positive, and a ``stage.source`` that is a folder (its sub-folders are read with the
    dataset's classes)."""
    require_category(cfg, "works on")
    require_positive(cfg.stage, ("batch_size",))
    require_non_negative(cfg.stage, ("grid_images",))
    if cfg.stage.get("num_images") is not None:
        require_positive(cfg.stage, ("num_images",))
    external_source(cfg.stage)


def export_folder(stage: DictConfig) -> Path:
    """``stage.out`` as an absolute path; a one-line ``UserError`` when it is unset, a file, or a folder holding
    files that ``stage=export`` did not write (it replaces only its own exports)."""
    require_folder_setting("stage.out", stage.get("out"))
    out = Path(str(stage.out)).expanduser().resolve()
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_MARKER).is_file():
        raise UserError(f"stage.out={stage.out} holds files that stage=export did not write; name a new or empty "
                        "folder (an earlier export there is replaced)")
    return out


def check_export(cfg: DictConfig) -> None:
    """``stage=export``'s settings: a generated set named, the folder (``export_folder``, outside ``dataset.root``)
    and ``stage.alpha`` null or in (0, 1]."""
    stage = cfg.stage
    if stage.generated is None or not str(stage.generated).strip():
        raise UserError("stage.generated names no generated set; set it to the variant name of one (stage=generate "
                        "variant=<name> makes it) or to a folder")
    require_outside_dataset(cfg.dataset, {"stage.out": export_folder(stage)})
    if stage.get("alpha") is not None and not (is_number(stage.alpha) and 0.0 < float(stage.alpha) <= 1.0):
        raise UserError(f"stage.alpha must be null (every training image) or in (0, 1], got {stage.alpha}")


def check_inspect(cfg: DictConfig) -> None:
    """``stage=inspect``'s settings: a positive ``stage.grid_per_class``, and the model's when it is built."""
    require_positive(cfg.stage, ("grid_per_class",))
    if cfg.stage.build_model:
        require_model_settings(cfg)
