"""Generation throughput: `stage=generate` (img2img, s = 0.5, ω = 5) against a plain diffusers
`StableDiffusionImg2ImgPipeline` call per image on the same components, settings and device; ours with the
fast options off (one image per call) and on (batched CFG; channels_last; DPM-Solver++ with fewer steps;
torch.compile with --compile).

    python benchmarks/generation.py                                # CPU, model=tiny
    python benchmarks/generation.py --model sd15_random --batch 8  # GPU
    python benchmarks/generation.py --settings defaults dpmsolver  # only these of ours (and the plain pipeline)
    python benchmarks/generation.py --inference-steps 10           # a quicker look: DDIM 10, DPM-Solver++ 4

"achieved TFLOP/s" is the FLOPs of one image (UNet with CFG, VAE encode and decode; counted by torch's
FlopCounterMode on a plain pipeline call) times images/s. "FID vs real" scores each of our sets against the
category's real training images (random_inception features unless --fid-features says otherwise), so a
faster sampler's effect on quality shows. "host syncs per image" (on a GPU) counts the times the host waited for the
GPU per image (torch's sync debug mode): one plain call, and the difference of our two runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import torch
from diffusers import DDIMScheduler
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DeviceSyncs, achieved, announce, arguments, compile_option, compose, count_argument,  # noqa: E402
                    counted_flops, peak_memory_gib, report, reset_peak_memory, synchronize, trainer_override)

import stablesdg.stages.generate as generate_stage  # noqa: E402
from stablesdg.data.images import conform_image  # noqa: E402
from stablesdg.models.schedulers import make_scheduler  # noqa: E402
from stablesdg.precision import inference_dtype  # noqa: E402
from stablesdg.stages.fid import score_images  # noqa: E402
from stablesdg.stages.generate import run  # noqa: E402

STEPS = 50  # DDIM's; DPM-Solver++ takes 20 of them (2/5), its usual count where DDIM takes 50
STRENGTH = 0.5
GUIDANCE = 5.0


def samplers(args) -> dict[str, int]:
    """The denoising steps of each scheduler measured: ``--inference-steps`` for DDIM, 2/5 as many for DPM-Solver++."""
    return {"ddim": args.inference_steps, "dpmsolver++": max(1, round(args.inference_steps * 2 / 5))}


def stage_config(args, workdir: Path, images: int, batch: int, scheduler: str, steps: int,
                 extra: tuple[str, ...] = ()):
    return compose([*extra, "stage=generate", "category=Sc", f"model={args.model}", "logger=none", "stage.adapter=base",
                    f"paths.artifacts={workdir}/artifacts", f"paths.logs={workdir}/logs", f"stage.num_images={images}",
                    f"stage.batch_size={batch}", f"stage.scheduler={scheduler}", f"stage.num_inference_steps={steps}",
                    f"stage.strength={STRENGTH}", f"stage.guidance_scale={GUIDANCE}", "stage.grid_images=0",
                    "stage.resume=false",  # a set left by an earlier benchmark run would be skipped, not timed
                    trainer_override(args.device), *args.overrides])


def ours(args, name: str, batch: int, scheduler: str, steps: int,
         extra: tuple[str, ...] = ()) -> tuple[float, float, float | None, float | None]:
    """Images per second of the stage's generation loop (sampling, PNG writes and manifest; not the model's
    construction, whose time varies by seconds), from two runs of different lengths so the first batch's warm-up
    cancels; the FID of the longer run's images against the category's real training images; and, on a GPU, the
    loop's host syncs per image (from the same two runs) and the two runs' peak GPU memory (the FID's not counted)."""
    seconds, syncs = [], []
    reset_peak_memory(args.device)
    for count in (batch, batch * (1 + args.steps)):
        workdir = Path(args.workdir) / f"generate-{name}-{count}"
        cfg = stage_config(args, workdir, count, batch, scheduler, steps, extra)
        loop = stopwatch(generate_stage.write_generated_set, args, seconds, syncs)
        with mock.patch.object(generate_stage, "write_generated_set", loop):
            run(cfg, workdir / "out")
    if seconds[1] <= seconds[0]:
        raise SystemExit(f"{name}: the run of {batch * (1 + args.steps)} images took no longer than the run of {batch} "
                         f"({seconds[1]:.2f} s vs {seconds[0]:.2f} s): timing noise; measure with more --steps")
    memory = peak_memory_gib(args.device)
    fid = fid_against_real(args, sorted((workdir / "out/images").glob("*.png")))
    per_image = None if syncs[0] is None else (syncs[1] - syncs[0]) / (batch * args.steps)
    return batch * args.steps / (seconds[1] - seconds[0]), fid, per_image, memory


def stopwatch(function: Callable, args, seconds: list[float], syncs: list[int | None]) -> Callable:
    """``function``, appending the seconds each call takes (device work included) to ``seconds`` and its host syncs
    (``DeviceSyncs``: None off a GPU) to ``syncs``."""

    def call(*positional, **keywords):
        synchronize(args.device)
        start = time.perf_counter()
        with DeviceSyncs(args.device) as counted:
            result = function(*positional, **keywords)
        synchronize(args.device)
        seconds.append(time.perf_counter() - start)
        syncs.append(counted.count)
        return result

    return call


def fid_against_real(args, files: list[Path]) -> float:
    """FID (``--fid-features``, random_inception by default) of ``files`` against category Sc's real training images."""
    cfg = compose(["stage=fid", "category=Sc", f"stage.features={args.fid_features}",
                   f"paths.artifacts={args.workdir}/fid", trainer_override(args.device)])
    dm = instantiate(cfg.dataset)
    dm.setup()
    return score_images(cfg, dm, "Sc", files)["fid"]


def plain(args, count_flops: bool = True) -> tuple[float, dict[str, int], int | None, float | None]:
    """Images per second of a plain pipeline call per image (after ``--warmup`` calls, at least one), the FLOPs of
    one image with each scheduler setting of ``samplers`` (when ``count_flops``), and, on a GPU, the host syncs of
    one more call and the peak GPU memory of the timed calls (the model's weights included, as in ours)."""
    steps_of = samplers(args)
    cfg = stage_config(args, Path(args.workdir) / "plain", 1, 1, "ddim", steps_of["ddim"])
    components = instantiate(cfg.model)
    pipe = components.pipeline(img2img=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(args.device, inference_dtype(cfg, torch.device(args.device)))  # bf16 weights on a GPU, as ours
    dm = instantiate(cfg.dataset)
    dm.setup()
    source = dm.dataset("train", category="Sc")
    init = [conform_image(source.load_image(i % len(source)), 3, components.resolution) for i in range(args.steps + 1)]

    def call(i: int, steps: int = steps_of["ddim"]):
        with torch.no_grad():
            pipe("A photo of <unknown>", image=init[i], strength=STRENGTH, guidance_scale=GUIDANCE,
                 num_inference_steps=steps, generator=torch.Generator(args.device).manual_seed(i))

    flops = {}
    for scheduler, steps in steps_of.items() if count_flops else ():
        pipe.scheduler = make_scheduler(scheduler, components.scheduler.config)
        flops[scheduler] = counted_flops(lambda: call(0, steps))
    pipe.scheduler = DDIMScheduler.from_config(components.scheduler.config)  # diffusers' own DDIM, as a user's call
    for _ in range(max(1, args.warmup)):
        call(0)
    synchronize(args.device)
    reset_peak_memory(args.device)
    start = time.perf_counter()
    for i in range(1, args.steps + 1):
        call(i)
    synchronize(args.device)
    speed, memory = args.steps / (time.perf_counter() - start), peak_memory_gib(args.device)
    with DeviceSyncs(args.device) as syncs:
        call(0)
    return speed, flops, syncs.count, memory


SETTING_NAMES = ("fast_off", "defaults", "channels_last", "dpmsolver")


def setting_options(parser) -> None:
    parser.add_argument("--settings", nargs="+", choices=SETTING_NAMES, default=list(SETTING_NAMES),
                        help="which of our settings to measure (default: all): fast options off, defaults (batched "
                             "CFG), batched + channels_last, batched with DPM-Solver++; the plain pipeline always")
    parser.add_argument("--inference-steps", type=count_argument(1), default=STEPS,
                        help=f"denoising steps of the DDIM rows, the plain pipeline's included (default {STEPS}; "
                             "strength 0.5 runs half of them); DPM-Solver++ takes 2/5 as many. Fewer: a quicker look")


def our_settings(args) -> list[tuple[str, int, str, tuple[str, ...]]]:
    """(row name, batch, scheduler, config overrides) of each of our settings that ``args`` asks for."""
    ddim, dpmsolver = f"DDIM {args.inference_steps}", f"DPM-Solver++ {samplers(args)['dpmsolver++']}"
    every = {"fast_off": (f"ours, fast options off: 1 image per call, {ddim}", 1, "ddim", ()),
             "defaults": (f"ours, defaults: batched CFG ({args.batch} per call), {ddim}", args.batch, "ddim", ()),
             "channels_last": (f"ours, batched ({args.batch}) + channels_last, {ddim}", args.batch, "ddim",
                               ("model.channels_last=true",)),
             "dpmsolver": (f"ours, batched ({args.batch}), {dpmsolver}", args.batch, "dpmsolver++", ())}
    settings = [] if args.only_compile else [every[name] for name in SETTING_NAMES if name in args.settings]
    if args.compile or args.only_compile:
        label, overrides = compile_option(args)
        settings.append((f"ours, batched ({args.batch}){label}, {ddim}", args.batch, "ddim", overrides))
    return settings


def main() -> dict:
    """The plain pipeline is measured first and again after ours; ratios are against the faster of the two, so
    warm-up effects of the order cannot favour ours."""
    args = arguments(__doc__.splitlines()[0], own_options=setting_options, steps=4, warmup=1, batch=8)
    settings = our_settings(args)
    first, flops, plain_syncs, plain_memory = plain(args)
    rows = [{"setting": f"plain StableDiffusionImg2ImgPipeline, 1 image per call, DDIM {args.inference_steps}",
             "images/s": first, **achieved(args, flops["ddim"] * first), "host syncs per image": plain_syncs,
             "peak GiB": plain_memory}]
    announce(rows[-1])
    for i, (name, batch, scheduler, extra) in enumerate(settings):
        steps = samplers(args)[scheduler]
        started = time.perf_counter()
        speed, fid, syncs, memory = ours(args, f"setting{i}", batch, scheduler, steps, extra)
        rows.append({"setting": name, "images/s": speed, **achieved(args, flops[scheduler] * speed), "FID vs real": fid,
                     "host syncs per image": syncs, "peak GiB": memory,
                     "wall s": time.perf_counter() - started})  # both runs and the FID, for planning GPU calls
        announce(rows[-1])
    again, _, again_syncs, again_memory = plain(args, count_flops=False)
    rows.append({"setting": "plain pipeline again, after ours", "images/s": again,
                 **achieved(args, flops["ddim"] * again), "host syncs per image": again_syncs, "peak GiB": again_memory})
    announce(rows[-1])
    baseline = max(first, again)
    for row in rows:
        row["ratio"] = row["images/s"] / baseline
    return report("generation throughput", args, rows, ["setting", "images/s", "ratio", "achieved TFLOP/s", "% of peak",
                                                        "FID vs real", "host syncs per image", "peak GiB"])


if __name__ == "__main__":
    main()
