"""VAE latents of a category's training images, computed once and cached in the artifact store.

The cache holds each image's latent *distribution* (mean and log-variance, as diffusers'
``latent_dist``), for the image and, with flips on, its horizontal mirror; training samples
from it every step, so no VAE encoder runs in the training loop. The file is keyed by a hash
of the model config (less the settings that leave the VAE's output alone), the resolution, the
flip setting, the images' digests and how the files were read (the dataset's image size, channels
and bit depth); a file lock makes concurrent jobs compute it once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from PIL import Image

from stablesdg.atomic_files import cached_tensor
from stablesdg.data.images import conform_image, image_to_tensor
from stablesdg.progress import progress_bar


def sd_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """An image as SD input: RGB (grayscale replicated), ``resolution``², values in [-1, 1], ``3×H×W``."""
    return image_to_tensor(conform_image(image, channels=3, size=resolution)) * 2.0 - 1.0


# Model settings that change no number the VAE encoder computes: compiling touches the UNet only, and a
# weights cache holds the very weights a build would draw. (channels_last stays in the key: NHWC convolutions
# may round differently, and a run must compute the same latents whether or not a cache exists.)
SETTINGS_WITHOUT_EFFECT_ON_LATENTS = frozenset({"compile", "weights_cache"})


def latent_cache_key(model_config: dict, resolution: int, flip: bool, digests: Sequence[str],
                     read_as: Mapping[str, Any] | None = None) -> str:
    """A short hash naming the cache file for these images under this model: equal for two model configs
    that differ only in ``SETTINGS_WITHOUT_EFFECT_ON_LATENTS``, different for any other difference, and for
    files (``digests``) read into other pixels (``read_as``: the dataset's ``DefectDataModule.read_as``)."""
    model = {k: v for k, v in model_config.items() if k not in SETTINGS_WITHOUT_EFFECT_ON_LATENTS}
    payload = json.dumps({"model": model, "resolution": resolution, "flip": flip, "images": list(digests),
                          "read_as": dict(read_as or {})}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@torch.no_grad()
def encode_distributions(vae: torch.nn.Module, pixels: torch.Tensor, batch_size: int = 8,
                         desc: str | None = None) -> torch.Tensor:
    """``N×2C×h×w``: the VAE posterior's mean and log-variance for each image in ``pixels``; with ``desc``, a
    progress bar of that name counts the images."""
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    parts = []
    with progress_bar(desc=desc, total=len(pixels), unit="image", disable=desc is None) as progress:
        for chunk in pixels.split(batch_size):
            parts.append(vae.encode(chunk.to(device, dtype)).latent_dist.parameters.float().cpu())
            progress.update(len(chunk))
    # The VAE may return channels-last strides; a cached copy loads contiguous. One layout for both keeps
    # training bit-identical whether the latents were just computed or read from the cache.
    return torch.cat(parts).contiguous()


def load_or_encode_latents(
    path: Path, vae: torch.nn.Module, images: Sequence[Image.Image], resolution: int, flip: bool, desc: str = "VAE latents"
) -> torch.Tensor:
    """The cached latent distributions at ``path``, computing and saving them first if needed (with a progress bar
    named ``desc``)."""
    def encode() -> torch.Tensor:
        pixels = torch.stack([sd_pixels(image, resolution) for image in images])
        return encode_distributions(vae, torch.cat([pixels, pixels.flip(-1)]) if flip else pixels, desc=desc)

    return cached_tensor(path, "latent_dist", encode, what="latent cache")


def sample_latents(distributions: torch.Tensor, scaling_factor: float, generator: torch.Generator) -> torch.Tensor:
    """Draw latents from cached distributions (as ``latent_dist.sample()``) and scale them for the UNet."""
    mean, logvar = distributions.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
    return (mean + std * noise.to(mean.device)) * scaling_factor
