"""The exact Stable Diffusion 1.5 architecture with random weights (benchmarks, full-size smoke tests).

UNet 859.5M, VAE 83.7M and CLIP ViT-L/14 text encoder 123.1M parameters, with the real
49,408-token tokenizer. The configs are those of ``stable-diffusion-v1-5``'s ``config.json`` files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from stablesdg.errors import UserError, first_line
from stablesdg.models.components import (
    SDComponents, sd15_noise_scheduler, seeded, with_speed_options, without_library_progress_bars,
)
from stablesdg.models.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer
from stablesdg.weight_files import make_weights_cache

SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, center_input_sample=False, mid_block_scale_factor=1,
)
SD15_VAE_CONFIG = dict(
    sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, act_fn="silu", scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD15_TEXT_ENCODER_CONFIG = dict(
    vocab_size=CLIP_VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)


log = logging.getLogger(__name__)


def _draw(seed: int) -> tuple[CLIPTextModel, AutoencoderKL, UNet2DConditionModel]:
    with seeded(seed):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER_CONFIG))
    return text_encoder, vae, unet


def weights_cache_folder(cache: str | Path, seed: int) -> Path:
    """The folder under ``cache`` that holds the weights ``seed`` draws: named by the seed and a digest of the
    architecture and of the torch, diffusers and transformers versions (whose initialisers draw the numbers), so a
    cache written by other code is never read."""
    key = json.dumps([SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD15_TEXT_ENCODER_CONFIG, torch.__version__,
                      diffusers.__version__, transformers.__version__], sort_keys=True)
    return Path(cache).expanduser() / f"sd15_random-seed{int(seed)}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _save(models: dict[str, torch.nn.Module], folder: Path) -> None:
    """Write ``models`` as ``save_pretrained`` folders (safetensors) into ``folder``, whole or not at all."""
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with without_library_progress_bars():  # the text encoder's "Writing model shards", a bar of carriage returns
            for name, model in models.items():
                model.save_pretrained(staging / name)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"model.weights_cache: cannot write {folder} ({err.strerror or err})") from err
    try:
        staging.rename(folder)
    except OSError:  # another process wrote the same weights first
        shutil.rmtree(staging, ignore_errors=True)


@with_speed_options
def build_sd15_random(seed: int = 0, resolution: int = 512, name: str = "sd15_random",
                      weights_cache: str | None = None) -> SDComponents:
    """SD1.5's UNet, VAE and text encoder with seeded random weights (fp32, on the CPU).

    With ``weights_cache`` (a folder), the first build of a seed also saves its weights there (safetensors, see
    ``weights_cache_folder``) and later builds load them instead of drawing 1.07 B random numbers again: the same
    weights bit for bit, in about a second instead of half a minute.
    """
    folder = weights_cache_folder(make_weights_cache(weights_cache), seed) if weights_cache else None
    if folder is not None and folder.is_dir():
        try:
            with without_library_progress_bars():
                text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
                vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
                unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True)
        except (OSError, ValueError) as err:
            raise UserError(f"model.weights_cache: {folder} cannot be read ({first_line(err)}); delete it to draw the "
                            "weights again") from err
    else:
        text_encoder, vae, unet = _draw(seed)
        if folder is not None:
            log.info("saving the random weights of seed %d into %s", seed, folder)
            _save({"text_encoder": text_encoder, "vae": vae, "unet": unet}, folder)
    return SDComponents(name, resolution, build_clip_tokenizer(), text_encoder.eval(), vae.eval(), unet.eval(),
                        sd15_noise_scheduler())
