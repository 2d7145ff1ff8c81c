"""Loading real Stable Diffusion 1.5 weights: a local diffusers folder, a single ``.safetensors`` file, or a hub id.

Only the tokenizer, text encoder, VAE, UNet and scheduler are loaded; never the safety
checker. The network is used only when ``model.path`` names a hub id and the hub is online.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from stablesdg import weight_files
from stablesdg.errors import UserError, first_line
from stablesdg.models.components import SDComponents, with_speed_options, without_library_progress_bars
from stablesdg.weight_files import HOW_TO_PROVIDE, SD15_WEIGHT_COMPONENTS, folder_weight_variants, sd15_location

log = logging.getLogger(__name__)


def _components_from_pretrained(source: str, local_files_only: bool, resolution: int, name: str,
                                variants: Mapping[str, str | None]) -> SDComponents:
    """The components in float32 whatever the files hold (transformers would keep an fp16 text encoder in fp16):
    the stages train float32 masters and lower precision only where their precision settings ask."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kwargs = {"local_files_only": local_files_only}
    return SDComponents(
        name=name,
        resolution=resolution,
        tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs),
        text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=torch.float32,
                                                   variant=variants["text_encoder"], **kwargs).eval(),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32,
                                          variant=variants["vae"], **kwargs).eval(),
        unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=torch.float32,
                                                  variant=variants["unet"], **kwargs).eval(),
        scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs),
    )


def _components_from_single_file(path: Path, config: str | None, resolution: int, name: str) -> SDComponents:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    local_config = config is not None and Path(config).expanduser().is_dir()
    if config is None and weight_files.hub_offline():
        raise UserError(
            f"model.path={path} is a single-file checkpoint; offline, diffusers also needs the model's config: "
            "set model.config=<local diffusers SD1.5 folder (configs suffice)>"
        )
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=config, local_files_only=local_config or weight_files.hub_offline(),
            load_safety_checker=False, torch_dtype=torch.float32,
        )
    except (OSError, ValueError) as err:
        if config is not None:
            raise
        raise UserError(
            f"cannot load model.path={path} ({first_line(err)}): a single-file checkpoint comes without the model's "
            "configs, which diffusers fetches from the hub when model.config is unset; set model.config=<local "
            "diffusers SD1.5 folder (configs suffice)>, or model.path to a diffusers folder"
        ) from err
    return SDComponents(name, resolution, pipe.tokenizer, pipe.text_encoder.eval(), pipe.vae.eval(), pipe.unet.eval(),
                        DDPMScheduler.from_config(pipe.scheduler.config))


@with_speed_options
def load_sd15(path: str | None = None, resolution: int = 512, config: str | None = None, name: str = "sd15",
              variant: str | None = None) -> SDComponents:
    """Load SD1.5 (or any SD1.x-architecture model) from ``path``, in float32; a one-line ``UserError`` when it cannot.

    ``path`` may be a local diffusers folder, a local ``.safetensors`` single-file checkpoint
    (with ``config`` a local diffusers folder or hub id for its configs), or a hub id. A hub id
    is downloaded only when the hub is online (``HF_HUB_OFFLINE`` unset); offline it is read from
    the local Hugging Face cache. ``variant`` (``fp16``, ...) picks a folder's or hub id's weight variant; unset, a
    folder's component holding only one variant is read in that one (see ``folder_weight_variants``).
    """
    kind, source = sd15_location(path, variant)
    weight_files.require_hub_reachable(kind, source, config)
    try:
        if kind == "folder":
            variants = folder_weight_variants(Path(source), variant)
            for component, chosen in variants.items():
                if chosen != variant:
                    log.info("model.path: %s/ holds only %s weights; reading them", component, chosen)
            with without_library_progress_bars():  # a few seconds from a local disk; in a log, carriage returns
                return _components_from_pretrained(source, True, resolution, name, variants)
        if kind == "file":
            with without_library_progress_bars():
                return _components_from_single_file(Path(source), config, resolution, name)
        offline = weight_files.hub_offline()
        log.info("loading %s from the Hugging Face hub%s", source, " cache (offline)" if offline else "")
        return _components_from_pretrained(source, offline, resolution, name, dict.fromkeys(SD15_WEIGHT_COMPONENTS, variant))
    except UserError:
        raise
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model.path={path} ({first_line(err)}); {HOW_TO_PROVIDE}") from err
