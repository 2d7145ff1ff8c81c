"""Adaptation throughput: our `stage=ti` / `stage=lora` / `stage=full` against reference loops with the semantics of
diffusers' `examples/textual_inversion/textual_inversion.py` (VAE encode every step, fp32 text encoder under autocast, the
frozen UNet in the mixed-precision dtype outside it, AdamW over the whole embedding table, then the untouched rows
restored), `train_text_to_image_lora.py` (VAE encode every step; frozen weights, and under bf16 the adapters too,
in the mixed-precision dtype) and `train_dreambooth.py --train_text_encoder` without prior images (VAE encode every
step; UNet and text encoder trained in fp32 under autocast, AdamW over both, gradients clipped to norm 1), on the
same model, batch, resolution and device, in one process.

    python benchmarks/adaptation.py                                  # CPU, model=tiny
    python benchmarks/adaptation.py --model sd15_random --batch 4    # GPU: 512 px, bf16
    python benchmarks/adaptation.py --stages ti --rows defaults      # one row: our TI with its defaults
    python benchmarks/adaptation.py --stages full                    # full fine-tuning: every UNet weight trained
    python benchmarks/adaptation.py --rows defaults gradient_checkpointing   # the memory option: peak GiB on a GPU

Both run in the trainer's precision: fp32 on a CPU (trainer=cpu), bf16-mixed on a GPU (trainer=gpu; the
reference then keeps its frozen weights in bf16, as the scripts do with --mixed_precision=bf16);
`--set trainer.precision=bf16-mixed` gives a CPU the GPU's operator counts.

"achieved TFLOP/s" is the FLOPs of one of our training steps (UNet and text encoder, forward and backward, counted
by torch's FlopCounterMode, attention included also on a CPU) per second of our step; "% of peak" compares it with the
device's dense bf16 rate.
"operators per step" counts the aten operators of one step, views excepted (about one kernel launch each on a GPU).
"FLOP ratio" is the FLOPs of one reference step (its VAE encode included, counted the same way) over those of one of
ours: the ratio two loops running at the same TFLOP/s would give. Above it, our kernels run faster per FLOP than the
reference's; below it, slower.
"host syncs per step" (on a GPU) counts the times one step made the host wait for the GPU (torch's sync debug mode).
"model-only samples/s" times just the model's work of one of our steps: the text encoder and UNet forward, the loss
and the backward pass on a batch of latents drawn beforehand (no optimiser, no training loop). Every loop, the
reference's too, does at least that work, so "ratio bound" (model-only against the reference) is the highest ratio
any loop could reach without changing the model's arithmetic, and "ratio" against it shows what our loop costs.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from unittest import mock

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.training_utils import cast_training_params
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DeviceSyncs, OperatorCounter, achieved, announce, arguments, compile_option, compose,  # noqa: E402
                    flop_counter_mode, operators_and_syncs, peak_memory_gib, profiled, report, reset_peak_memory,
                    synchronize, timed, trainer_override)

from stablesdg.adaptation.latents import sd_pixels  # noqa: E402
from stablesdg.adaptation.lora import add_lora  # noqa: E402
from stablesdg.precision import autocast_dtype, trains_under_autocast  # noqa: E402
from stablesdg.stages.adapt import adapt_full, adapt_lora, adapt_ti  # noqa: E402


class StepTimer(L.Callback):
    """Seconds per step over the ``steps`` steps after ``1 + warmup`` untimed ones, with the device synchronised only
    where the timed span starts and ends (as the reference loop is timed); then, in the step after the timed ones,
    its FLOPs (forward and backward, counted), its aten operators (``OperatorCounter``) and, on a GPU, its host
    synchronisations (``DeviceSyncs``)."""

    def __init__(self, warmup: int, steps: int, device: str):
        self.first_timed, self.last = 1 + warmup, 1 + warmup + steps
        self.device = device
        self.start = self.end = None
        self.flops, self.operators = flop_counter_mode(), OperatorCounter()
        self.syncs = DeviceSyncs(device)

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.first_timed:
            synchronize(self.device)
            self.start = time.perf_counter()
        if trainer.global_step == self.last:
            self.flops.__enter__()
            self.operators.__enter__()
            self.syncs.__enter__()

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.last:
            synchronize(self.device)
            self.end = time.perf_counter()
        if trainer.global_step == self.last + 1:
            self.syncs.__exit__(None, None, None)
            self.operators.__exit__(None, None, None)
            self.flops.__exit__(None, None, None)

    @property
    def flops_per_step(self) -> int:
        return int(self.flops.get_total_flops())

    @property
    def seconds_per_step(self) -> float:
        return (self.end - self.start) / (self.last - self.first_timed)


class StepProfile(L.Callback):
    """``profiled`` around training step ``step`` (counted from 0), written to ``path``."""

    def __init__(self, step: int, path: Path, device: str):
        self.step, self.path, self.device = step, path, device
        self.context = None

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            self.context = profiled(self.path, self.device)
            self.context.__enter__()

    def on_train_batch_end(self, trainer, *args):
        if self.context is not None and trainer.global_step == self.step + 1:
            self.context.__exit__(None, None, None)
            self.context = None


class ModelOnlyTimer(L.Callback):
    """At the end of training, seconds per call of the model's work alone: ``denoising_loss`` and its backward pass
    on a batch drawn once, under the trainer's precision, ``steps`` calls after ``warmup`` untimed ones."""

    def __init__(self, warmup: int, steps: int, device: str):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.seconds = None

    def on_train_end(self, trainer, pl_module):
        generator = pl_module.step_generator(0)
        latents = pl_module.draw_latents(pl_module.latent_dist, generator)

        def work():
            pl_module.denoising_loss(latents, pl_module.prompt_ids, generator).backward()

        with torch.enable_grad(), trainer.precision_plugin.forward_context():
            self.seconds = timed(work, self.device, self.steps, self.warmup)
        pl_module.zero_grad(set_to_none=True)


def run_name(stage: str, label: str) -> str:
    """A file name for a measured run: ``ti``, ``ti-channels_last``, ..."""
    return (stage + label).replace(" + ", "-").replace(" ", "_").replace("(", "").replace(")", "")


def stage_config(args, stage: str, workdir: Path, extra: tuple[str, ...] = ()):
    """The config of one measured run, whose logs go under ``workdir``. Every run shares one artifact store under
    ``--workdir``: its split files and cached training latents (keyed by model config), so each latent set is encoded
    once per workdir, not once per row; a run's own artifact goes to the folder it is given."""
    overrides = [*extra, f"stage={stage}", "category=Sc", f"model={args.model}", "logger=none",
                 f"paths.artifacts={args.workdir}/artifacts", f"paths.logs={workdir}/logs",
                 f"stage.max_steps={1 + args.warmup + args.steps + 1 + bool(args.profile)}",  # one to count, one to profile
                 f"stage.batch_size={args.batch}",
                 "stage.validation_every=0", "stage.checkpoint_every=100000", "stage.resume=false"]
    if stage in ("lora", "full"):
        overrides.append("stage.use_ti=false")
    overrides.append(trainer_override(args.device))
    return compose([*overrides, *args.overrides])


def ours(args, stage: str, label: str = "", extra: tuple[str, ...] = ()) -> tuple[float, float | None, int, int, float,
                                                                                DeviceSyncs]:
    """Seconds per step, peak memory, FLOPs and aten operators per step of our stage (with ``extra`` config overrides),
    seconds per call of its model's work alone (``ModelOnlyTimer``), and one step's host syncs (counted on a GPU)."""
    workdir = Path(args.workdir) / f"ours-{run_name(stage, label)}"
    cfg = stage_config(args, stage, workdir, extra)
    callbacks = [StepTimer(args.warmup, args.steps, args.device), ModelOnlyTimer(args.warmup, args.steps, args.device)]
    if args.profile:
        path = Path(args.profile) / f"ours-{run_name(stage, label)}.txt"
        callbacks.append(StepProfile(1 + args.warmup + args.steps + 1, path, args.device))
    reset_peak_memory(args.device)
    # full fine-tuning ends by saving a diffusers pipeline (4.3 GB for SD1.5), which is not what is measured
    saving = mock.patch.object(DiffusionPipeline, "save_pretrained",
                               lambda self, folder, **_: Path(folder).mkdir(parents=True, exist_ok=True))
    with saving if stage == "full" else contextlib.nullcontext():
        ADAPT[stage](cfg, workdir / "out", callbacks=callbacks)
    timer = callbacks[0]
    return (timer.seconds_per_step, peak_memory_gib(args.device), timer.flops_per_step, timer.operators.operators,
            callbacks[1].seconds, timer.syncs)


def reference(args, stage: str) -> tuple[float, float | None, int, int, DeviceSyncs]:
    """Seconds per step, peak memory, FLOPs and aten operators per step of the reference loop, and one step's host
    syncs (counted on a GPU)."""
    cfg = stage_config(args, stage, Path(args.workdir) / f"reference-{stage}")
    components = instantiate(cfg.model)
    device = torch.device(args.device)
    mixed = autocast_dtype(cfg.trainer.precision)  # bf16 with trainer=gpu; on a CPU with --set trainer.precision=…
    weight_dtype = mixed or torch.float32
    dm = instantiate(cfg.dataset)
    dm.setup()
    train = dm.dataset("train", category="Sc")
    pixels = torch.stack([sd_pixels(train.load_image(i), components.resolution) for i in range(len(train))]).to(device)
    tokenizer, text_encoder, vae, unet, scheduler = (components.tokenizer, components.text_encoder, components.vae,
                                                     components.unet, components.scheduler)
    vae.requires_grad_(False).to(device, weight_dtype)
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if stage == "ti":
        tokenizer.add_tokens(["<reference>"])
        text_encoder.resize_token_embeddings(len(tokenizer))
        token_id = tokenizer.convert_tokens_to_ids("<reference>")
        embeddings = text_encoder.get_input_embeddings()
        embeddings.weight.data[token_id] = embeddings.weight.data[tokenizer.convert_tokens_to_ids("steel</w>")]
        embeddings.requires_grad_(True)
        original = embeddings.weight.data.clone().to(device)
        prompt = "A photo of <reference>"
        unet.to(device, weight_dtype)
        text_encoder.to(device, torch.float32)
        # foreach: the GPU default, asked for so that a CPU dispatches the GPU's operators too
        optimizer = torch.optim.AdamW(embeddings.parameters(), lr=5e-4, foreach=True)
    elif stage == "full":  # as train_dreambooth.py --train_text_encoder: both trained in fp32 under autocast
        unet.requires_grad_(True).to(device)
        text_encoder.requires_grad_(True).to(device)
        trainable = [*unet.parameters(), *text_encoder.parameters()]
        optimizer = torch.optim.AdamW(trainable, lr=5e-6, weight_decay=1e-2, foreach=True)
        prompt = "A photo of <unknown>"
    else:  # as train_text_to_image_lora.py: frozen weights in weight_dtype, adapters in fp32 only under fp16
        unet.to(device, weight_dtype)
        text_encoder.to(device, weight_dtype)
        add_lora(components, int(cfg.stage.rank), seed=int(cfg.seed))
        if mixed == torch.float16:
            cast_training_params([unet, text_encoder], dtype=torch.float32)
        trainable = [p for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=True)
        prompt = "A photo of <unknown>"
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.repeat(args.batch, 1).to(device)
    text_encoder.train()
    generator = torch.Generator(device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=mixed, enabled=mixed is not None)

    def step():
        batch = pixels[torch.randint(len(pixels), (args.batch,), generator=generator, device=device)]
        with torch.no_grad():
            latents = vae.encode(batch.to(weight_dtype)).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        steps = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=generator, device=device)
        noisy = scheduler.add_noise(latents, noise, steps)
        with autocast:
            states = text_encoder(ids)[0].to(weight_dtype)
        # accelerate autocasts the models it prepared: textual_inversion.py's text encoder, not its frozen UNet, which
        # computes in weight_dtype; train_text_to_image_lora.py's UNet, which holds the adapters; train_dreambooth.py's
        # UNet, which it trains
        with autocast if stage != "ti" else contextlib.nullcontext():
            prediction = unet(noisy, steps, states).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        if stage == "full":  # train_dreambooth.py's defaults: max_grad_norm 1, gradients zeroed, not set to None
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=stage != "full")
        if stage == "ti":
            with torch.no_grad():
                keep = torch.ones(len(tokenizer), dtype=torch.bool, device=device)
                keep[token_id] = False
                text_encoder.get_input_embeddings().weight[keep] = original[keep]

    reset_peak_memory(args.device)
    for _ in range(1 + args.warmup):  # as ours: one step more than the warm-up
        step()
    synchronize(args.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(args.device)
    seconds, memory = (time.perf_counter() - start) / args.steps, peak_memory_gib(args.device)
    with flop_counter_mode() as counted:
        operators, syncs = operators_and_syncs(step, args.device)
    if args.profile:
        with profiled(Path(args.profile) / f"reference-{stage}.txt", args.device):
            step()
    return seconds, memory, int(counted.get_total_flops()), operators, syncs


ADAPT = {"ti": adapt_ti, "lora": adapt_lora, "full": adapt_full}

# The rows of each stage besides the compile rows: name for --rows, label suffix, config overrides.
OPTION_ROWS = {
    "defaults": ("", ()),
    "channels_last": (" + channels_last", ("model.channels_last=true",)),
    "unet_under_autocast": (" + UNet under autocast", ("stage.half_precision_unet=false",)),
    # every frozen weight fp32, so the UNet under autocast too
    "fp32_frozen_weights": (" + fp32 frozen weights", ("stage.half_precision_frozen=false",
                                                       "stage.half_precision_unet=false")),
    "fp32_adapters": (" + fp32 adapters", ("stage.half_precision_trainable=false",)),
    # a memory option, not a fast path: what it saves is the peak GiB column (on a GPU), what it costs the samples/s
    "gradient_checkpointing": (" + gradient checkpointing", ("stage.gradient_checkpointing=true",)),
}
# the stages each mixed-precision switch belongs to (each acts under mixed precision only)
MIXED_ROWS = {"unet_under_autocast": ("ti", "lora"), "fp32_frozen_weights": ("ti", "lora"), "fp32_adapters": ("lora",)}
# rows measured only when --rows names them
NAMED_ONLY_ROWS = ("gradient_checkpointing",)


def row_options(parser) -> None:
    parser.add_argument("--stages", nargs="+", choices=list(ADAPT), default=["ti", "lora"],
                        help="the stages to measure (default: ti lora; full: full fine-tuning, every UNet and text "
                             "encoder weight trained)")
    parser.add_argument("--rows", nargs="+", choices=list(OPTION_ROWS), default=None,
                        help="measure only these rows of each stage (default: every one that applies but "
                             "gradient_checkpointing, a memory option; under mixed precision only: unet_under_autocast, "
                             "fp32_frozen_weights, fp32_adapters (LoRA))")


def stage_rows(args, stage: str, mixed: bool) -> list[tuple[str, tuple[str, ...]]]:
    """The (label suffix, config overrides) of each row of ``stage`` that ``args`` asks for, compile rows last.
    (With fp32 adapters the UNet runs under autocast anyway: its weights are not all bf16.)"""
    names = [name for name in OPTION_ROWS if name not in MIXED_ROWS or (mixed and stage in MIXED_ROWS[name])]
    if args.only_compile:
        names = []
    elif args.rows is not None:
        names = [name for name in names if name in args.rows]
    else:
        names = [name for name in names if name not in NAMED_ONLY_ROWS]
    options = [OPTION_ROWS[name] for name in names]
    if args.compile or args.only_compile:
        options.append(compile_option(args))
    return options


def main() -> dict:
    args = arguments(__doc__.splitlines()[0], profiles=True, own_options=row_options, steps=10, warmup=2, batch=4)
    mixed = trains_under_autocast(stage_config(args, "ti", Path(args.workdir)))
    planned = {stage: stage_rows(args, stage, mixed) for stage in args.stages}
    if not any(planned.values()):
        raise SystemExit(f"error: no row of --rows {' '.join(args.rows)} applies to --stages {' '.join(args.stages)} "
                         f"in {'mixed precision' if mixed else 'fp32'}: unet_under_autocast, fp32_frozen_weights and "
                         "fp32_adapters act under mixed precision only (a GPU, or --set trainer.precision=bf16-mixed); "
                         "fp32_adapters on lora only")
    rows = []
    for stage, options in planned.items():
        if not options:
            continue
        started = time.perf_counter()
        ref_seconds, ref_memory, ref_flops, ref_operators, ref_syncs = reference(args, stage)
        ref_wall = time.perf_counter() - started
        for label, extra in options:
            started = time.perf_counter()
            our_seconds, our_memory, flops, operators, model_seconds, syncs = ours(args, stage, label, extra)
            rows.append({"stage": stage + label, "reference samples/s": args.batch / ref_seconds,
                         "ours samples/s": args.batch / our_seconds, "ratio": ref_seconds / our_seconds,
                         "model-only samples/s": args.batch / model_seconds, "ratio bound": ref_seconds / model_seconds,
                         "reference peak GiB": ref_memory, "ours peak GiB": our_memory, "GFLOP per step": flops / 1e9,
                         "reference GFLOP per step": ref_flops / 1e9, "FLOP ratio": ref_flops / flops,
                         **achieved(args, flops / our_seconds), "reference operators per step": ref_operators,
                         "ours operators per step": None if "compile" in label else operators,
                         "reference host syncs per step": ref_syncs.count, "ours host syncs per step": syncs.count,
                         "reference host sync sites": ref_syncs.sites, "ours host sync sites": syncs.sites,
                         # wall time of the whole measurement (building the model included), for planning GPU calls
                         "reference wall s": ref_wall, "ours wall s": time.perf_counter() - started})
            announce(rows[-1])
    return report("adaptation throughput", args, rows, ["stage", "reference samples/s", "ours samples/s", "ratio",
                                                         "model-only samples/s", "ratio bound",
                                                         "reference peak GiB", "ours peak GiB", "GFLOP per step",
                                                         "FLOP ratio", "achieved TFLOP/s", "% of peak",
                                                         "reference operators per step",
                                                         "ours operators per step", "reference host syncs per step",
                                                         "ours host syncs per step"])


if __name__ == "__main__":
    main()
