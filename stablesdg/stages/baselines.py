"""The baseline generators as stages: ``stage=dcgan`` and ``stage=ddpm`` train from scratch on one category;
``stage=sample`` draws a generated set from them (DCGAN, DDPM or DDIM sampling); ``stage=external`` imports
images made by any other tool (StyleGAN3, ...). Every set lands in the layout of ``stage=generate``, so
``stage=fid``, ``stage=classify`` and the report use it unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms.functional import to_pil_image

from stablesdg import artifacts, atomic_files, provenance
from stablesdg.baselines.dcgan import DCGAN, OPTIMIZER_STEPS
from stablesdg.baselines.ddpm import DDPM, build_unet
from stablesdg.choices import sampled_model
from stablesdg.data import DefectDataModule
from stablesdg.data.images import read_image_file
from stablesdg.errors import UserError
from stablesdg.generated import IMAGES_DIR, image_seed, write_generated_set, write_grid
from stablesdg.loggers import build_logger, log_run
from stablesdg.models.schedulers import make_scheduler, require_steps_within_schedule
from stablesdg.stages.checks import (
    check_dcgan, check_ddpm, check_external, check_sample, external_images, external_source,
)
from stablesdg.stages.inputs import sampler_reader
from stablesdg.stages.common import category_data, category_images
from stablesdg.training import (
    CHECKPOINT_DIR, build_trainer, claim_directory, compute_device, log_interval, remove_checkpoints,
    require_accepted_trainer_settings, require_finished, require_finite_weights, resume_checkpoint, run_fit, step_ticks,
)

log = logging.getLogger(__name__)

GENERATOR_FILE = "generator.safetensors"


def training_images(dm: DefectDataModule, category: str, resolution: int, alpha: float | None, flip: bool) -> torch.Tensor:
    """The category's training images as a ``(N, channels, resolution, resolution)`` tensor in [-1, 1]
    (with their mirror images when ``flip``)."""
    real = category_images(dm, "train", category, alpha, "stage.alpha")
    images = torch.stack([real[i][0] for i in range(len(real))])
    images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    images = images.clamp(0, 1) * 2 - 1
    return torch.cat([images, images.flip(-1)]) if flip else images


# Lightning's DDP strategies by name, each of which has a form that finds the parameters a backward pass leaves unused
DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def ddp_for_alternating_updates(cfg: DictConfig, optimizer_steps: int) -> dict[str, str]:
    """The trainer's ``strategy`` where ``optimizer_steps`` (a GAN's 2) updates alternate between parts of the model
    under one of ``DDP_STRATEGIES`` (named, or ``auto`` on several devices, where Lightning chooses ``ddp``): its form
    that lets each backward pass leave the other part's parameters unused, which plain DDP refuses (Lightning's answer
    for GANs). Otherwise nothing: the configured strategy stands."""
    if optimizer_steps == 1:
        return {}
    strategy = cfg.trainer.get("strategy") or "auto"
    if strategy == "auto" and require_accepted_trainer_settings(cfg) > 1:  # the number of processes
        strategy = "ddp"
    if isinstance(strategy, str) and strategy in DDP_STRATEGIES:
        return {"strategy": f"{strategy}_find_unused_parameters_true"}
    return {}


def _fit(cfg: DictConfig, out_dir: Path, module: L.LightningModule, optimizer_steps: int) -> L.Trainer:
    """Train ``module`` for ``stage.max_steps`` iterations of ``optimizer_steps`` optimiser steps each, resuming
    from its checkpoints (each iteration draws its own batch: see ``stablesdg.training.step_seed``)."""
    stage = cfg.stage
    ckpt_path = resume_checkpoint(out_dir, cfg)
    checkpoint = ModelCheckpoint(dirpath=out_dir / CHECKPOINT_DIR, save_last=True, save_top_k=0,
                                 every_n_train_steps=optimizer_steps * int(stage.checkpoint_every))
    logger = build_logger(cfg)
    trainer: L.Trainer = build_trainer(cfg, max_steps=optimizer_steps * int(stage.max_steps), max_epochs=1,
                                       default_root_dir=out_dir / CHECKPOINT_DIR,
                                       logger=logger or False, callbacks=[checkpoint], num_sanity_val_steps=0,
                                       log_every_n_steps=log_interval(cfg, int(stage.max_steps)),
                                       **ddp_for_alternating_updates(cfg, optimizer_steps))
    run_fit(trainer, cfg, module, step_ticks(int(stage.max_steps), trainer.world_size), ckpt_path=ckpt_path,
            weights_only=True, optimizer_steps=optimizer_steps)
    iterations = trainer.global_step // optimizer_steps
    require_finished(trainer, cfg, iterations >= int(stage.max_steps), f"step {iterations} of {stage.max_steps}")
    require_finite_weights(module, cfg, f"step {iterations}")
    return trainer


def run_dcgan(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """Train a DCGAN on the category; write ``generator.safetensors``."""
    stage = cfg.stage
    check_dcgan(cfg)
    dm, category = category_data(cfg, "works on")
    images = training_images(dm, category, int(stage.resolution), stage.get("alpha"), bool(stage.flip))
    module = DCGAN(dm.channels, int(stage.resolution), int(stage.latent_dim), int(stage.width), float(stage.lr),
                   images=images, batch_size=int(stage.batch_size), seed=int(cfg.seed))
    trainer = _fit(cfg, out_dir, module, optimizer_steps=OPTIMIZER_STEPS)
    if not trainer.is_global_zero:
        return None
    atomic_files.save_safetensors_atomic(out_dir / GENERATOR_FILE, module.generator.state_dict())
    remove_checkpoints(out_dir, cfg)
    return {"steps": trainer.global_step // OPTIMIZER_STEPS, "training_images": int(images.shape[0]), "channels": dm.channels,
            "resolution": int(stage.resolution), "latent_dim": int(stage.latent_dim), "width": int(stage.width),
            "generator_parameters": sum(p.numel() for p in module.generator.parameters()),
            "final_d_loss": float(trainer.callback_metrics.get("train/d_loss", float("nan"))),
            "final_g_loss": float(trainer.callback_metrics.get("train/g_loss", float("nan")))}


def run_ddpm(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """Train a pixel-space DDPM (``UNet2DModel`` + ``DDPMScheduler``) on the category; save both in diffusers format."""
    from diffusers import DDPMScheduler

    stage = cfg.stage
    check_ddpm(cfg)
    dm, category = category_data(cfg, "works on")
    images = training_images(dm, category, int(stage.resolution), stage.get("alpha"), bool(stage.flip))
    torch.manual_seed(int(cfg.seed))
    unet = build_unet(dm.channels, int(stage.resolution), list(stage.widths), int(stage.layers_per_block))
    scheduler = DDPMScheduler(num_train_timesteps=int(stage.num_train_timesteps))
    module = DDPM(unet, scheduler, float(stage.lr), images=images, batch_size=int(stage.batch_size), seed=int(cfg.seed))
    trainer = _fit(cfg, out_dir, module, optimizer_steps=1)
    if not trainer.is_global_zero:
        return None
    unet.save_pretrained(str(out_dir / "unet"), safe_serialization=True)
    scheduler.save_pretrained(str(out_dir / "scheduler"))
    remove_checkpoints(out_dir, cfg)
    return {"steps": trainer.global_step, "training_images": int(images.shape[0]), "channels": dm.channels,
            "resolution": int(stage.resolution), "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}


def _dcgan_sampler(directory: Path, device: torch.device) -> Callable[[list[int]], list[Image.Image]]:
    metrics = artifacts.read_result(directory)["metrics"]
    module = DCGAN(metrics["channels"], metrics["resolution"], metrics["latent_dim"], metrics["width"])
    module.generator.load_state_dict(load_file(str(directory / GENERATOR_FILE)))
    generator = module.generator.to(device).eval()

    def sample(seeds: list[int]) -> list[Image.Image]:
        noise = torch.stack([torch.randn(metrics["latent_dim"], generator=torch.Generator().manual_seed(s)) for s in seeds])
        with torch.no_grad():
            images = generator(noise.to(device)[:, :, None, None])
        return [to_pil_image(((im.float().cpu() + 1) / 2).clamp(0, 1)) for im in images]

    return sample


def _diffusion_sampler(directory: Path, device: torch.device, sampler: str, steps: int) -> Callable[[list[int]], list[Image.Image]]:
    from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(str(directory / "unet"))
    trained = DDPMScheduler.from_pretrained(str(directory / "scheduler"))
    require_steps_within_schedule(steps, trained, f"the DDPM in {directory}")
    pipe = (DDIMPipeline if sampler == "ddim" else DDPMPipeline)(unet=unet, scheduler=trained)
    # set after construction: DDIMPipeline rebuilds its scheduler as diffusers' DDIMScheduler; ours reads no GPU
    # value per denoising step and gives the same images bit for bit
    pipe.scheduler = make_scheduler(sampler, trained.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)

    def sample(seeds: list[int]) -> list[Image.Image]:
        generators = [torch.Generator(device).manual_seed(s) for s in seeds]
        kwargs = {"eta": 0.0} if sampler == "ddim" else {}
        return pipe(batch_size=len(seeds), generator=generators, num_inference_steps=steps, **kwargs).images

    return sample


def run_sample(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Draw ``stage.num_images`` images of the category from a trained DCGAN or DDPM (``stage.generator``)."""
    stage = cfg.stage
    check_sample(cfg)
    dm, category = category_data(cfg, "works on")
    trained = sampled_model(stage.generator)
    directory = artifacts.finished_stage_dir(cfg.paths.artifacts, dm.name, category, stage.model_variant, trained,
                                             needed_by=sampler_reader(cfg))
    device = compute_device(cfg)
    if stage.generator == "dcgan":
        sample = _dcgan_sampler(directory, device)
        steps = ""
    else:
        sample = _diffusion_sampler(directory, device, stage.generator, int(stage.num_inference_steps))
        steps = int(stage.num_inference_steps)
    seeds = [image_seed(cfg.seed, i) for i in range(int(stage.num_images))]
    claim_directory(out_dir / IMAGES_DIR, cfg, inputs=artifacts.recorded_checksums(directory),
                    ignore=("num_images", "grid_images"))

    def produce(indices: list[int]) -> list[Image.Image]:
        return [dm.conform(im) for im in sample([seeds[i] for i in indices])]

    rows = [{"seed": s, "generator": stage.generator, "steps": steps, "model": str(directory)} for s in seeds]
    done = write_generated_set(out_dir, rows, produce, int(stage.batch_size), desc=f"{stage.generator} {category}")
    metrics = {"num_images": len(seeds), "resumed_images": done, "generator": stage.generator, "steps": steps,
               "model_variant": stage.model_variant}
    log_run(cfg, metrics, {"generated": write_grid(out_dir, min(len(rows), int(stage.grid_images)))})
    return metrics


def run_external(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Import the category's images from ``stage.source`` (made by StyleGAN3 or any tool) as a generated set."""
    stage = cfg.stage
    check_external(cfg)
    dm, category = category_data(cfg, "works on")
    files = external_images(external_source(stage), dm.categories, category)
    if stage.get("num_images") is not None:
        if len(files) < int(stage.num_images):
            raise UserError(f"stage.num_images={stage.num_images} but {stage.source} has {len(files)} images of {category}: "
                            f"add images, or import fewer (stage.num_images={len(files)}, or null for every image; in "
                            "stage=pipeline its pipeline.generate list sets it)")
        files = files[: int(stage.num_images)]
    for path in files:  # refuse the whole import before writing anything; the files it does not import are not read
        read_image_file(path)
    claim_directory(out_dir / IMAGES_DIR, cfg, inputs=provenance.files_identity(files), ignore=("grid_images",))

    def produce(indices: list[int]) -> list[Image.Image]:
        return [dm.conform(read_image_file(files[i])) for i in indices]

    rows = [{"source_file": str(f), "generator": "external"} for f in files]
    done = write_generated_set(out_dir, rows, produce, int(stage.batch_size), desc=f"import {category}")
    metrics = {"num_images": len(files), "resumed_images": done, "generator": "external", "source": str(stage.source)}
    log_run(cfg, metrics, {"generated": write_grid(out_dir, min(len(rows), int(stage.grid_images)))})
    return metrics
