"""The exact Stable Diffusion 1.5 architecture with random weights (benchmarks, full-size smoke tests).

UNet 859.5M, VAE 83.7M and CLIP ViT-L/14 text encoder 123.1M parameters, with the real
49,408-token tokenizer. The configs are those of ``stable-diffusion-v1-5``'s ``config.json`` files.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from stablesdg.models.components import SDComponents, sd15_noise_scheduler, seeded, with_speed_options
from stablesdg.models.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer

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


@with_speed_options
def build_sd15_random(seed: int = 0, resolution: int = 512, name: str = "sd15_random") -> SDComponents:
    """SD1.5's UNet, VAE and text encoder with seeded random weights (fp32, on the CPU)."""
    with seeded(seed):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER_CONFIG))
    return SDComponents(name, resolution, build_clip_tokenizer(), text_encoder.eval(), vae.eval(), unet.eval(),
                        sd15_noise_scheduler())
