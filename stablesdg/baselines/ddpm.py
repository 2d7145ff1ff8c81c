"""DDPM from scratch (Yang et al.'s baseline): a diffusers ``UNet2DModel`` trained with ``DDPMScheduler``'s
noise-prediction objective on one category's images."""

from __future__ import annotations

from typing import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from stablesdg.training import draw_batch, step_generator


def build_unet(channels: int, resolution: int, widths: Sequence[int], layers_per_block: int = 2) -> UNet2DModel:
    """A pixel-space UNet; attention in the two lowest-resolution blocks (as the DDPM paper's 32-64 px models)."""
    widths = list(widths)
    down = ["DownBlock2D"] * (len(widths) - 2) + ["AttnDownBlock2D", "DownBlock2D"]
    up = ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * (len(widths) - 2)
    return UNet2DModel(sample_size=resolution, in_channels=channels, out_channels=channels,
                       layers_per_block=layers_per_block, block_out_channels=tuple(widths),
                       down_block_types=tuple(down[: len(widths)]), up_block_types=tuple(up[: len(widths)]),
                       norm_num_groups=min(32, widths[0]))


class DDPM(L.LightningModule):
    """MSE between the true and predicted noise at uniformly drawn timesteps; AdamW.

    ``images`` (in [-1, 1]) is the training set: step ``k`` draws its ``batch_size`` images, noise and timesteps
    from ``step_generator(seed, k, rank)``, so a resumed run repeats an uninterrupted one exactly.
    """

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, lr: float = 1e-4,
                 images: torch.Tensor | None = None, batch_size: int = 16, seed: int = 0):
        super().__init__()
        self.unet = unet
        self.scheduler = scheduler
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.register_buffer("images", images, persistent=False)

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The denoising loss of ``images``; with ``generator`` the noise and timesteps are reproducible."""
        device = images.device
        noise = torch.randn(images.shape, generator=generator, device=generator.device if generator else device).to(device)
        steps = torch.randint(0, self.scheduler.config.num_train_timesteps, (images.shape[0],), generator=generator,
                              device=generator.device if generator else device).to(device)
        noisy = self.scheduler.add_noise(images, noise, steps)
        return F.mse_loss(self.unet(noisy, steps).sample, noise)

    def training_step(self, batch, batch_idx):
        generator = step_generator(self.seed, self.global_step, self.global_rank, self.device)
        loss = self.loss(draw_batch(self.images, self.batch_size, generator), generator)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.unet.parameters(), lr=self.lr, fused=True)
