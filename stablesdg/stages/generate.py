"""``stage=generate``: image-oriented generation (img2img from real defect images) with the adapted model.

The category's adapted components are loaded into diffusers' ``StableDiffusionImg2ImgPipeline`` with
diffusers' own loaders (``load_textual_inversion``, ``load_lora_weights``), or a ``full`` pipeline
folder is loaded, or the base model is used. Each image ``i`` starts from source image
``order[i mod n]`` (a seeded order of the category's training images) noised to strength ``s`` and
denoised with guidance ``ω``, with its own recorded seed. Images are written one by one (atomically)
at the dataset's resolution and mode, so a rerun after an interruption completes the set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from stablesdg import artifacts
from stablesdg.adaptation.lora import DIFFUSERS_FILE
from stablesdg.adaptation.placeholder import EMBEDS_FILE
from stablesdg.data.images import conform_image
from stablesdg.errors import first_line
from stablesdg.evaluation.features import check_feature_weights
from stablesdg.generated import IMAGES_DIR, image_seed, write_generated_set, write_grid
from stablesdg.loggers import log_run
from stablesdg.models.components import (apply_speed_options, move_pipeline, without_log_records,
                                         without_library_progress_bars)
from stablesdg.models.schedulers import make_scheduler, require_steps_within_schedule
from stablesdg.precision import inference_dtype
from stablesdg.stages.adapter_fit import adapter_does_not_fit, require_embedding_fits
from stablesdg.stages.checks import GENERATION_KEYS, check_generation_settings, resolve_settings
from stablesdg.stages.inputs import adapter_reader
from stablesdg.stages.common import category_data, category_images
from stablesdg.stages.fid import describe_score, real_images, score_images
from stablesdg.stages.settings import fill_prompt
from stablesdg.training import claim_directory, compute_device

log = logging.getLogger(__name__)

# how many images, the grid and the scoring: a set resumes across them (a longer set grows the shorter one)
KEYS_NOT_SHAPING_IMAGES = ("num_images", "grid_images", "score", "features", "inception_weights", "feature_seed",
                           "real_split", "objective")

def _finished(cfg: DictConfig, category: str, stage_name: str) -> Path:
    return artifacts.finished_stage_dir(cfg.paths.artifacts, cfg.dataset.name, category, cfg.stage.model_variant,
                                        stage_name, needed_by=adapter_reader(cfg))


def adapter_dirs(cfg: DictConfig, category: str) -> dict[str, Path]:
    """The finished stage folders ``stage.adapter`` reads, by stage, their weights checked against their checksums:
    ``full``; ``ti``; ``lora`` and, when it was trained with ``stage.use_ti``, ``ti``; none for ``base``."""
    adapter = cfg.stage.adapter
    if adapter not in ("ti", "lora", "full"):
        return {}
    dirs = {adapter: _finished(cfg, category, adapter)}
    if adapter == "lora" and artifacts.read_result(dirs["lora"])["metrics"].get("use_ti"):
        dirs["ti"] = _finished(cfg, category, "ti")
    return dirs


def load_pipeline(cfg: DictConfig, category: str, dirs: dict[str, Path] | None = None):
    """The generation pipeline with the chosen adapter loaded from ``dirs`` (default: ``adapter_dirs``), and the token
    that names the concept (or None)."""
    img2img = cfg.stage.init == "image"
    dirs = adapter_dirs(cfg, category) if dirs is None else dirs
    if "full" in dirs:
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
        with without_library_progress_bars():
            pipe = cls.from_pretrained(str(dirs["full"] / "pipeline"), local_files_only=True, safety_checker=None,
                                       requires_safety_checker=False)
        apply_speed_options(pipe.unet, pipe.vae, bool(cfg.model.get("channels_last")), cfg.model.get("compile", False))
        return pipe, artifacts.read_result(dirs["full"])["metrics"].get("token")
    components = instantiate(cfg.model)
    pipe = components.pipeline(img2img=img2img)
    token = None
    if "ti" in dirs:
        require_embedding_fits(cfg, dirs["ti"] / EMBEDS_FILE, pipe.text_encoder)
        # diffusers grows the token table with transformers' default initialisation, which announces itself;
        # the learned vectors then overwrite those rows, so the notice says nothing about this run
        with without_log_records("transformers.modeling_utils", "mean_resizing=False"):
            pipe.load_textual_inversion(str(dirs["ti"] / EMBEDS_FILE))
        token = artifacts.read_result(dirs["ti"])["metrics"]["token"]
    if "lora" in dirs:
        # diffusers logs the error it raises when the LoRA does not fit, which our one line replaces
        with without_library_progress_bars(), without_log_records("diffusers.loaders.peft", "was unsuccessful"):
            try:
                pipe.load_lora_weights(str(dirs["lora"]), weight_name=DIFFUSERS_FILE)
            except (RuntimeError, ValueError) as err:  # a layer of other shapes, or one this model lacks
                mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), None)
                raise adapter_does_not_fit(cfg, dirs["lora"], mismatch or first_line(err)) from err
    return pipe, token


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Generate ``stage.num_images`` images of the category; write PNGs, ``manifest.csv``; optionally score FID."""
    stage = cfg.stage
    dm, category = category_data(cfg, "makes")
    settings = resolve_settings(cfg, category)
    effective_steps = check_generation_settings(stage, settings["strength"], settings["guidance_scale"])
    untuned = [key for key in GENERATION_KEYS
               if stage.tuned and settings[f"{key}_source"] not in ("config", "tuned")]
    if untuned:
        log.warning("stage.tuned=%s has no %s for %s; using %s from conf/generation/ instead", stage.tuned,
                    " or ".join(untuned), category, ", ".join(f"{key}={settings[key]:g}" for key in untuned))
    if settings["guidance_scale"] < 1:
        log.warning("stage.guidance_scale=%s < 1 disables classifier-free guidance", settings["guidance_scale"])
    if stage.negative_prompt and settings["guidance_scale"] <= 1:
        log.warning("stage.negative_prompt=%r does nothing at stage.guidance_scale=%g: diffusers reads it only with "
                    "classifier-free guidance, at a guidance above 1", str(stage.negative_prompt),
                    settings["guidance_scale"])
    sources = category_images(dm, stage.source_split, category, stage.get("alpha"), "stage.alpha")
    if stage.score:  # refused now, not after the images are made
        real_images(cfg, dm, category)
        check_feature_weights(stage.features, stage.get("inception_weights"))

    dirs = adapter_dirs(cfg, category)
    pipe, token = load_pipeline(cfg, category, dirs)
    start = (f"s={settings['strength']:.2f} ({settings['strength_source']})" if stage.init == "image"
             else "text-to-image")  # from noise: no strength
    adapter = stage.adapter if not dirs or stage.model_variant == cfg.variant else \
        f"{stage.adapter} of variant {stage.model_variant}"
    log.info("generating %d images of %s: %s, %s, guidance=%.2f (%s), %d of %d steps with %s", stage.num_images,
             category, adapter, start, settings["guidance_scale"], settings["guidance_scale_source"],
             effective_steps, stage.num_inference_steps, stage.scheduler)
    pipe.scheduler = make_scheduler(stage.scheduler, pipe.scheduler.config)
    require_steps_within_schedule(int(stage.num_inference_steps), pipe.scheduler, "the model")
    pipe.set_progress_bar_config(disable=True)
    device = compute_device(cfg)
    dtype = inference_dtype(cfg, device)
    move_pipeline(pipe, device, dtype)
    # str(): Hydra reads stage.prompt=5 as the number 5; stage.prompt='' is the empty prompt, not the default
    prompt = str(stage.prompt) if stage.prompt is not None else fill_prompt(stage.prompt_template, token or stage.placeholder,
                                                                "stage.prompt_template")
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor

    images_dir = out_dir / IMAGES_DIR
    adapter_checksums = {name: artifacts.recorded_checksums(d) for name, d in dirs.items()}
    made_with = {"adapters": adapter_checksums, "dtype": str(dtype)}
    from_table = {key: settings[key] for key in GENERATION_KEYS
                  if settings[f"{key}_source"] in ("table", "fallback")}
    if from_table:  # the generation table's values for the category (a tuned file's: setting_files, in every stamp)
        made_with["settings"] = from_table
    claim_directory(images_dir, cfg, inputs=made_with, ignore=KEYS_NOT_SHAPING_IMAGES)
    order = np.random.default_rng([int(cfg.seed), 1]).permutation(len(sources))
    plan = [(int(order[i % len(sources)]), image_seed(cfg.seed, i)) for i in range(int(stage.num_images))]

    def produce(indices: list[int]) -> list:
        batch = [plan[i] for i in indices]
        kwargs = dict(prompt=[prompt] * len(batch), guidance_scale=settings["guidance_scale"],
                      num_inference_steps=int(stage.num_inference_steps),
                      negative_prompt=[str(stage.negative_prompt)] * len(batch) if stage.negative_prompt else None,
                      generator=[torch.Generator(device).manual_seed(s) for _, s in batch])
        if stage.init == "image":
            kwargs.update(image=[conform_image(sources.load_image(src), 3, resolution) for src, _ in batch],
                          strength=settings["strength"])
        else:
            kwargs.update(height=resolution, width=resolution)
        with torch.no_grad():
            outputs = pipe(**kwargs).images
        return [dm.conform(image) for image in outputs]

    rows = [{"source_image": sources.records[src].key if stage.init == "image" else "", "seed": seed,
             "strength": settings["strength"] if stage.init == "image" else "", "guidance_scale": settings["guidance_scale"],
             "steps": int(stage.num_inference_steps), "effective_steps": effective_steps, "scheduler": stage.scheduler,
             "prompt": prompt} for src, seed in plan]
    done = write_generated_set(out_dir, rows, produce, int(stage.batch_size), desc=f"generate {category}")

    metrics: dict[str, Any] = {
        "num_images": len(plan), "resumed_images": done, "adapter": stage.adapter, "init": stage.init, "prompt": prompt,
        "effective_steps": effective_steps, "num_inference_steps": int(stage.num_inference_steps),
        "scheduler": stage.scheduler, "adapter_checksums": adapter_checksums, **settings,
    }
    grid = write_grid(out_dir, min(len(plan), int(stage.grid_images)))
    if stage.score:
        metrics.update(score_images(cfg, dm, category, [images_dir / f"{i:05d}.png" for i in range(len(plan))]))
        log.info("stage=generate: %s", describe_score(category, {**metrics, "generated": f"{cfg.variant}/{out_dir.name}"}))
    log_run(cfg, metrics, {"generated": grid})
    return metrics
