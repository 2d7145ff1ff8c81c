"""``stage=ti``, ``stage=lora`` and ``stage=full``: adapt Stable Diffusion to one defect category.

Shared flow: the category's training images (optionally the α-subset) -> cached VAE latents ->
a ``DiffusionAdapter`` trained by a Lightning ``Trainer`` from ``conf/trainer/`` with
checkpoints every ``stage.checkpoint_every`` steps (resumed automatically when the same
command runs again) -> the artifact files, written by global rank 0 only.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from stablesdg import artifacts, atomic_files
from stablesdg.adaptation.callbacks import LossHistory, ValidationImages
from stablesdg.adaptation.latents import latent_cache_key, load_or_encode_latents
from stablesdg.adaptation.lora import add_lora, autocast_chooses_adapter_input_dtype, save_lora
from stablesdg.adaptation.module import DiffusionAdapter
from stablesdg.adaptation.placeholder import (
    EMBEDS_FILE, Placeholder, PlaceholderEmbedding, add_tokens, make_placeholder, read_learned_embeds,
    save_learned_embeds,
)
from stablesdg.data.images import decode_image
from stablesdg.errors import UserError
from stablesdg.generated import image_seed
from stablesdg.loggers import build_logger
from stablesdg.model_files import model_by_content
from stablesdg.models import SDComponents
from stablesdg.models.components import without_library_progress_bars
from stablesdg.precision import trains_under_autocast
from stablesdg.progress import progress_bar
from stablesdg.stages.adapter_fit import require_embedding_fits
from stablesdg.stages.checks import check_adaptation, prior_image_files
from stablesdg.stages.inputs import ti_reader
from stablesdg.stages.common import category_data, category_images
from stablesdg.stages.settings import fill_prompt
from stablesdg.store_layout import cache_folder
from stablesdg.training import (
    CHECKPOINT_DIR, build_trainer, claim_directory, compute_device, log_interval, remove_checkpoints, require_finished,
    require_finite_weights, resume_checkpoint, run_fit, step_ticks,
)

log = logging.getLogger(__name__)

VALIDATION_DIR = "validation"
PIPELINE_DIR = "pipeline"
PRIOR_DIR = "prior_images"


@dataclass
class Adaptation:
    """What an adaptation run leaves in memory: the adapted components, the module and its metrics."""

    components: SDComponents
    module: DiffusionAdapter
    metrics: dict[str, Any] = field(default_factory=dict)
    placeholder: Placeholder | None = None
    is_global_zero: bool = True


def _latents(cfg: DictConfig, components: SDComponents, images: Sequence, digests: Sequence[str], name: str,
             what: str, read_as: dict[str, Any] | None = None) -> torch.Tensor:
    model = model_by_content(OmegaConf.to_container(cfg.model, resolve=True), cfg.paths.artifacts)
    key = latent_cache_key(model, components.resolution, bool(cfg.stage.flip), digests, read_as)
    path = cache_folder(cfg.paths.artifacts, cfg.dataset.name, cfg.category) / f"{name}-{key}.safetensors"
    components.vae.to(compute_device(cfg))
    try:
        return load_or_encode_latents(path, components.vae, images, components.resolution, bool(cfg.stage.flip),
                                      desc=f"VAE latents of {what}{' and their mirror images' if cfg.stage.flip else ''}, "
                                           "cached for later runs")
    finally:
        components.vae.to("cpu")


def prepare(cfg: DictConfig, check_model: Callable[[SDComponents], None] | None = None
            ) -> tuple[SDComponents, torch.Tensor]:
    """The model and the cached latent distributions of the category's training images (settings checked first by
    ``check_adaptation``); ``check_model`` is called on the model as soon as it is built, before any image is
    encoded."""
    dm, category = category_data(cfg, "adapts")
    dataset = category_images(dm, "train", category, cfg.stage.get("alpha"), "stage.alpha")
    images = [dataset.load_image(i) for i in range(len(dataset))]
    log.info("%s: %d training images of %s (%s)", cfg.stage.name, len(images), category, dm.name)
    components = instantiate(cfg.model)
    if check_model is not None:
        check_model(components)
    latents = _latents(cfg, components, images, [r.digest for r in dataset.records], f"latents-{components.name}",
                       f"the {cfg.category or 'training'} images", dm.read_as)
    return components, latents


def make_prior_images(cfg: DictConfig, components: SDComponents, folder: Path) -> Path:
    """DreamBooth's class images: ``stage.num_prior_images`` text-to-image samples of ``stage.prior_prompt`` from
    the model before training, one seed per image, written once (a rerun keeps the finished ones)."""
    count = int(cfg.stage.num_prior_images)
    claim_directory(folder, cfg)  # images of another config (prompt, model, seed) are discarded
    files = [folder / f"{i:05d}.png" for i in range(count)]
    missing = [i for i, f in enumerate(files) if not f.is_file()]
    if missing:
        pipe = components.pipeline(img2img=False)
        pipe.set_progress_bar_config(disable=True)
        device = compute_device(cfg)
        pipe.to(device)
        log.info("making %d prior-preservation images of %r", len(missing), cfg.stage.prior_prompt)
        for i in progress_bar(missing, desc="prior-preservation images", unit="image"):
            with torch.no_grad():
                image = pipe(cfg.stage.prior_prompt, num_inference_steps=int(cfg.stage.prior_steps),
                             generator=torch.Generator(device).manual_seed(image_seed(cfg.seed, i))).images[0]
            atomic_files.save_png_atomic(files[i], image)
        pipe.to("cpu")
    return folder


def _prior_latents(cfg: DictConfig, components: SDComponents, out_dir: Path) -> torch.Tensor | None:
    folder = cfg.stage.get("prior_images")
    if not folder:
        return None
    if folder == "auto":
        folder = make_prior_images(cfg, components, out_dir / PRIOR_DIR)
    files = prior_image_files(folder)
    data = [p.read_bytes() for p in files]
    images = [decode_image(d, p) for d, p in zip(data, files)]
    return _latents(cfg, components, images, [hashlib.md5(d).hexdigest() for d in data], f"prior-{components.name}",
                   "the class images")


def freeze(components: SDComponents) -> None:
    """Make every parameter of the model non-trainable."""
    for module in components.modules().values():
        module.requires_grad_(False)


def fit(cfg: DictConfig, out_dir: Path, module: DiffusionAdapter, callbacks: Sequence[L.Callback] = (),
        inputs: Any = None) -> tuple[L.Trainer, LossHistory]:
    """Train ``module`` for ``stage.max_steps`` steps, resuming from ``out_dir/checkpoints`` when the same config
    made them from the same ``inputs`` (the identity of the artifacts the run reads)."""
    ckpt_path = resume_checkpoint(out_dir, cfg, inputs)
    ckpt_dir = out_dir / CHECKPOINT_DIR
    history = LossHistory()
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                 every_n_train_steps=int(cfg.stage.checkpoint_every))
    validation = ValidationImages(out_dir / VALIDATION_DIR, int(cfg.stage.validation_every),
                                  int(cfg.stage.validation_images), int(cfg.seed), int(cfg.stage.validation_steps))
    trainer: L.Trainer = build_trainer(cfg, max_steps=int(cfg.stage.max_steps), max_epochs=1, default_root_dir=ckpt_dir,
                                       logger=build_logger(cfg) or False, limit_val_batches=0, num_sanity_val_steps=0,
                                       callbacks=[checkpoint, validation, history, *callbacks],
                                       log_every_n_steps=log_interval(cfg, int(cfg.stage.max_steps)))
    run_fit(trainer, cfg, module, train_dataloaders=step_ticks(int(cfg.stage.max_steps), trainer.world_size),
            ckpt_path=ckpt_path, weights_only=True)
    require_finished(trainer, cfg, trainer.global_step >= int(cfg.stage.max_steps),
                     f"step {trainer.global_step} of {cfg.stage.max_steps}")
    require_finite_weights(module, cfg, f"step {trainer.global_step}")
    return trainer, history


def _finish(cfg: DictConfig, out_dir: Path, trainer: L.Trainer, history: LossHistory, module: DiffusionAdapter) -> dict[str, Any]:
    history.write_csv(out_dir / "loss.csv")
    remove_checkpoints(out_dir, cfg)
    losses = history.values()
    last_tenth = losses[-max(1, len(losses) // 10):]
    return {
        "steps": trainer.global_step,
        "final_loss": losses[-1] if losses else None,
        "mean_loss_last_10pct": sum(last_tenth) / len(last_tenth) if losses else None,
        "trainable_parameters": module.num_trainable_parameters(),
        "prompt": module.prompt,
        "resolution": module.components.resolution,
        "training_latents": int(module.latent_dist.shape[0]),
        "world_size": trainer.world_size,
    }


def _ti_artifact(cfg: DictConfig) -> Path:
    directory = artifacts.finished_stage_dir(cfg.paths.artifacts, cfg.dataset.name, cfg.category, cfg.variant, "ti",
                                             needed_by=ti_reader(cfg))
    return directory / EMBEDS_FILE


def _ti_checksums(cfg: DictConfig) -> dict[str, str] | None:
    """What identifies the TI embedding a LoRA or full run trains with (None without ``stage.use_ti``): a checkpoint
    made with another embedding is not resumed."""
    return artifacts.recorded_checksums(_ti_artifact(cfg).parent) if cfg.stage.get("use_ti", False) else None


def _require_ti_if_used(cfg: DictConfig) -> None:
    if cfg.stage.get("use_ti", False) and cfg.category is not None:
        _ti_artifact(cfg)


def _require_ti_fits(cfg: DictConfig, components: SDComponents) -> None:
    """A one-line ``UserError`` where the TI embedding a LoRA or full run trains with (``stage.use_ti``) was learned
    on a model of other widths than ``components``."""
    if cfg.stage.get("use_ti", False):
        require_embedding_fits(cfg, _ti_artifact(cfg), components.text_encoder)


def load_ti_embedding(components: SDComponents, path: Path) -> Placeholder:
    """Add the tokens of a ``learned_embeds.safetensors`` to the model, as ``load_textual_inversion`` does (its width
    checked first: ``_require_ti_fits``)."""
    token, vectors = read_learned_embeds(path)
    tokens = (token,) + tuple(f"{token}_{i}" for i in range(1, vectors.shape[0]))
    add_tokens(components.tokenizer, components.text_encoder, tokens, vectors)
    return Placeholder(token, tokens, ())


def _training_prompt(cfg: DictConfig, components: SDComponents) -> tuple[str, Placeholder | None]:
    if cfg.stage.get("use_ti", False):
        placeholder = load_ti_embedding(components, _ti_artifact(cfg))  # found before the model was built, its width checked once it was
        return placeholder.expand(fill_prompt(cfg.stage.prompt, placeholder.token, "stage.prompt")), placeholder
    return fill_prompt(cfg.stage.prompt, cfg.stage.placeholder, "stage.prompt"), None


def _prepare_with_ti(cfg: DictConfig) -> tuple[SDComponents, torch.Tensor, str, Placeholder | None]:
    """LoRA's and full fine-tuning's start: their settings and, where ``stage.use_ti``, the category's TI artifact
    checked before the model loads; then the model, the cached latents, the training prompt and the placeholder of
    the TI embedding loaded into the model (None without TI)."""
    check_adaptation(cfg)
    _require_ti_if_used(cfg)
    components, latents = prepare(cfg, lambda built: _require_ti_fits(cfg, built))
    prompt, placeholder = _training_prompt(cfg, components)
    return components, latents, prompt, placeholder


def _half_frozen(cfg: DictConfig, models: tuple[str, ...]) -> tuple[str, ...]:
    """``models`` where ``stage.half_precision_frozen`` is on (it acts only under mixed precision), else none."""
    return models if cfg.stage.get("half_precision_frozen", False) else ()


def adapt_ti(cfg: DictConfig, out_dir: Path, callbacks: Sequence[L.Callback] = ()) -> Adaptation:
    """Textual inversion: learn the placeholder's vectors only; save ``learned_embeds.safetensors``."""
    check_adaptation(cfg)
    components, latents = prepare(cfg)
    text_encoder = components.text_encoder
    placeholder = make_placeholder(components.tokenizer, cfg.stage.placeholder)
    init = text_encoder.get_input_embeddings().weight[list(placeholder.init_ids)].detach().clone()
    ids = add_tokens(components.tokenizer, text_encoder, placeholder.tokens, init)
    freeze(components)
    wrapper = PlaceholderEmbedding(text_encoder.get_input_embeddings(), first_id=ids[0])
    text_encoder.set_input_embeddings(wrapper)
    prompt = placeholder.expand(fill_prompt(cfg.stage.prompt, placeholder.token, "stage.prompt"))
    # as in textual_inversion.py, the text encoder computes in fp32 where autocast lets it (the embedding's gradient
    # flows through it; only its linear layers' weights, which autocast casts at every use anyway, are stored in bf16)
    # and the frozen UNet in bf16 outside autocast (stage.half_precision_unet)
    module = DiffusionAdapter(components, latents, prompt, cfg.stage.lr, cfg.stage.batch_size, cfg.seed,
                              half_frozen=_half_frozen(cfg, ("unet",)),
                              half_frozen_matmuls=_half_frozen(cfg, ("text_encoder",)),
                              half_unet=bool(cfg.stage.get("half_precision_unet", False)),
                              gradient_checkpointing=bool(cfg.stage.gradient_checkpointing))
    trainer, history = fit(cfg, out_dir, module, callbacks)
    metrics = _finish(cfg, out_dir, trainer, history, module)
    vectors = wrapper.learned.detach().float().cpu()
    text_encoder.set_input_embeddings(wrapper.merged())
    if trainer.is_global_zero:
        save_learned_embeds(out_dir / EMBEDS_FILE, placeholder, vectors)
    metrics.update({"token": placeholder.token, "tokens": list(placeholder.tokens), "num_vectors": len(placeholder.tokens),
                    "initialised_from": components.tokenizer.convert_ids_to_tokens(list(placeholder.init_ids)),
                    "embedding_norms": vectors.norm(dim=1).tolist()})
    return Adaptation(components, module, metrics, placeholder, trainer.is_global_zero)


def adapt_lora(cfg: DictConfig, out_dir: Path, callbacks: Sequence[L.Callback] = ()) -> Adaptation:
    """LoRA (rank ``stage.rank``) on text encoder and UNet, with the category's frozen TI embedding by default."""
    components, latents, prompt, placeholder = _prepare_with_ti(cfg)
    freeze(components)
    add_lora(components, int(cfg.stage.rank), seed=int(cfg.seed))
    module = DiffusionAdapter(components, latents, prompt, cfg.stage.lr, cfg.stage.batch_size, cfg.seed,
                              half_frozen=_half_frozen(cfg, ("unet", "text_encoder")),
                              half_trainable=bool(cfg.stage.get("half_precision_trainable", False)),
                              half_unet=bool(cfg.stage.get("half_precision_unet", False)),
                              gradient_checkpointing=bool(cfg.stage.gradient_checkpointing))
    with autocast_chooses_adapter_input_dtype(components, active=trains_under_autocast(cfg)):
        trainer, history = fit(cfg, out_dir, module, callbacks, inputs=_ti_checksums(cfg))
    metrics = _finish(cfg, out_dir, trainer, history, module)
    if trainer.is_global_zero:
        save_lora(out_dir, components, int(cfg.stage.rank))
    metrics.update({"rank": int(cfg.stage.rank), "use_ti": bool(cfg.stage.use_ti),
                    "token": placeholder.token if placeholder else None})
    return Adaptation(components, module, metrics, placeholder, trainer.is_global_zero)


def adapt_full(cfg: DictConfig, out_dir: Path, callbacks: Sequence[L.Callback] = ()) -> Adaptation:
    """Full-parameter fine-tuning of UNet (and text encoder), optionally with TI and prior preservation."""
    components, latents, prompt, placeholder = _prepare_with_ti(cfg)
    prior = _prior_latents(cfg, components, out_dir)
    freeze(components)
    components.unet.requires_grad_(True)
    if cfg.stage.train_text_encoder:
        components.text_encoder.requires_grad_(True)
        components.text_encoder.get_input_embeddings().requires_grad_(False)
    module = DiffusionAdapter(components, latents, prompt, cfg.stage.lr, cfg.stage.batch_size, cfg.seed,
                              prior_latent_dist=prior, prior_prompt=cfg.stage.prior_prompt if prior is not None else None,
                              prior_loss_weight=cfg.stage.prior_loss_weight,
                              gradient_checkpointing=bool(cfg.stage.gradient_checkpointing))
    trainer, history = fit(cfg, out_dir, module, callbacks, inputs=_ti_checksums(cfg))
    metrics = _finish(cfg, out_dir, trainer, history, module)
    if trainer.is_global_zero:
        with atomic_files.staged_folder(out_dir / PIPELINE_DIR) as staged, without_library_progress_bars():
            components.pipeline().save_pretrained(staged, safe_serialization=True)  # the text encoder's "Writing model shards"
    metrics.update({"use_ti": bool(cfg.stage.use_ti), "train_text_encoder": bool(cfg.stage.train_text_encoder),
                    "prior_images": 0 if prior is None else int(prior.shape[0]),
                    "token": placeholder.token if placeholder else None})
    return Adaptation(components, module, metrics, placeholder, trainer.is_global_zero)


def _metrics_on_rank_zero(adaptation: Adaptation) -> dict[str, Any] | None:
    return adaptation.metrics if adaptation.is_global_zero else None


def run_ti(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """Stage runner for ``stage=ti``."""
    return _metrics_on_rank_zero(adapt_ti(cfg, out_dir))


def run_lora(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """Stage runner for ``stage=lora``."""
    return _metrics_on_rank_zero(adapt_lora(cfg, out_dir))


def run_full(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """Stage runner for ``stage=full``."""
    return _metrics_on_rank_zero(adapt_full(cfg, out_dir))
