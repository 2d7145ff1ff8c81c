"""Generation throughput: `stage=generate` (img2img, s = 0.5, ω = 5) against a plain diffusers
`StableDiffusionImg2ImgPipeline` call per image on the same components, settings and device; ours with the
fast options off (one image per call) and on (batched CFG; DPM-Solver++ with fewer steps).

    python benchmarks/generation.py                                # CPU, model=tiny
    python benchmarks/generation.py --model sd15_random --batch 8  # GPU
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, compose, report, synchronize  # noqa: E402

from stablesdg.data.images import conform_image  # noqa: E402
from stablesdg.stages.generate import make_scheduler, run  # noqa: E402

STEPS = 50
STRENGTH = 0.5
GUIDANCE = 5.0


def stage_config(args, workdir: Path, images: int, batch: int, scheduler: str = "ddim", steps: int = STEPS):
    return compose(["stage=generate", "category=Sc", f"model={args.model}", "logger=none", "stage.adapter=base",
                    f"paths.artifacts={workdir}/artifacts", f"paths.logs={workdir}/logs", f"stage.num_images={images}",
                    f"stage.batch_size={batch}", f"stage.scheduler={scheduler}", f"stage.num_inference_steps={steps}",
                    f"stage.strength={STRENGTH}", f"stage.guidance_scale={GUIDANCE}", "stage.grid_images=0",
                    "trainer=gpu" if args.device.startswith("cuda") else "trainer=cpu"])


def ours(args, name: str, batch: int, scheduler: str = "ddim", steps: int = STEPS) -> float:
    """Images per second of the stage: two runs of different lengths, so set-up costs cancel."""
    seconds = []
    for count in (batch, batch * (1 + args.steps)):
        workdir = Path(args.workdir) / f"generate-{name}-{count}"
        cfg = stage_config(args, workdir, count, batch, scheduler, steps)
        synchronize(args.device)
        start = time.perf_counter()
        run(cfg, workdir / "out")
        synchronize(args.device)
        seconds.append(time.perf_counter() - start)
    return batch * args.steps / (seconds[1] - seconds[0])


def plain(args) -> float:
    """Images per second of a plain pipeline call per image (after one warm-up call)."""
    cfg = stage_config(args, Path(args.workdir) / "plain", 1, 1)
    components = instantiate(cfg.model)
    pipe = components.pipeline(img2img=True)
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(args.device)
    dm = instantiate(cfg.dataset)
    dm.setup()
    source = dm.dataset("train", category="Sc")
    init = [conform_image(source.load_image(i % len(source)), 3, components.resolution) for i in range(args.steps + 1)]

    def call(i: int):
        with torch.no_grad():
            pipe("A photo of <unknown>", image=init[i], strength=STRENGTH, guidance_scale=GUIDANCE,
                 num_inference_steps=STEPS, generator=torch.Generator(args.device).manual_seed(i))

    call(0)
    synchronize(args.device)
    start = time.perf_counter()
    for i in range(1, args.steps + 1):
        call(i)
    synchronize(args.device)
    return args.steps / (time.perf_counter() - start)


def main() -> dict:
    args = arguments(__doc__.splitlines()[0], steps=4, warmup=1, batch=8)
    baseline = plain(args)
    rows = [{"setting": "plain StableDiffusionImg2ImgPipeline, 1 image per call, DDIM 50", "images/s": baseline, "ratio": 1.0}]
    for name, batch, scheduler, steps in (("ours, fast options off: 1 image per call, DDIM 50", 1, "ddim", STEPS),
                                          (f"ours, batched CFG ({args.batch} per call), DDIM 50", args.batch, "ddim", STEPS),
                                          (f"ours, batched ({args.batch}), DPM-Solver++ 20", args.batch, "dpmsolver++", 20)):
        speed = ours(args, name.split(",")[0] + str(batch) + scheduler, batch, scheduler, steps)
        rows.append({"setting": name, "images/s": speed, "ratio": speed / baseline})
    return report("generation throughput", args, rows, ["setting", "images/s", "ratio"])


if __name__ == "__main__":
    main()
