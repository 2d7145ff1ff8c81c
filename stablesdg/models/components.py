"""``SDComponents``: the five parts of a Stable Diffusion model, as every stage receives them."""

from __future__ import annotations

import functools
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from stablesdg.choices import compile_mode, require_resolution

log = logging.getLogger(__name__)
CUDA_GRAPH_SKIPS_LOGGER = "torch._inductor.cudagraph_utils.__cudagraphs"  # torch's artifact logger of graphs it skips


@dataclass
class SDComponents:
    """Tokenizer, text encoder, VAE, UNet and noise scheduler of one Stable Diffusion model.

    ``resolution`` is the image side the model trains and generates at (512 for SD1.5);
    ``name`` is the ``model=`` config it came from.
    """

    name: str
    resolution: int
    tokenizer: Any
    text_encoder: nn.Module
    vae: nn.Module
    unet: nn.Module
    scheduler: Any

    def __post_init__(self) -> None:
        require_resolution(self.resolution, self.vae_scale_factor)

    def modules(self) -> dict[str, nn.Module]:
        """The three networks by name."""
        return {"text_encoder": self.text_encoder, "vae": self.vae, "unet": self.unet}

    def parameter_counts(self) -> dict[str, int]:
        """Number of parameters of each network."""
        return {name: sum(p.numel() for p in module.parameters()) for name, module in self.modules().items()}

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD1.5)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of a latent at ``resolution``."""
        side = self.resolution // self.vae_scale_factor
        return (int(self.unet.config.in_channels), side, side)

    def pipeline(self, scheduler: Any = None, img2img: bool = False):
        """These components as a diffusers ``StableDiffusionPipeline`` (or ``…Img2ImgPipeline``), sharing the weights.

        No safety checker; ``scheduler`` defaults to the model's own.
        """
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
        return cls(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                   scheduler=self.scheduler if scheduler is None else scheduler, safety_checker=None,
                   feature_extractor=None, requires_safety_checker=False)

    def summary(self) -> dict[str, Any]:
        """Name, resolution, latent shape, parameter counts, dtype and tokenizer size, for display and result.json."""
        return {
            "name": self.name,
            "resolution": self.resolution,
            "latent_shape": list(self.latent_shape()),
            "parameters": self.parameter_counts(),
            "dtype": str(next(self.unet.parameters()).dtype).removeprefix("torch."),
            "tokenizer_size": len(self.tokenizer),
            "scheduler": type(self.scheduler).__name__,
        }


def sd15_noise_scheduler():
    """The DDPM training scheduler of SD1.5 (scaled-linear betas 0.00085–0.012, 1,000 steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, steps_offset=1, prediction_type="epsilon",
    )


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build random weights under ``torch.manual_seed(seed)``, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def apply_speed_options(unet: nn.Module, vae: nn.Module | None, channels_last: bool = False,
                        compile: bool | str = False) -> None:
    """The optional fast paths, in place: NHWC (``channels_last``) weights for the UNet and VAE, and
    ``torch.compile`` of the UNet in mode ``compile_mode(compile)``, or with the ``cudagraphs`` backend for
    ``compile="cudagraphs"`` (``nn.Module.compile``: parameter names and state dicts stay unchanged; compilation
    happens at the first call; off a GPU the backend runs the traced graph without CUDA graphs)."""
    mode = compile_mode(compile)
    if channels_last:
        for module in (unet, vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if mode is not None:
        # diffusers' up-sampling asks is_torch_version(), a cached function, in the forward pass under bf16: dynamo
        # traces through the cache and says so in nine lines per call site, about a check that gives the same answer
        warnings.filterwarnings("ignore", message=r"Dynamo detected a call to a `functools.lru_cache`-wrapped function",
                                category=UserWarning)
    if mode in ("cudagraphs", "reduce-overhead"):
        say_cpu_cuda_graph_skips_in_one_line(mode)
    if mode == "cudagraphs":
        unet.compile(backend="cudagraphs")
    elif mode is not None:
        unet.compile(mode=mode)


class CpuCudaGraphSkipsInOneLine(logging.Filter):
    """Turns torch's warning that a graph compiled on a CPU runs without CUDA graphs (seven lines with a stack, at each
    compiled graph) into one line of ours, once per model compiled (``say_cpu_cuda_graph_skips_in_one_line``);
    torch's other records (a GPU's skipped graphs) pass."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "due to cpu device" not in record.getMessage():
            return True
        if not self.said:
            self.said = True
            log.warning("model.compile=%s: CUDA graphs need a CUDA device; on a CPU the compiled UNet runs without "
                        "them", self.mode)
        return False


def say_cpu_cuda_graph_skips_in_one_line(mode: str) -> None:
    """Arms ``CpuCudaGraphSkipsInOneLine`` on torch's logger (installed once per process) to say its line, naming
    ``mode``, once more."""
    logger = logging.getLogger(CUDA_GRAPH_SKIPS_LOGGER)
    installed = [f for f in logger.filters if isinstance(f, CpuCudaGraphSkipsInOneLine)]
    if installed:
        installed[0].mode, installed[0].said = mode, False
    else:
        logger.addFilter(CpuCudaGraphSkipsInOneLine(mode))


class DropRecordsContaining(logging.Filter):
    """A logger filter that drops the records whose message contains ``text``; others pass."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextmanager
def without_log_records(logger_name: str, text: str) -> Iterator[None]:
    """Inside, the records of logger ``logger_name`` whose message contains ``text`` are dropped; others pass."""
    drop = DropRecordsContaining(text)
    logger = logging.getLogger(logger_name)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextmanager
def without_library_progress_bars() -> Iterator[None]:
    """Inside, transformers and diffusers show no progress bar of their own ("Loading weights", "Writing model
    shards", "Loading pipeline components..."): quick, and in a log file a line of carriage returns. The previous
    settings return after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    enabled = [library for library in (transformers_logging, diffusers_logging) if library.is_progress_bar_enabled()]
    for library in enabled:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library in enabled:
            library.enable_progress_bar()


def move_pipeline(pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
    """Put a diffusers pipeline on ``device`` with its weights in ``dtype``.

    diffusers warns at every dtype cast that some modules "should be kept in float32", also when the list of
    such modules is empty (as for the SD1.5 UNet and VAE); that empty notice alone is dropped.
    """
    pipe.to(device)
    if all(p.dtype == dtype for m in pipe.components.values() if isinstance(m, nn.Module) for p in m.parameters()):
        return
    with without_log_records("diffusers.models.modeling_utils", "should be kept in float32: []"):
        pipe.to(dtype=dtype)


def with_speed_options(builder: Callable[..., SDComponents]) -> Callable[..., SDComponents]:
    """Give a model builder the ``channels_last`` and ``compile`` options of ``conf/model/`` (see ``apply_speed_options``).
    A ``resolution`` or ``compile`` setting that cannot work is refused before the model is built or read."""

    @functools.wraps(builder)
    def build(*args: Any, channels_last: bool = False, compile: bool | str = False, **kwargs: Any) -> SDComponents:
        if "resolution" in kwargs:
            require_resolution(kwargs["resolution"])
        compile_mode(compile)
        components = builder(*args, **kwargs)
        apply_speed_options(components.unet, components.vae, channels_last, compile)
        return components

    return build
