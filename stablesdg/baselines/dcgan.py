"""DCGAN (Radford et al.) for one defect category: the standard 64 px (or 128 px) generator/discriminator pair."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from stablesdg.training import draw_batch, step_generator

OPTIMIZER_STEPS = 2  # Lightning counts the discriminator's and the generator's step of each iteration


def _generator(latent_dim: int, width: int, channels: int, resolution: int) -> nn.Sequential:
    doublings = {64: 4, 128: 5}[resolution]
    layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, width * 2 ** (doublings - 1), 4, 1, 0, bias=False),
                               nn.BatchNorm2d(width * 2 ** (doublings - 1)), nn.ReLU(True)]
    for level in range(doublings - 1, 0, -1):
        layers += [nn.ConvTranspose2d(width * 2 ** level, width * 2 ** (level - 1), 4, 2, 1, bias=False),
                   nn.BatchNorm2d(width * 2 ** (level - 1)), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def _discriminator(width: int, channels: int, resolution: int) -> nn.Sequential:
    doublings = {64: 4, 128: 5}[resolution]
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
    for level in range(1, doublings):
        layers += [nn.Conv2d(width * 2 ** (level - 1), width * 2 ** level, 4, 2, 1, bias=False),
                   nn.BatchNorm2d(width * 2 ** level), nn.LeakyReLU(0.2, True)]
    layers += [nn.Conv2d(width * 2 ** (doublings - 1), 1, 4, 1, 0, bias=False), nn.Flatten()]
    return nn.Sequential(*layers)


def _dcgan_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGAN(L.LightningModule):
    """Non-saturating GAN loss, Adam(lr, betas=(0.5, 0.999)) for both nets, one D and one G step per iteration.

    ``images`` (``(N, channels, resolution, resolution)`` in [-1, 1]) is the training set: iteration ``k`` draws
    its ``batch_size`` images and its noise from ``step_generator(seed, k, rank)``, so a resumed run repeats an
    uninterrupted one exactly. Without ``images`` the module only generates.
    """

    def __init__(self, channels: int = 1, resolution: int = 64, latent_dim: int = 100, width: int = 64,
                 lr: float = 2e-4, images: torch.Tensor | None = None, batch_size: int = 16, seed: int = 0):
        super().__init__()
        if resolution not in (64, 128):
            raise ValueError("DCGAN resolution must be 64 or 128")
        self.save_hyperparameters(ignore=["images"])
        self.automatic_optimization = False
        self.generator = _generator(latent_dim, width, channels, resolution)
        self.discriminator = _discriminator(width, channels, resolution)
        self.apply(_dcgan_init)
        self.register_buffer("images", images, persistent=False)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from ``noise`` of shape ``(B, latent_dim)``."""
        return self.generator(noise[:, :, None, None])

    def training_step(self, batch, batch_idx):
        generator = step_generator(self.hparams.seed, self.global_step // OPTIMIZER_STEPS, self.global_rank, self.device)
        real = draw_batch(self.images, self.hparams.batch_size, generator)
        opt_g, opt_d = self.optimizers()
        noise = torch.randn(real.shape[0], self.hparams.latent_dim, generator=generator, device=real.device,
                            dtype=real.dtype)
        fake = self(noise)
        ones, zeros = torch.ones(real.shape[0], 1, device=real.device), torch.zeros(real.shape[0], 1, device=real.device)
        d_loss = (F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
                  + F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros))
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.log_dict({"train/d_loss": d_loss, "train/g_loss": g_loss})

    def configure_optimizers(self):
        betas = (0.5, 0.999)
        return (torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas, fused=True),
                torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas, fused=True))
