"""The values a setting may take, and their one-line checks, importable without torch: the entry point refuses a bad
choice before the heavy libraries load, and the modules that act on a choice read its names from here."""

from __future__ import annotations

import math
from typing import Any

from stablesdg.errors import UserError, first_line, is_integer

SPLIT_NAMES = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

SCHEDULERS = {  # stage.scheduler: (the class, ours or diffusers', and its extra settings)
    # DDIM, PNDM and DDPM with no read of a GPU value per step (HostTimesteps in stablesdg.models.schedulers)
    "ddim": ("HostTimestepsDDIMScheduler", {}),
    "pndm": ("HostTimestepsPNDMScheduler", {}),
    "ddpm": ("HostTimestepsDDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
}
EXTRACTORS = ("inception", "random_inception", "pixels")  # stage.features
COMPOSITION_MODES = ("none", "substitute", "expand")  # stage.mode of stage=classify
ARCHITECTURES = {  # classifier.arch: its torchvision model at classifier.depth
    "alexnet": lambda depth: "alexnet",
    "vgg": lambda depth: f"vgg{depth or 16}",
    "resnet": lambda depth: f"resnet{depth or 18}",
    "squeezenet": lambda depth: "squeezenet1_1",
    "densenet": lambda depth: f"densenet{depth or 121}",
}
ONE_SIZE = ("alexnet", "squeezenet")  # no classifier.depth to choose
TRAINED_STAGES = ("ti", "lora", "full", "dcgan", "ddpm", "classify")  # run by a Lightning Trainer: DDP splits their steps
# the models that stand in for SD1.5 without its trained weights (conf/model/), and the stages that adapt or run them
ROOT_VARIABLES = {"neu": "STABLESDG_NEU_ROOT", "ccbsd": "STABLESDG_CCBSD_ROOT"}  # conf/dataset/<name>.yaml's root
STAND_IN_MODELS = ("tiny", "sd15_random")
DIFFUSION_STAGES = ("ti", "lora", "full", "generate")
# stages whose work runs on the trainer's device (the pipeline: through its steps)
DEVICE_STAGES = (*TRAINED_STAGES, "generate", "fid", "sample", "pipeline")
ADAPTERS = ("lora", "ti", "full", "base")  # stage.adapter of stage=generate
INITS = ("image", "noise")  # stage.init of stage=generate
SAMPLERS = ("dcgan", "ddpm", "ddim")  # stage.generator of stage=sample
PIPELINE_SIDE_MULTIPLE = 8  # StableDiffusionPipeline.check_inputs: "`height` and `width` have to be divisible by 8"
# model.compile by name: torch.compile's modes, and its cudagraphs backend (CUDA graphs of the eager kernels, with no
# code generation: a shorter compile than reduce-overhead's, without its fused kernels)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "cudagraphs")
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # what wandb.init's settings accept
WANDB_ONLINE_MODES = ("online", "shared", "run")  # those that talk to the W&B server, with an API key


def require_scheduler(name: str) -> None:
    """A one-line ``UserError`` unless ``name`` is one of ``SCHEDULERS``."""
    if name not in SCHEDULERS:
        raise UserError(f"unknown stage.scheduler={name!r}; choose from {', '.join(SCHEDULERS)}")


def require_extractor(name: str) -> None:
    """A one-line ``UserError`` unless ``name`` is one of ``EXTRACTORS``."""
    if name not in EXTRACTORS:
        raise UserError(f"unknown stage.features={name!r}; choose from {', '.join(EXTRACTORS)}")


def require_mode(mode: str) -> None:
    """A one-line ``UserError`` unless ``mode`` is one of ``COMPOSITION_MODES``."""
    if mode not in COMPOSITION_MODES:
        raise UserError(f"stage.mode must be one of {COMPOSITION_MODES}, got {mode!r}")


def architecture_name(arch: str, depth: int | None = None) -> str:
    """The torchvision model name that ``classifier.arch`` and ``classifier.depth`` name (``resnet``, 50:
    ``resnet50``); a one-line ``UserError`` for an unknown architecture or a depth given to one of one size.
    Whether torchvision has that depth is for ``stablesdg.classify.networks.torchvision_name`` to say
    (``stage=classify``'s checks ask it when a depth is given)."""
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown classifier {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if arch in ONE_SIZE and depth is not None:
        raise UserError(f"classifier.depth={depth} does not apply to {arch}, which comes in one size; leave it out")
    return ARCHITECTURES[arch](depth)


def with_depth_built(classifier: dict[str, Any]) -> dict[str, Any]:
    """A classifier's settings with a null ``depth`` as the depth of the network it builds (``resnet``: 18, as
    ``ARCHITECTURES`` names ``resnet18``), so the same network has the same settings; as they are for a network of one
    size, or an architecture the tool does not know."""
    arch = classifier.get("arch")
    if classifier.get("depth") is not None or arch not in ARCHITECTURES or arch in ONE_SIZE:
        return classifier
    digits = ARCHITECTURES[arch](None).removeprefix(arch)
    return {**classifier, "depth": int(digits)} if digits.isdigit() else classifier


def sampled_model(generator: str) -> str:
    """The training stage whose model ``stage=sample`` draws from with ``stage.generator``: ``dcgan``, or ``ddpm``
    (for both DDPM and DDIM sampling)."""
    return "dcgan" if generator == "dcgan" else "ddpm"


def require_wandb_mode(mode: object, setting: str) -> str:
    """``mode`` when wandb accepts it; else a one-line ``UserError`` naming ``setting`` (wandb itself refuses it
    with a stack trace, and only when the first step logs, after the model is built)."""
    if mode not in WANDB_MODES:
        raise UserError(f"{setting} must be online, offline or disabled (W&B's modes), got {mode!r}")
    return str(mode)


def require_wandb_credentials(mode: str, setting: str) -> None:
    """For W&B ``mode``s that reach the server (``WANDB_ONLINE_MODES``): a one-line ``UserError`` naming ``setting``
    unless wandb finds an API key (``WANDB_API_KEY``, or what ``wandb login`` stored), looked up without the network
    or a prompt and without a word on the console. wandb itself stops with a stack trace at the run's first log,
    after the work.

    wandb's settings of a process are made once, from the environment, at its first use: this check, in a command.
    ``mode`` goes there, since ``wandb.login`` looks for no key in offline mode (``WANDB_MODE=offline`` with
    ``logger.mode=online``)."""
    if mode not in WANDB_ONLINE_MODES:
        return
    import contextlib
    import io
    import os
    from unittest import mock

    import wandb

    quiet = io.StringIO()  # "Loaded credentials ... from WANDB_API_KEY", "W&B API key is configured"
    try:
        with mock.patch.dict(os.environ, {"WANDB_MODE": mode}), contextlib.redirect_stderr(quiet), \
                contextlib.redirect_stdout(quiet):
            found = wandb.login(verify=False, prompt=False)
    except wandb.errors.Error as err:  # a key of the wrong form
        raise UserError(f"{setting}={mode}: W&B refused its API key: {first_line(err)}") from err
    if not found:
        raise UserError(f"{setting}={mode} needs a W&B API key and none is set: set WANDB_API_KEY or run `wandb login`, "
                        f"or log offline ({setting}=offline) and upload later with `wandb sync`")


def compile_mode(value: bool | str | None) -> str | None:
    """``torch.compile``'s mode for the ``model.compile`` setting: None for false, ``"default"`` for true, else one
    of ``COMPILE_MODES`` by name (``reduce-overhead`` replays CUDA graphs, which saves the kernel launches' host
    time; ``cudagraphs`` names torch's backend of that name, not a mode); a one-line error for anything else."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise UserError(f"model.compile={value!r} is not one of true, false, {', '.join(COMPILE_MODES)}")


def require_resolution(resolution: object, vae_scale_factor: int | None = None) -> int:
    """``resolution`` when it is a positive multiple of 8 (diffusers' Stable Diffusion pipelines refuse any other
    height or width) and of ``vae_scale_factor`` when given; else a one-line ``UserError`` naming
    ``model.resolution``."""
    multiple = math.lcm(PIPELINE_SIDE_MULTIPLE, vae_scale_factor or 1)
    if not is_integer(resolution) or resolution < 1 or resolution % multiple:
        vae = f"; the VAE has {vae_scale_factor} pixels per latent cell" if vae_scale_factor else ""
        raise UserError(f"model.resolution must be a positive multiple of {multiple} (diffusers' pipelines take sides "
                        f"divisible by {PIPELINE_SIDE_MULTIPLE}{vae}), got {resolution}")
    return resolution
