"""The baseline generators: DCGAN and DDPM from scratch, DDPM/DDIM sampling, and importing external sets."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, HostReads, compose_config, run_cli
from stablesdg.baselines.dcgan import DCGAN
from stablesdg.baselines.ddpm import DDPM, build_unet
from stablesdg.errors import UserError
from stablesdg.stages.baselines import _diffusion_sampler
from stablesdg.train import run

TINY_DDPM = '["stage.widths=[16,32]","stage.layers_per_block=1","stage.resolution=32","stage.max_steps=3","stage.batch_size=4"]'


def _pipeline(tmp_path, method: str, *extra: str):
    # model.resolution=32: the tiny diffusion model at a quarter of its default work per step
    return run_cli(tmp_path, "stage=pipeline", f"method={method}", "logger=none", "model.resolution=32",
                   "pipeline.steps=[adapt,generate,fid,classify]",
                   'pipeline.fid=["stage.features=pixels"]', "pipeline.classify.classifiers=[squeezenet]",
                   "pipeline.classify.seeds=[0]",
                   'pipeline.classify.compositions=[["stage.alpha=0.4","stage.mode=expand","stage.extra_per_class=4"]]',
                   'pipeline.classify.overrides=["stage.max_epochs=1"]', *extra)


def _check_generated_set(folder, count: int, columns: set[str]):
    with open(folder / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == count and columns <= set(rows[0])
    for row in rows:
        image = Image.open(folder / row["file"])
        assert (image.size, image.mode) == ((64, 64), "L"), "the dataset's resolution and mode"
    assert json.loads((folder / "result.json").read_text())["metrics"]["num_images"] == count


@pytest.mark.slow
def test_dcgan_baseline_writes_sets_that_fid_and_classify_accept(tmp_path):
    done = _pipeline(tmp_path, "dcgan", 'pipeline.dcgan=["stage.max_steps=2","stage.batch_size=8","stage.width=8"]',
                     'pipeline.generate=["stage.num_images=6"]')
    assert done.returncode == 0, done.stderr[-3000:]
    for category in ("Cr", "Pa", "PS", "Sc"):
        folder = tmp_path / f"artifacts/synthetic/{category}/dcgan"
        assert json.loads((folder / "dcgan/result.json").read_text())["metrics"]["steps"] == 2
        _check_generated_set(folder / "generate", 6, {"file", "seed", "generator"})
        assert json.loads((folder / "fid/result.json").read_text())["metrics"]["n_fake"] == 6
    classify = json.loads((tmp_path / "artifacts/synthetic/all/dcgan/classify_squeezenet_a0.4_expand_seed0/result.json")
                          .read_text())["metrics"]
    assert classify["train_images"]["generated"] == 4 * 4
    _check_report_rows(tmp_path, "dcgan", "DCGAN")


@pytest.mark.slow
def test_ddpm_baseline_and_its_ddim_sampling_share_one_trained_model(tmp_path):
    ddpm = _pipeline(tmp_path, "ddpm", f"pipeline.ddpm={TINY_DDPM}",
                     'pipeline.generate=["stage.num_images=4","stage.num_inference_steps=10","stage.batch_size=2"]')
    assert ddpm.returncode == 0, ddpm.stderr[-3000:]
    ddim = run_cli(tmp_path, "stage=pipeline", "method=ddim", "logger=none", f"pipeline.ddpm={TINY_DDPM}",
                 "pipeline.steps=[adapt,generate]", "pipeline.categories=[Sc]",
                 'pipeline.generate=["stage.num_images=4","stage.num_inference_steps=10"]')
    assert ddim.returncode == 0, ddim.stderr[-3000:]
    record = json.loads((tmp_path / "artifacts/synthetic/all/ddim/pipeline/result.json").read_text())["metrics"]["steps"]
    assert [s["status"] for s in record] == ["skipped", "ran"], "DDIM reuses the DDPM model trained for method=ddpm"
    assert not (tmp_path / "artifacts/synthetic/Sc/ddim/ddpm").exists()
    root = tmp_path / "artifacts/synthetic/Sc"
    _check_generated_set(root / "ddpm/generate", 4, {"seed", "generator", "steps"})
    _check_generated_set(root / "ddim/generate", 4, {"seed", "generator", "steps"})
    assert json.loads((root / "ddpm/fid/result.json").read_text())["metrics"]["n_fake"] == 4
    classify = json.loads((tmp_path / "artifacts/synthetic/all/ddpm/classify_squeezenet_a0.4_expand_seed0/result.json")
                          .read_text())["metrics"]
    assert classify["train_images"]["generated"] == 4 * 4
    seeds = [[r["seed"] for r in csv.DictReader(open(root / f"{v}/generate/manifest.csv"))] for v in ("ddpm", "ddim")]
    assert seeds[0] == seeds[1], "the same seeds"
    first = [np.asarray(Image.open(root / f"{v}/generate/images/00000.png")) for v in ("ddpm", "ddim")]
    assert not np.array_equal(*first), "different samplers give different images"


def test_ddpm_and_ddim_sampling_differ_only_through_the_sampler(tmp_path):
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    build_unet(1, 16, [16, 32], 1).save_pretrained(str(tmp_path / "unet"))
    DDPMScheduler(num_train_timesteps=100).save_pretrained(str(tmp_path / "scheduler"))
    samples = {}
    for name in ("ddpm", "ddim", "ddpm_again"):
        sampler = _diffusion_sampler(tmp_path, torch.device("cpu"), name.split("_")[0], 5)
        samples[name] = [np.asarray(im) for im in sampler([11, 12])]
    assert all(np.array_equal(a, b) for a, b in zip(samples["ddpm"], samples["ddpm_again"])), "same seed, same images"
    assert not any(np.array_equal(a, b) for a, b in zip(samples["ddpm"], samples["ddim"])), "the sampler changes them"
    assert not np.array_equal(*samples["ddpm"]), "each seed its own image"

    from diffusers import DDIMPipeline, DDPMPipeline, UNet2DModel

    unet = UNet2DModel.from_pretrained(str(tmp_path / "unet"))
    start = {}
    for name, cls in (("ddpm", DDPMPipeline), ("ddim", DDIMPipeline)):
        pipe = cls(unet=unet, scheduler=DDPMScheduler.from_pretrained(str(tmp_path / "scheduler")))
        seen = []
        original = pipe.unet.forward
        pipe.unet.forward = lambda sample, t, *a, _orig=original, **k: (seen.append(sample.clone()), _orig(sample, t, *a, **k))[1]
        pipe(batch_size=1, generator=[torch.Generator().manual_seed(11)], num_inference_steps=5)
        start[name] = seen[0]
    assert torch.equal(start["ddpm"], start["ddim"]), "both start from the same seeded noise"


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_more_sampling_steps_than_the_trained_schedule_is_one_line_before_any_image(tmp_path, sampler):
    from diffusers import DDPMScheduler

    build_unet(1, 16, [16, 32], 1).save_pretrained(str(tmp_path / "unet"))
    DDPMScheduler(num_train_timesteps=100).save_pretrained(str(tmp_path / "scheduler"))
    assert _diffusion_sampler(tmp_path, torch.device("cpu"), sampler, 100)([1])[0].size == (16, 16)
    with pytest.raises(UserError, match=re.escape(f"stage.num_inference_steps=101 is more than the 100 timesteps the "
                                                  f"DDPM in {tmp_path} was trained with; use at most 100")):
        _diffusion_sampler(tmp_path, torch.device("cpu"), sampler, 101)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampling_gives_diffusers_images_with_no_host_read_per_denoising_step(tmp_path, sampler):
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    build_unet(1, 16, [16, 32], 1).save_pretrained(str(tmp_path / "unet"))
    DDPMScheduler(num_train_timesteps=100).save_pretrained(str(tmp_path / "scheduler"))
    seeds = [11, 12]

    def ours(steps: int) -> tuple[list[np.ndarray], int]:
        sample = _diffusion_sampler(tmp_path, torch.device("cpu"), sampler, steps)
        with HostReads() as reads:
            images = sample(seeds)
        return [np.asarray(im) for im in images], len(reads.reads)

    def stock(steps: int) -> tuple[list[np.ndarray], int]:
        trained = DDPMScheduler.from_pretrained(str(tmp_path / "scheduler"))
        pipe = (DDIMPipeline(UNet2DModel.from_pretrained(str(tmp_path / "unet")), DDIMScheduler.from_config(trained.config))
                if sampler == "ddim" else DDPMPipeline(UNet2DModel.from_pretrained(str(tmp_path / "unet")), trained))
        pipe.set_progress_bar_config(disable=True)
        kwargs = {"eta": 0.0} if sampler == "ddim" else {}
        with HostReads() as reads:
            images = pipe(batch_size=len(seeds), generator=[torch.Generator().manual_seed(s) for s in seeds],
                          num_inference_steps=steps, **kwargs).images
        return [np.asarray(im) for im in images], len(reads.reads)

    (images, reads), (their_images, their_reads) = ours(10), stock(10)
    assert all(np.array_equal(a, b) for a, b in zip(images, their_images, strict=True)), "diffusers' images bit for bit"
    assert ours(5)[1] == reads < their_reads, "reads come from set-up only, not from each denoising step"
    assert stock(5)[1] < their_reads  # diffusers' own reads the timestep at every step


def test_ddpm_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    from diffusers import DDPMScheduler

    module = DDPM(build_unet(1, 16, [16, 32], 1), DDPMScheduler(num_train_timesteps=100), lr=2e-3)
    batch = torch.rand(8, 1, 16, 16) * 2 - 1

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(module.loss(batch, generator=torch.Generator().manual_seed(123)))

    before = fixed_loss()
    optimizer = module.configure_optimizers()
    for step in range(40):
        optimizer.zero_grad()
        module.loss(batch, generator=torch.Generator().manual_seed(step)).backward()
        optimizer.step()
    assert fixed_loss() < 0.7 * before


def test_dcgan_progress_and_lightnings_stop_notice_count_its_steps_and_its_checkpoints_give_no_notice(tmp_path):
    done = run_cli(tmp_path, "stage=dcgan", "category=Sc", "stage.max_steps=4", "stage.checkpoint_every=2",
                   "stage.width=8", "stage.batch_size=8", "logger=csv")
    assert done.returncode == 0, done.stderr[-2000:]
    # Lightning counts two optimiser steps per GAN step (discriminator and generator); the user asked for 4 steps
    progress = re.findall(r"stage=dcgan: step (\d+)/(\d+) ", done.stdout + done.stderr)
    assert progress and {total for _, total in progress} == {"4"} and progress[-1][0] == "4", progress
    assert json.loads((tmp_path / "artifacts/synthetic/Sc/default/dcgan/result.json").read_text())["metrics"]["steps"] == 4
    # 4 steps, fewer than trainer.log_every_n_steps (10): the losses are logged once, at the end
    with open(next((tmp_path / "logs").rglob("metrics.csv")), newline="") as handle:
        assert len([row for row in csv.DictReader(handle) if row["train/d_loss"]]) == 1
    output = done.stdout + done.stderr  # the run is a subprocess: its warnings are in its output
    assert "manual optimization" not in output and "smaller than the logging interval" not in output, output[-2000:]
    assert output.count("`Trainer.fit` stopped: `max_steps=4` reached.") == 1 and "max_steps=8" not in output


@pytest.mark.slow
@pytest.mark.parametrize("trainer", [["trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true"],
                                     []])  # trainer=cpu on two devices: Lightning's auto strategy chooses DDP
def test_dcgan_trains_under_ddp_where_each_update_leaves_the_other_network_unused(tmp_path, trainer):
    import subprocess
    import sys

    from safetensors.torch import load_file

    command = [sys.executable, "-m", "stablesdg.train", "stage=dcgan", "category=Sc", "stage.max_steps=2",
               "stage.width=8", "stage.batch_size=4", "logger=none", "dataset.synthetic.per_class=10", *trainer,
               "trainer.devices=2", f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "artifacts/synthetic/Sc/default/dcgan"
    assert json.loads((folder / "result.json").read_text())["metrics"]["steps"] == 2
    assert all(torch.isfinite(tensor).all() for tensor in load_file(folder / "generator.safetensors").values())


def test_dcgan_shapes_at_64_and_128_px():
    for resolution in (64, 128):
        gan = DCGAN(channels=1, resolution=resolution, width=8)
        images = gan(torch.randn(2, 100))
        assert images.shape == (2, 1, resolution, resolution) and images.abs().max() <= 1
        assert gan.discriminator(images).shape == (2, 1)


def _external_folder(tmp_path, classes=("Cr", "patches", "PS", "Sc")):
    source = tmp_path / "samples"
    for name in classes:
        (source / name).mkdir(parents=True)
        Image.fromarray(np.full((80, 100, 4), 120, np.uint8), "RGBA").save(source / name / "a.png")
        Image.fromarray(np.full((70, 70), 40000, np.uint16)).save(source / name / "b.png")
    return source


def test_external_import_converts_every_image_to_the_dataset_layout(tmp_path, make_cfg):
    source = _external_folder(tmp_path)
    run(make_cfg("stage=external", "category=Pa", f"stage.source={source}", "logger=none", "variant=stylegan3"))
    folder = tmp_path / "artifacts/synthetic/Pa/stylegan3/generate"
    _check_generated_set(folder, 2, {"source_file"})
    with open(folder / "manifest.csv", newline="") as handle:
        assert [r["source_file"] for r in csv.DictReader(handle)] == [str(source / "patches/a.png"), str(source / "patches/b.png")]
    assert np.asarray(Image.open(folder / "images/00000.png")).std() == 0, "RGBA became flat grayscale"
    with Image.open(folder / "grid.png") as grid:  # both images, side by side, each 64 px with 2 px between
        assert grid.size == (2 + 2 * (64 + 2), 2 + 64 + 2)


def test_external_reads_only_the_images_it_imports(tmp_path, make_cfg):
    source = _external_folder(tmp_path)
    (source / "patches" / "c.jpg").write_bytes(b"not an image")  # after a.png and b.png, by name
    run(make_cfg("stage=external", "category=Pa", f"stage.source={source}", "logger=none", "variant=first2",
                 "stage.num_images=2"))
    _check_generated_set(tmp_path / "artifacts/synthetic/Pa/first2/generate", 2, {"source_file"})
    with pytest.raises(UserError, match=rf"^{re.escape(str(source / 'patches' / 'c.jpg'))}: cannot decode image"):
        run(make_cfg("stage=external", "category=Pa", f"stage.source={source}", "logger=none", "variant=every"))
    assert not (tmp_path / "artifacts/synthetic/Pa/every/generate/images").exists(), "nothing half-imported"


@pytest.mark.parametrize("stage, setting", [("dcgan", "stage.latent_dim=0"), ("dcgan", "stage.width=0"),
                                            ("external", "stage.batch_size=0")])
def test_a_baseline_size_that_is_not_positive_is_one_line(make_cfg, tmp_path, stage, setting):
    key = setting.split("=")[0]
    source = [f"stage.source={tmp_path}"] if stage == "external" else []
    with pytest.raises(UserError, match=rf"^{key} must be a positive integer, got 0$"):
        run(make_cfg(f"stage={stage}", "category=Pa", "logger=none", *source, setting))


@pytest.mark.parametrize("stage", ["dcgan", "ddpm"])
def test_a_step_based_baseline_refuses_gradient_accumulation_rather_than_stopping_short(make_cfg, stage):
    with pytest.raises(UserError, match=rf"^stage={stage} trains on one batch per optimiser step and does not "
                                        r"accumulate gradients: drop trainer.accumulate_grad_batches=2 "):
        run(make_cfg(f"stage={stage}", "category=Pa", "logger=none", "+trainer.accumulate_grad_batches=2"))


@pytest.mark.parametrize("value", ["../ddpm", "."])
def test_sample_names_model_variant_when_it_cannot_name_a_variant(make_cfg, value):
    with pytest.raises(UserError, match=rf"^stage.model_variant='{re.escape(value)}' cannot name an artifact directory"):
        run(make_cfg("stage=sample", "category=Pa", "logger=none", f"stage.model_variant={value}"))


def test_dcgan_refuses_gradient_clipping_it_cannot_apply_and_a_resolution_it_would_round(make_cfg):
    with pytest.raises(UserError, match=r"^stage=dcgan steps its generator and discriminator optimisers itself, which "
                                        r"Lightning's clipping does not support: drop trainer.gradient_clip_val=0.5$"):
        run(make_cfg("stage=dcgan", "category=Pa", "logger=none", "+trainer.gradient_clip_val=0.5"))
    with pytest.raises(UserError, match=r"^stage.resolution must be 64 or 128 for DCGAN, got 64.5$"):
        run(make_cfg("stage=dcgan", "category=Pa", "logger=none", "stage.resolution=64.5"))


@pytest.mark.parametrize("overrides, message", [
    (["stage.widths=[]"], "stage.widths must be a list of positive integers (the UNet's channels per level), got []"),
    (["stage.widths=[8,abc]"], "stage.widths must be a list of positive integers"),
    (["stage.widths=16"], "stage.widths must be a list of positive integers"),
    (["stage.widths=[8,12]"], "stage.widths=[8, 12]: each must be a multiple of 8"),
    (["stage.widths=[8,16,16]", "stage.resolution=10"], "stage.resolution=10 must be divisible by 4"),
    (["stage.layers_per_block=0"], "stage.layers_per_block must be a positive integer, got 0"),
])
def test_ddpm_refuses_a_unet_shape_it_cannot_build_before_reading_images(make_cfg, overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run(make_cfg("stage=ddpm", "category=Pa", "logger=none", *overrides))


@pytest.mark.parametrize("widths, resolution", [([8], 16), ([8, 16], 16), ([8, 16, 16], 12), ([64, 96], 8)])
def test_every_unet_shape_the_ddpm_check_accepts_builds_and_keeps_the_image_size(make_cfg, widths, resolution):
    from stablesdg.stages.checks import require_unet_shape

    require_unet_shape(make_cfg("stage=ddpm", f"stage.widths={widths}", f"stage.resolution={resolution}").stage)
    unet = build_unet(1, resolution, widths, 1)
    with torch.no_grad():
        assert unet(torch.randn(1, 1, resolution, resolution), 3).sample.shape == (1, 1, resolution, resolution)


def test_a_refused_rerun_leaves_the_finished_set_it_would_have_replaced_finished(tmp_path, make_cfg):
    source = _external_folder(tmp_path)
    run(make_cfg("stage=external", "category=Pa", f"stage.source={source}", "logger=none"))
    result = tmp_path / "artifacts/synthetic/Pa/default/generate/result.json"
    finished = result.read_bytes()
    with pytest.raises(UserError, match=r"^stage.source=/no/such/folder is not a folder"):
        run(make_cfg("stage=external", "category=Pa", "stage.source=/no/such/folder", "logger=none"))
    assert result.read_bytes() == finished, "the set is still finished: stage=fid and stage=classify still read it"


def test_an_external_folder_whose_images_were_replaced_is_imported_again(tmp_path, make_cfg):
    source = _external_folder(tmp_path)
    cfg = make_cfg("stage=external", "category=Pa", f"stage.source={source}", "logger=none")
    imported = tmp_path / "artifacts/synthetic/Pa/default/generate/images/00000.png"
    run(cfg)
    assert np.unique(np.asarray(Image.open(imported))).tolist() == [120]
    Image.fromarray(np.full((80, 100), 30, np.uint8)).save(source / "patches/a.png")
    record = json.loads(run(cfg).read_text())
    assert record["metrics"]["resumed_images"] == 0
    assert np.unique(np.asarray(Image.open(imported))).tolist() == [30]


def test_a_set_sampled_from_a_baseline_since_retrained_is_sampled_again_not_resumed(tmp_path, make_cfg):
    def train(steps: int) -> None:
        run(make_cfg("stage=dcgan", "category=Pa", "logger=none", f"stage.max_steps={steps}", "stage.batch_size=4",
                     "stage.width=8", "stage.lr=0.05"))  # a high rate: two steps apart show in 8-bit images

    sample = make_cfg("stage=sample", "category=Pa", "logger=none", "stage.generator=dcgan", "stage.num_images=3")
    sampled = tmp_path / "artifacts/synthetic/Pa/default/generate/images/00000.png"
    train(1)
    run(sample)
    first = np.asarray(Image.open(sampled))
    assert json.loads(run(sample).read_text())["metrics"]["resumed_images"] == 3, "the same model: nothing to redo"
    train(2)
    record = json.loads(run(sample).read_text())
    assert record["metrics"]["resumed_images"] == 0
    assert not np.array_equal(np.asarray(Image.open(sampled)), first), "drawn from the retrained generator"


def test_a_sampled_sets_grid_shows_its_first_images_and_a_rerun_redraws_it_without_sampling_again(tmp_path, make_cfg):
    run(make_cfg("stage=dcgan", "category=Pa", "logger=none", "stage.max_steps=1", "stage.batch_size=4",
                 "stage.width=8"))
    folder = tmp_path / "artifacts/synthetic/Pa/default/generate"

    def sample(*settings: str) -> int:
        return json.loads(run(make_cfg("stage=sample", "category=Pa", "logger=none", "stage.generator=dcgan",
                                       "stage.num_images=3", *settings)).read_text())["metrics"]["resumed_images"]

    assert sample() == 0
    with Image.open(folder / "grid.png") as grid:  # the 3 images (fewer than stage.grid_images=16) in one row
        assert grid.size == (2 + 3 * (64 + 2), 2 + 64 + 2)
        for i in range(3):
            tile = np.asarray(grid.convert("L").crop((2 + i * 66, 2, 2 + i * 66 + 64, 66)))
            assert np.array_equal(tile, np.asarray(Image.open(folder / f"images/{i:05d}.png"))), i
    assert sample("stage.grid_images=2") == 3
    assert Image.open(folder / "grid.png").size == (2 + 2 * 66, 68)
    assert sample("stage.grid_images=0") == 3 and not (folder / "grid.png").exists()
    with pytest.raises(UserError, match=r"^stage.grid_images must be an integer >= 0 \(0: none\), got -1$"):
        sample("stage.grid_images=-1")


def test_a_sampled_set_grown_later_keeps_its_images_and_equals_a_fresh_set(tmp_path, make_cfg):
    run(make_cfg("stage=dcgan", "category=Pa", "logger=none", "stage.max_steps=1", "stage.batch_size=4",
                 "stage.width=8"))

    def sample(count: int, variant: str) -> tuple[int, list[bytes]]:
        record = json.loads(run(make_cfg("stage=sample", "category=Pa", "logger=none", "stage.generator=dcgan",
                                         "stage.batch_size=2", f"stage.num_images={count}", f"variant={variant}",
                                         "stage.model_variant=default")).read_text())
        images = sorted((tmp_path / f"artifacts/synthetic/Pa/{variant}/generate/images").glob("*.png"))
        return record["metrics"]["resumed_images"], [p.read_bytes() for p in images]

    sample(3, "grown")
    resumed, images = sample(5, "grown")
    assert resumed == 2 and images == sample(5, "fresh")[1]


@pytest.mark.parametrize("count", ["0", "-1"])
def test_external_refuses_a_count_that_is_not_positive_rather_than_slicing_with_it(tmp_path, make_cfg, count):
    cfg = make_cfg("stage=external", "category=Pa", f"stage.source={_external_folder(tmp_path)}", "logger=none",
                   f"stage.num_images={count}")
    with pytest.raises(UserError, match=rf"^stage.num_images must be a positive integer, got {count}$"):
        run(cfg)


def test_external_needs_a_sub_folder_for_its_own_category_only(tmp_path, make_cfg):
    source = _external_folder(tmp_path, ("patches", "notes"))  # StyleGAN3 trained on one class; a folder of no class
    run(make_cfg("stage=external", "category=Pa", f"stage.source={source}", "logger=none"))
    assert len(list((tmp_path / "artifacts/synthetic/Pa/default/generate/images").glob("*.png"))) == 2


def test_external_imports_a_folder_of_the_categorys_images_directly_as_a_generator_writes_it(tmp_path, make_cfg):
    outdir = tmp_path / "stylegan3_Pa"  # gen_images.py --outdir=stylegan3_Pa --seeds=0-2
    (outdir / "logs").mkdir(parents=True)
    for seed in range(3):
        Image.fromarray(np.full((70, 70), 40 + seed, np.uint8)).save(outdir / f"seed{seed:04d}.png")
    Image.new("L", (70, 70), 200).save(outdir / "logs" / "preview.png")  # a folder naming no class is not read
    run(make_cfg("stage=external", "category=Pa", f"stage.source={outdir}", "logger=none"))
    folder = tmp_path / "artifacts/synthetic/Pa/default/generate"
    with open(folder / "manifest.csv", newline="") as handle:
        assert [r["source_file"] for r in csv.DictReader(handle)] == [str(outdir / f"seed{s:04d}.png") for s in range(3)]
    assert [int(np.asarray(Image.open(p)).mean()) for p in sorted((folder / "images").glob("*.png"))] == [40, 41, 42]
    finished_set = tmp_path / "elsewhere/synthetic/Pa/v/generate"  # a set's stage folder: its manifest, not its grid
    (finished_set / "images").mkdir(parents=True)
    for seed in range(3):
        Image.fromarray(np.full((70, 70), 60 + seed, np.uint8)).save(finished_set / "images" / f"{seed}.png")
    (finished_set / "manifest.csv").write_text("file\nimages/0.png\nimages/1.png\n")
    Image.new("L", (70, 70), 255).save(finished_set / "grid.png")
    (finished_set / "result.json").write_text("{}")
    run(make_cfg("stage=external", "category=Pa", f"stage.source={finished_set}", "logger=none", "variant=copy"))
    copied = sorted((tmp_path / "artifacts/synthetic/Pa/copy/generate/images").glob("*.png"))
    assert [int(np.asarray(Image.open(p)).mean()) for p in copied] == [60, 61]
    scratches = outdir.rename(tmp_path / "scratches")  # the folder of another class, by its name
    with pytest.raises(UserError, match=rf"^stage.source={scratches} holds the images of class Sc, by its name, not of "
                                        r"Pa: give Pa's folder, or category=Sc$"):
        run(make_cfg("stage=external", "category=Pa", f"stage.source={scratches}", "logger=none"))


@pytest.mark.parametrize("problem", ["missing_class", "unreadable", "too_large", "two_folders_of_a_class", "too_few"])
def test_external_rejects_an_incomplete_or_unreadable_folder(tmp_path, make_cfg, monkeypatch, problem):
    source = _external_folder(tmp_path, {"missing_class": ("Cr", "Pa", "PS"), "two_folders_of_a_class": ("Pa", "patches")
                                         }.get(problem, ("Cr", "Pa", "PS", "Sc")))
    if problem == "unreadable":
        (source / "Pa" / "c.jpg").write_bytes(b"not an image")
    if problem == "too_large":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # Pillow refuses more than twice this
        Image.new("L", (120, 100)).save(source / "Pa" / "c.png")
    category = "Sc" if problem == "missing_class" else "Pa"
    cfg = make_cfg("stage=external", f"category={category}", f"stage.source={source}", "logger=none",
                   *(["stage.num_images=3"] if problem == "too_few" else []))
    expected = {"missing_class": f"stage.source={source} has no sub-folder for Sc (its class folders: Cr, Pa, PS; name "
                                 "each folder by a class: Cr (crazing), Pa (patches), PS (pitted_surface), Sc (scratches))",
                "unreadable": f"{source / 'Pa' / 'c.jpg'}: cannot decode image (not an image format Pillow reads); "
                              "fix or remove the file",
                "too_large": f"{source / 'Pa' / 'c.png'}: 12,000 pixels, more than the 10,000 that Pillow decodes (larger "
                             "files may be decompression bombs); downscale it or cut it into tiles",
                "two_folders_of_a_class": f"stage.source={source}: both Pa/ and patches/ name class Pa; keep one",
                "too_few": f"stage.num_images=3 but {source} has 2 images of Pa: add images, or import fewer "
                           "(stage.num_images=2, or null for every image; in stage=pipeline its pipeline.generate list "
                           "sets it)"}[problem]
    with pytest.raises(UserError, match="^" + re.escape(expected)):  # the CLI prints it as one line (tests/test_cli.py)
        run(cfg)
    assert not list((tmp_path / "artifacts").rglob("result.json"))
    assert not list((tmp_path / "artifacts").rglob("*.png")), "nothing half-imported"


def _check_report_rows(tmp_path, method: str, label: str) -> None:
    """The report's Table V row ``label`` holds the method's FIDs, its Table VI row the classifier's accuracy."""
    root = tmp_path / "artifacts/synthetic"
    fids = {c: json.loads((root / f"{c}/{method}/fid/result.json").read_text())["metrics"]["fid"] for c in ("Cr", "Pa", "PS", "Sc")}
    accuracy = json.loads((root / f"all/{method}/classify_squeezenet_a0.4_expand_seed0/result.json").read_text())["metrics"]
    assert accuracy["train_images"]["generated"] == 4 * 4

    from stablesdg.report import main

    assert main(["--artifacts", str(tmp_path / "artifacts"), "--dataset", "synthetic"]) == 0
    with open(tmp_path / "artifacts/report/table5_fid.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["row"] == label)
    assert {c: float(row[f"{c} ours"]) for c in fids} == pytest.approx(fids)
    with open(tmp_path / "artifacts/report/table6_accuracy.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["row"] == label)
    assert float(row["SqueezeNet ours"]) == pytest.approx(100 * accuracy["test_accuracy"])


REPORT_ROWS = {"ti_only": "Textual Inversion", "dreambooth": "DreamBooth"}
FEW_STEPS = {
    "ti_only": ['pipeline.adaptation=["stage.max_steps=2","stage.validation_every=0"]'],
    "dreambooth": ['pipeline.adaptation=["stage.max_steps=2","stage.validation_every=0","stage.num_prior_images=3","stage.prior_steps=2"]'],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(REPORT_ROWS))
def test_each_text_to_image_baseline_feeds_fid_classify_and_its_report_rows(tmp_path, method):
    done = _pipeline(tmp_path, method, *FEW_STEPS[method], 'pipeline.generate=["stage.num_images=4","stage.num_inference_steps=3"]')
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / f"artifacts/synthetic/Sc/{method}"
    generated = json.loads((root / "generate/result.json").read_text())["metrics"]
    assert generated["init"] == "noise", "text-to-image, no image-oriented generation"
    _check_generated_set(root / "generate", 4, {"seed", "prompt"})
    if method == "dreambooth":
        full = json.loads((root / "full/result.json").read_text())["metrics"]
        assert (full["prior_images"], full["use_ti"]) == (2 * 3, False), "3 class images and their mirror images"
        assert sorted(p.name for p in (root / "full/prior_images").glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
        assert generated["adapter"] == "full"
    else:
        assert generated["adapter"] == "ti" and not (root / "lora").exists()
    _check_report_rows(tmp_path, method, REPORT_ROWS[method])


@pytest.mark.parametrize("generator, unread", [("dcgan", True), ("ddim", False)])
def test_denoising_steps_given_to_a_dcgan_sample_are_named_as_unread(generator, unread):
    from stablesdg.unread_settings import unread_setting_notes

    command = ["stage=sample", f"stage.generator={generator}", "stage.num_inference_steps=50"]
    note = ("stage.num_inference_steps=50: a DCGAN makes each image in one pass of its generator, which leaves it "
            "unread; the denoising steps are stage.generator=ddpm's and ddim's")
    assert unread_setting_notes(command, compose_config(command).stage) == ([note] if unread else [])
