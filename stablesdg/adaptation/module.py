"""``DiffusionAdapter``: the denoising objective shared by textual inversion, LoRA and full fine-tuning.

Each training step draws its batch, latent noise, diffusion noise and timesteps from a
generator seeded by ``(seed, global_step, rank)``, so a run resumed from a checkpoint takes
exactly the steps an uninterrupted run takes. Checkpoints hold only the trainable tensors
(and the optimiser state); the frozen model is rebuilt from its config on resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from stablesdg.adaptation.latents import sample_latents
from stablesdg.adaptation.master_weights import MasterWeights, autocast_cast_weights
from stablesdg.models import SDComponents
from stablesdg.precision import autocast_dtype, store_frozen_weights
from stablesdg.training import draw_batch, step_generator


class DiffusionAdapter(L.LightningModule):
    """Trains the parameters of ``components`` that have ``requires_grad`` on the SD denoising loss.

    Args:
        components: the SD model, frozen except for what the stage chose to train.
        latent_dist: ``N×2C×h×w`` cached latent distributions of the training images.
        prompt: the training prompt, already expanded to its tokens.
        lr, batch_size, seed: optimiser learning rate, images per step, the run's seed.
        prior_latent_dist, prior_prompt, prior_loss_weight: optional prior-preservation images
            (DreamBooth), a batch of which joins every step with its own prompt.
        half_frozen: the models (``"unet"``, ``"text_encoder"``) whose frozen weights are stored in autocast's
            dtype while training under mixed precision, as diffusers' training scripts store them: autocast then
            has no fp32 weight to cast at every use (a sixth of the SD1.5 TI step's operators). Trainable
            tensors stay fp32; at the end of training the frozen weights are fp32 again (rounded to that dtype).
        half_frozen_matmuls: models of which only the frozen weights of linear and convolution layers are stored so
            (``store_frozen_weights(matmul_layers_only=True)``): autocast would cast exactly those at every use, so
            training computes the same numbers with fewer operators.
        half_trainable: under bf16 mixed precision on one device, the trainable weights of linear and convolution
            layers (LoRA's adapters) are held in bf16 while training, with fp32 masters that the optimiser updates
            (``MasterWeights``): the same numbers as autocast's casts of fp32 weights, without two casts per tensor
            and step. Checkpoints and the weights after training are the fp32 masters.
        half_unet: under mixed precision the UNet's frozen weights are stored in autocast's dtype and, where every
            UNet weight is then in that dtype (TI's wholly frozen UNet; LoRA's with its adapters held as bf16 copies
            of fp32 masters, ``half_trainable``), the UNet computes in it outside autocast, as diffusers'
            ``textual_inversion.py`` runs its frozen UNet. On a GPU autocast computes group and layer norms in fp32
            and casts their inputs, weights and outputs at every use. The text encoder keeps computing under
            autocast. Otherwise the UNet stays under autocast. fp32 again after training.
        gradient_checkpointing: while training, the UNet keeps only its blocks' inputs from the forward pass and
            recomputes the rest in the backward pass (diffusers' ``enable_gradient_checkpointing``): less memory for
            one more UNet forward per step, and the same numbers (up to float rounding where torch.compile generates
            the kernels). The text encoder's activations, a few MB, are kept.
    """

    def __init__(self, components: SDComponents, latent_dist: torch.Tensor, prompt: str, lr: float, batch_size: int,
                 seed: int, prior_latent_dist: torch.Tensor | None = None, prior_prompt: str | None = None,
                 prior_loss_weight: float = 1.0, half_frozen: tuple[str, ...] = (),
                 half_frozen_matmuls: tuple[str, ...] = (), half_trainable: bool = False, half_unet: bool = False,
                 gradient_checkpointing: bool = False):
        super().__init__()
        self.components = components
        self.text_encoder = components.text_encoder
        self.unet = components.unet
        self.vae = components.vae  # decodes validation images; training uses cached latents
        self.noise_scheduler = components.scheduler
        self.scaling_factor = float(components.vae.config.scaling_factor)
        self.prompt = prompt
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.register_buffer("latent_dist", latent_dist, persistent=False)
        self.register_buffer("prompt_ids", self.tokenize(prompt), persistent=False)
        self.register_buffer("prior_latent_dist", prior_latent_dist, persistent=False)
        self.register_buffer("prior_prompt_ids", self.tokenize(prior_prompt) if prior_prompt else None, persistent=False)
        self.prior_loss_weight = float(prior_loss_weight)
        self.half_frozen = tuple(half_frozen)
        self.half_frozen_matmuls = tuple(half_frozen_matmuls)
        self.half_trainable = bool(half_trainable)
        self.half_unet = bool(half_unet)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.unet_dtype: torch.dtype | None = None  # set while the UNet computes outside autocast
        self.master_weights: MasterWeights | None = None
        self.text_encoder_drops_out: bool | None = None  # found at the first step (adapters are added before it)
        self.strict_loading = False  # checkpoints carry only the trainable tensors

    def tokenize(self, prompt: str) -> torch.Tensor:
        """``1×77`` token ids of ``prompt``, padded as SD1.5 pads."""
        tokenizer = self.components.tokenizer
        return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids

    def trainable_named_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters this module trains, by state-dict name."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def num_trainable_parameters(self) -> int:
        """How many numbers training changes (Fig. 6's x-axis for LoRA)."""
        return sum(p.numel() for p in self.trainable_named_parameters().values())

    def on_fit_start(self) -> None:
        if self.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        dtype = autocast_dtype(self.trainer.precision)
        if dtype is not None:
            store_frozen_weights([getattr(self, name) for name in self.half_frozen], dtype)
            store_frozen_weights([getattr(self, name) for name in self.half_frozen_matmuls], dtype, matmul_layers_only=True)
        if self.master_weights is not None:
            self.master_weights.store()
        if dtype is not None and self.half_unet:
            store_frozen_weights([self.unet], dtype)
            if all(p.dtype == dtype for p in self.unet.parameters()):
                self.unet_dtype = dtype

    def on_fit_end(self) -> None:
        if self.gradient_checkpointing:
            self.unet.disable_gradient_checkpointing()
        frozen_fp32 = self.half_frozen + self.half_frozen_matmuls + (("unet",) if self.half_unet else ())
        store_frozen_weights([getattr(self, name) for name in frozen_fp32], torch.float32)
        self.unet_dtype = None
        if self.master_weights is not None:
            self.master_weights.restore()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = self.trainable_named_parameters()
        self.master_weights = None
        # bf16 only: fp16's gradient scaler unscales the optimiser's tensors before on_before_optimizer_step; and
        # one device only: DDP would average the bf16 gradients in bf16
        if self.half_trainable and autocast_dtype(self.trainer.precision) == torch.bfloat16 and self.trainer.world_size == 1:
            cast = autocast_cast_weights(self)
            if cast:
                self.master_weights = MasterWeights(cast, torch.bfloat16)
        masters = self.master_weights.by_name() if self.master_weights is not None else {}
        optimizer = torch.optim.Adam([masters.get(name, p) for name, p in trainable.items()], lr=self.lr, fused=True)
        if self.master_weights is not None:
            optimizer.register_step_post_hook(lambda *_: self.master_weights.publish())
        return optimizer

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.master_weights is not None:
            self.master_weights.take_gradients()

    def step_generator(self, step: int | None = None) -> torch.Generator:
        """The generator of training step ``step`` (default: the current one) on this rank."""
        return step_generator(self.seed, self.global_step if step is None else step, self.global_rank, self.device)

    def denoising_loss(self, latents: torch.Tensor, prompt_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """MSE between the UNet's prediction and its target (noise, or velocity for v-prediction models)."""
        return self.denoising_losses(latents, [(prompt_ids, latents.shape[0])], generator)[0]

    def denoising_losses(self, latents: torch.Tensor, prompts: Sequence[tuple[torch.Tensor, int]],
                         generator: torch.Generator) -> list[torch.Tensor]:
        """``denoising_loss`` of each group of ``latents`` in one UNet call: ``prompts`` gives each group's ``1×77``
        prompt ids and its number of latents, in order (DreamBooth's instance and class images, as
        ``train_dreambooth.py`` batches them)."""
        noise = torch.randn(latents.shape, generator=generator, device=self.device, dtype=latents.dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator, device=self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.predict(noisy, timesteps, self.encode_prompts(prompts))
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        if len(prompts) == 1:
            return [F.mse_loss(prediction.float(), target.float())]
        sizes = [count for _, count in prompts]
        return [F.mse_loss(group.float(), wanted.float())
                for group, wanted in zip(prediction.split(sizes), target.split(sizes))]

    def encode_prompt(self, prompt_ids: torch.Tensor, count: int) -> torch.Tensor:
        """The text encoder's hidden states of the ``1×77`` ``prompt_ids``, ``count`` times over (``count×77×d``)."""
        return self.encode_prompts([(prompt_ids, count)])

    def encode_prompts(self, prompts: Sequence[tuple[torch.Tensor, int]]) -> torch.Tensor:
        """The text encoder's hidden states of each ``1×77`` prompt of ``prompts``, as many times over as its count,
        in order (``sum(counts)×77×d``).

        Every image of a group has the same prompt, so the prompts are encoded once, in one call, and repeated: the
        same numbers as encoding each image's prompt, and in the backward pass the repeat sums the images' gradients
        as the encoder's own backward would, for a fraction of the encoder's work and activation memory. A text
        encoder that drops out at random while training gives each image other numbers, so it encodes each."""
        if self.text_encoder_drops_out is None:
            self.text_encoder_drops_out = _drops_out(self.text_encoder)
        each_image = self.text_encoder.training and self.text_encoder_drops_out
        if len(prompts) == 1:
            prompt_ids, count = prompts[0]
            if each_image:
                return self.text_encoder(prompt_ids.expand(count, -1))[0]
            return self.text_encoder(prompt_ids)[0].repeat(count, 1, 1)
        if each_image:
            return self.text_encoder(torch.cat([prompt_ids.expand(count, -1) for prompt_ids, count in prompts]))[0]
        hidden = self.text_encoder(torch.cat([prompt_ids for prompt_ids, _ in prompts]))[0]
        return torch.cat([hidden[index:index + 1].expand(count, -1, -1) for index, (_, count) in enumerate(prompts)])

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction for ``noisy`` latents at ``timesteps``, conditioned on ``hidden``; in ``unet_dtype``
        outside autocast where that is set (``half_unet``), else in the surrounding precision."""
        if self.unet_dtype is None:
            return self.unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        with torch.autocast(self.device.type, enabled=False):
            return self.unet(noisy.to(self.unet_dtype), timesteps,
                             encoder_hidden_states=hidden.to(self.unet_dtype)).sample

    def draw_latents(self, pool: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch: ``batch_size`` latents sampled from distributions of ``pool`` drawn by ``generator``."""
        return sample_latents(draw_batch(pool, self.batch_size, generator), self.scaling_factor, generator)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        generator = self.step_generator()
        latents = self.draw_latents(self.latent_dist, generator)
        if self.prior_latent_dist is None:
            loss = self.denoising_loss(latents, self.prompt_ids, generator)
        else:  # the instance and class images in one UNet call
            prior_latents = self.draw_latents(self.prior_latent_dist, generator)
            loss, prior = self.denoising_losses(
                torch.cat([latents, prior_latents]),
                [(self.prompt_ids, latents.shape[0]), (self.prior_prompt_ids, prior_latents.shape[0])], generator)
            self.log("train/prior_loss", prior)
            loss = loss + self.prior_loss_weight * prior
        self.log("train/loss", loss)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = self.trainable_named_parameters()
        masters = self.master_weights.by_name() if self.master_weights is not None else {}
        checkpoint["state_dict"] = {k: masters[k].detach().clone() if k in masters else v
                                    for k, v in checkpoint["state_dict"].items() if k in trainable}


def _drops_out(model: nn.Module) -> bool:
    """Whether ``model`` has a dropout of non-zero probability: a dropout layer, or a ``config.attention_dropout``
    (transformers' CLIP drops attention weights with ``nn.functional.dropout``, no layer)."""
    attention = float(getattr(getattr(model, "config", None), "attention_dropout", 0.0) or 0.0)
    return attention > 0 or any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
