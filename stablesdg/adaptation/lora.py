"""Rank-r LoRA on every attention projection of the CLIP text encoder and the UNet, and its files.

Files written beside each other:

* ``pytorch_lora_weights.safetensors``: diffusers format; ``pipe.load_lora_weights(dir)`` loads
  UNet and text-encoder adapters (alpha = rank, so no metadata is needed).
* ``lora_kohya.safetensors``: kohya / A1111 / ComfyUI format (``lora_unet_*``, ``lora_te_*``
  keys with ``lora_down``, ``lora_up`` and ``alpha``).
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.helpers import disable_input_dtype_casting

from stablesdg.atomic_files import save_safetensors_atomic
from stablesdg.errors import UserError
from stablesdg.models import SDComponents
from stablesdg.models.components import seeded

TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"


def lora_config(rank: int, targets: tuple[str, ...]) -> LoraConfig:
    """LoRA with alpha = rank, A Gaussian and B zero (the model starts unchanged)."""
    if int(rank) < 1:
        raise UserError(f"stage.rank must be a positive integer, got {rank}")
    return LoraConfig(r=int(rank), lora_alpha=int(rank), init_lora_weights="gaussian", target_modules=list(targets))


def add_lora(components: SDComponents, rank: int, seed: int = 0) -> None:
    """Inject trainable LoRA adapters into the text encoder and UNet of ``components`` (in place), their initial
    values drawn under ``seed`` (the caller's RNG state is left as it was)."""
    with seeded(seed):
        inject_adapter_in_model(lora_config(rank, TEXT_ENCODER_TARGETS), components.text_encoder)
        components.unet.add_adapter(lora_config(rank, UNET_TARGETS))


@contextmanager
def autocast_chooses_adapter_input_dtype(components: SDComponents, active: bool) -> Iterator[None]:
    """While ``active``, peft leaves the adapters' inputs in their dtype and autocast alone casts them.

    Under mixed precision peft casts each adapter's bf16 input up to the adapter's fp32, and autocast casts it straight
    back to bf16 for the adapter's matrix product: two copies of the activation per adapted layer, and two more of
    its gradient, that change no number. Only for training under autocast (``trainer.precision=*-mixed``): outside
    autocast an input in a lower precision than the adapter would not meet it. Restores peft's setting on exit.
    """
    with ExitStack() as stack:
        for model in (components.text_encoder, components.unet):
            stack.enter_context(disable_input_dtype_casting(model, active=active))
        yield


def _text_encoder_kohya_prefix(key: str) -> str:
    # transformers 5 flattened CLIPTextModel (no ``text_model.``); kohya names keep it.
    return f"text_encoder.{key}" if key.startswith("text_model.") else f"text_encoder.text_model.{key}"


def kohya_state_dict(components: SDComponents) -> dict[str, torch.Tensor]:
    """The adapters in kohya/A1111 naming: ``lora_unet_…`` and ``lora_te_…`` with ``.alpha`` per module."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    peft_state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(components.unet).items()}
    peft_state.update({_text_encoder_kohya_prefix(k): v for k, v in get_peft_model_state_dict(components.text_encoder).items()})
    kohya = convert_state_dict_to_kohya(peft_state)
    return {k.replace("lora_te1_", "lora_te_", 1): v.detach().float().cpu().contiguous() for k, v in kohya.items()}


def save_lora(directory: Path, components: SDComponents, rank: int) -> None:
    """Write the diffusers and kohya LoRA files into ``directory`` (each atomically)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    directory.mkdir(parents=True, exist_ok=True)
    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(components.unet))
    text_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(components.text_encoder))
    staging = Path(tempfile.mkdtemp(prefix=".lora-", dir=directory))
    try:
        StableDiffusionPipeline.save_lora_weights(staging, unet_lora_layers=unet_layers,
                                                  text_encoder_lora_layers=text_layers, safe_serialization=True)
        (staging / DIFFUSERS_FILE).replace(directory / DIFFUSERS_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank),
                "ss_base_model_version": "sd_v1"}
    save_safetensors_atomic(directory / KOHYA_FILE, kohya_state_dict(components), metadata=metadata)
