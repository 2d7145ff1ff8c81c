"""A tiny random-weight Stable Diffusion (the shape of diffusers' test components) for tests and the demo."""

from __future__ import annotations

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from stablesdg.models.components import SDComponents, sd15_noise_scheduler, seeded, with_speed_options
from stablesdg.models.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer


@with_speed_options
def build_tiny_sd(seed: int = 0, resolution: int = 64, name: str = "tiny") -> SDComponents:
    """A CPU-fast SD with random weights, the real CLIP tokenizer, and the same structure as SD1.5.

    UNet (32/64 channels, one cross-attention level), a 2-level VAE (latents at half the image
    side) and a 5-layer, 32-wide CLIP text encoder. Identical weights for identical ``seed``.
    """
    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=resolution // 2, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=32,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, sample_size=resolution,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=5,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=32, layer_norm_eps=1e-5,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ))
    return SDComponents(name, resolution, build_clip_tokenizer(), text_encoder.eval(), vae.eval(), unet.eval(),
                        sd15_noise_scheduler())
