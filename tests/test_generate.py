"""Image-oriented generation, FID/KID, and the (s, ω) sweep on the tiny model."""

from __future__ import annotations

import csv
import inspect
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import yaml
from PIL import Image

from conftest import REPO, HostReads, compose_config, run_cli
from stablesdg import artifacts, provenance
from stablesdg.adaptation.lora import DIFFUSERS_FILE
from stablesdg.adaptation.placeholder import EMBEDS_FILE
from stablesdg.data.images import conform_image
from stablesdg.errors import UserError
from stablesdg.evaluation.features import INCEPTION_FILE, build_feature_extractor, extract_features
from stablesdg.evaluation.fid import fid_kid
from stablesdg.generated import image_seed, write_generated_set, write_grid
from stablesdg.models import build_tiny_sd
from stablesdg.stages.generate import KEYS_NOT_SHAPING_IMAGES, load_pipeline
from stablesdg.train import run

# model.resolution=32: a quarter of the default 64 px model's work per denoising step
COMMON = ["dataset.synthetic.per_class=10", "logger=none", "category=Pa", "model.resolution=32"]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory) -> Path:
    """An artifact root holding finished TI and LoRA stages of synthetic/Pa on the tiny model."""
    root = tmp_path_factory.mktemp("adapted")
    for stage in ("ti", "lora"):
        run(compose_config([f"paths.artifacts={root}/artifacts", f"paths.logs={root}/logs", f"stage={stage}",
                            "stage.max_steps=4", "stage.lr=1e-2", "stage.validation_every=0", *COMMON]))
    return root


def generate_cfg(root: Path, *overrides: str):
    return compose_config([f"paths.artifacts={root}/artifacts", f"paths.logs={root}/logs", "stage=generate",
                           "stage.num_images=4", "stage.batch_size=2", "stage.num_inference_steps=4",
                           "stage.features=pixels", *COMMON, *overrides])


def out_dir(root: Path, name: str = "generate") -> Path:
    return root / "artifacts" / "synthetic" / "Pa" / "default" / name


def test_generation_equals_a_plain_diffusers_img2img_pipeline(adapted):
    cfg = generate_cfg(adapted, "stage.strength=0.5", "stage.guidance_scale=1.0", "stage.num_images=2")
    result = json.loads(run(cfg).read_text())
    ours, token = load_pipeline(cfg, "Pa")
    assert token == "<unknown>" and result["metrics"]["prompt"] == "A photo of <unknown>"

    size = int(cfg.model.resolution)
    plain = build_tiny_sd(seed=0, resolution=size).pipeline(img2img=True)
    ti, lora = out_dir(adapted, "ti"), out_dir(adapted, "lora")
    plain.load_textual_inversion(str(ti / EMBEDS_FILE))
    plain.load_lora_weights(str(lora), weight_name=DIFFUSERS_FILE)
    from diffusers import DDIMScheduler

    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)  # diffusers' own, as a user would
    plain.set_progress_bar_config(disable=True)
    with open(out_dir(adapted) / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    from stablesdg.data.synthetic import render_synthetic_defect

    for row in rows:
        index = int(Path(row["source_image"]).stem.rsplit("_", 1)[1])
        source = conform_image(render_synthetic_defect("Pa", index, cfg.dataset.image_size, seed=0), 3, size)
        with torch.no_grad():
            expected = plain("A photo of <unknown>", image=source, strength=0.5, guidance_scale=1.0, num_inference_steps=4,
                             generator=torch.Generator().manual_seed(int(row["seed"])), output_type="pil").images[0]
        written = np.asarray(Image.open(out_dir(adapted) / row["file"]), dtype=np.int16)
        reference = np.asarray(conform_image(expected, 1, cfg.dataset.image_size), dtype=np.int16)  # the set's size
        assert np.abs(written - reference).max() <= 1


@pytest.mark.parametrize("img2img", [True, False], ids=["img2img", "text-to-image"])
@pytest.mark.parametrize("name, stock", [("ddim", "DDIMScheduler"), ("pndm", "PNDMScheduler"), ("ddpm", "DDPMScheduler")])
def test_schedulers_give_diffusers_numbers_with_no_host_read_per_denoising_step(img2img, name, stock):
    import diffusers

    from stablesdg.models.schedulers import make_scheduler

    components = build_tiny_sd(seed=0, resolution=32)  # the numbers do not depend on the size: the smaller, the sooner
    pipe = components.pipeline(img2img=img2img)
    pipe.set_progress_bar_config(disable=True)
    source = conform_image(Image.new("L", (32, 32), 100), 3, 32)

    def images(scheduler, steps: int) -> tuple[torch.Tensor, int]:
        pipe.scheduler = scheduler.from_config(components.scheduler.config) if isinstance(scheduler, type) \
            else make_scheduler(scheduler, components.scheduler.config)
        kwargs = dict(image=[source] * 2, strength=0.5) if img2img else dict(height=32, width=32)
        reads = HostReads()
        with torch.no_grad(), reads:
            out = pipe(["a photo"] * 2, guidance_scale=5.0, num_inference_steps=steps, output_type="pt",
                       generator=[torch.Generator().manual_seed(i) for i in range(2)], **kwargs).images
        return out, len(reads.reads)

    ours, ours_reads = images(name, 20)
    theirs, their_reads = images(getattr(diffusers, stock), 20)
    # the pipeline passes eta and generator only to a step whose signature names them
    assert inspect.signature(make_scheduler(name, components.scheduler.config).step) == \
        inspect.signature(getattr(diffusers, stock).from_config(components.scheduler.config).step)
    assert torch.equal(ours, theirs)
    assert images(name, 10)[1] == ours_reads < their_reads, "reads come from set-up only, not from each step"
    assert images(getattr(diffusers, stock), 10)[1] < their_reads  # diffusers' reads the timestep at every step


def test_manifest_matches_the_files_and_records_every_setting(adapted):
    cfg = generate_cfg(adapted, "stage.num_images=5", "stage.strength=0.4", "stage.guidance_scale=3")
    result = json.loads(run(cfg).read_text())
    folder = out_dir(adapted)
    with open(folder / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == [f"images/{i:05d}.png" for i in range(5)]
    assert sorted(p.name for p in (folder / "images").glob("*.png")) == [f"{i:05d}.png" for i in range(5)]
    assert [int(r["seed"]) for r in rows] == [image_seed(0, i) for i in range(5)]
    assert {r["strength"] for r in rows} == {"0.4"} and {r["guidance_scale"] for r in rows} == {"3.0"}
    assert {r["effective_steps"] for r in rows} == {"1"} and result["metrics"]["effective_steps"] == 1
    assert all(r["source_image"].startswith("synthetic/Pa_") for r in rows)
    assert Image.open(folder / rows[0]["file"]).size == (64, 64) and Image.open(folder / rows[0]["file"]).mode == "L"
    assert result["metrics"]["strength_source"] == "config"
    assert (folder / "grid.png").is_file()
    run(generate_cfg(adapted, "stage.num_images=5", "stage.strength=0.4", "stage.guidance_scale=3", "stage.grid_images=0"))
    assert not (folder / "grid.png").exists(), "no grid asked for: the earlier run's grid is not left as this run's"


def test_small_strength_stays_close_to_the_source_reconstruction(tmp_path):
    """At s → 0 img2img returns (the VAE reconstruction of) the source; at s = 1 it does not.

    The UNet predicts zero noise and the VAE posterior is made (almost) deterministic here, so what is
    measured is the strength mechanism of the pipeline, not the quality of random weights.
    """
    sd = build_tiny_sd(seed=0)
    with torch.no_grad():
        sd.unet.conv_out.weight.zero_()
        sd.unet.conv_out.bias.zero_()
        sd.vae.quant_conv.weight[4:].zero_()
        sd.vae.quant_conv.bias[4:].fill_(-30.0)  # log-variance: the posterior sample is its mean
    pipe = sd.pipeline(img2img=True)
    pipe.set_progress_bar_config(disable=True)
    from stablesdg.data.synthetic import render_synthetic_defect

    source = conform_image(render_synthetic_defect("Pa", 1, 64, seed=0), 3, 64)
    pixels = torch.from_numpy(np.asarray(source, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        source_latents = sd.vae.encode(pixels).latent_dist.mean * sd.vae.config.scaling_factor

    def distance(strength):
        latents = pipe("x", image=source, strength=strength, guidance_scale=1.0, num_inference_steps=50,
                       generator=torch.Generator().manual_seed(0), output_type="latent").images
        return float((latents - source_latents).abs().mean() / source_latents.abs().mean())

    near, far = distance(0.02), distance(1.0)
    assert near < 0.01 * far, (near, far)  # the random VAE's latents are small, so compare with s = 1


def test_an_adapter_learned_on_a_model_of_other_widths_is_one_line_naming_the_model_it_was_made_with(
        adapted, tmp_path, monkeypatch, caplog):
    from hydra.utils import instantiate

    from stablesdg.stages import generate

    run(compose_config([f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs", "stage=lora",
                        "stage.use_ti=false", "variant=lonly", "stage.max_steps=2", "stage.validation_every=0", *COMMON]))
    sd15 = ["model=sd15_random", "model.resolution=64"]
    wide = instantiate(compose_config(sd15).model)  # SD1.5's widths, built once for both loads (read, not changed)
    monkeypatch.setattr(generate, "instantiate", lambda model: wide)
    again = "make it again with this model: python -m stablesdg.train stage={} dataset=synthetic category=Pa variant={}"

    with pytest.raises(UserError) as refused:  # a LoRA trained with TI: its TI embedding is loaded first
        load_pipeline(generate_cfg(adapted, *sd15), "Pa")
    assert str(refused.value) == (f"{out_dir(adapted, 'ti')} was made with model=tiny, which this run's model=sd15_random "
                                  "does not fit (its vectors have 32 values, this model's token embeddings 768); "
                                  f"{again.format('ti', 'default')}, or run with model=tiny")
    with pytest.raises(UserError) as refused:
        load_pipeline(generate_cfg(tmp_path, *sd15, "variant=lonly"), "Pa")
    lora = tmp_path / "artifacts/synthetic/Pa/lonly/lora"
    assert str(refused.value).startswith(f"{lora} was made with model=tiny, which this run's model=sd15_random does "
                                         "not fit (size mismatch for ")
    assert str(refused.value).endswith(f"; {again.format('lora', 'lonly')}, or run with model=tiny")
    assert not [r for r in caplog.records if r.levelname == "ERROR"], "diffusers' own log of the error is not shown"


def test_settings_fall_back_to_tuned_file_then_the_dataset_table(adapted, tmp_path):
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("Pa:\n  strength: 0.7\n  guidance_scale: 2.5\n")
    metrics = json.loads(run(generate_cfg(adapted, f"stage.tuned={tuned}", "stage.num_images=2")).read_text())["metrics"]
    assert (metrics["strength"], metrics["guidance_scale"], metrics["strength_source"]) == (0.7, 2.5, "tuned")
    metrics = json.loads(run(generate_cfg(adapted, "stage.num_images=2")).read_text())["metrics"]
    assert (metrics["strength"], metrics["guidance_scale"], metrics["strength_source"]) == (0.5, 5.0, "fallback")


def test_a_tuned_file_without_the_category_says_so_and_uses_the_dataset_table(tmp_path, caplog):
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("Cr: {strength: 0.7, guidance_scale: 2.5}\nPa: {strength: 0.6}\n")
    for category, untuned in (("Sc", "strength or guidance_scale for Sc; using strength=0.5, guidance_scale=5"),
                              ("Pa", "guidance_scale for Pa; using guidance_scale=5")):
        caplog.clear()
        run(generate_cfg(tmp_path, "stage.adapter=base", f"stage.tuned={tuned}", "stage.num_images=1",
                         f"category={category}"))
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
            f"stage.tuned={tuned} has no {untuned} from conf/generation/ instead"]


def test_a_set_made_at_the_table_while_its_variants_sweep_chose_otherwise_warns_with_the_setting_that_uses_it(
        tmp_path, caplog):
    tuned = tmp_path / "artifacts/synthetic/sweeps/default/tuned_generation.yaml"  # where the sweep aggregation writes
    tuned.parent.mkdir(parents=True)
    tuned.write_text("Pa: {strength: 0.3, guidance_scale: 5.0, fid: 1.0}\nSc: {strength: 0.5, guidance_scale: 3.0, fid: 2.0}\n")

    def warnings(*overrides: str) -> list[str]:
        caplog.clear()
        run(generate_cfg(tmp_path, "stage.adapter=base", "stage.num_images=1", *overrides))
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    chose = f"which the sweep of variant default chose; to generate at those, add stage.tuned={tuned}"
    assert warnings() == [f"stage=generate: Pa at s=0.5 (conf/generation/), not at s=0.3, {chose}"]
    assert warnings("category=Sc") == [f"stage=generate: Sc at ω=5 (conf/generation/), not at ω=3, {chose}"]
    assert warnings("category=Sc", "stage.guidance_scale=4") == [], "a value the command gives is its own"
    assert warnings("category=Cr") == [], "the sweep chose nothing for Cr"
    assert warnings("variant=other") == [], "another variant's sweep"
    assert warnings(f"stage.tuned={tuned}") == []
    with open(out_dir(tmp_path) / "manifest.csv", newline="") as handle:
        assert [row["strength"] for row in csv.DictReader(handle)] == ["0.3"]


def test_prompts_that_hydra_reads_as_numbers_are_used_as_text(tmp_path):
    result = run(generate_cfg(tmp_path, "stage.adapter=base", "stage.num_images=1", "stage.strength=0.5",
                              "stage.prompt=7", "stage.negative_prompt=5"))
    assert json.loads(result.read_text())["metrics"]["prompt"] == "7"


@pytest.mark.parametrize("content, message", [
    ("Pa: {strength: [", "is not readable YAML (while parsing a flow node)"),
    (b"\x8b\x00\xff", "is not readable YAML ('utf-8' codec can't decode byte 0x8b"),
    ("- 0.5\n- 5.0\n", "must map each category to its settings"),
    ("Pa: 0.5\n", "must map each category to its settings"),
])
def test_a_tuned_file_that_is_not_per_category_settings_is_one_line(tmp_path, content, message):
    tuned = tmp_path / "tuned.yaml"
    tuned.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=f"^stage.tuned={tuned} " + re.escape(message)):
        run(generate_cfg(tmp_path, "stage.adapter=base", f"stage.tuned={tuned}", "stage.num_images=2"))
    assert not list((tmp_path / "artifacts").rglob("*.png"))


@pytest.mark.parametrize("tuned_text, overrides, message", [
    ("Pa: {strength: abc, guidance_scale: 5}\n", [], "Pa.strength in stage.tuned={tuned} must be a number, got 'abc'"),
    ("Pa: {strength: 0.5, guidance_scale: [1, 2]}\n", [],
     "Pa.guidance_scale in stage.tuned={tuned} must be a number, got [1, 2]"),
    ("", ["generation.fallback.strength=half"], "generation.fallback.strength must be a number, got 'half'"),
    ("", ["generation.fallback=5"], "generation.fallback must map strength and guidance_scale to numbers, e.g. "
                                    "{{strength: 0.5, guidance_scale: 5.0}}, got 5"),
    ("", ["+generation.categories.Pa=3"], "generation.categories.Pa must map strength and guidance_scale to numbers, "
                                          "e.g. {{strength: 0.5, guidance_scale: 5.0}}, got 3"),
    ("", ["generation.categories=5"], "generation.categories must map each category to its settings, e.g. "
                                      "{{Pa: {{strength: 0.5, guidance_scale: 5.0}}}}, got 5"),
])
def test_a_setting_from_a_tuned_file_or_the_table_of_the_wrong_kind_is_one_line(tmp_path, tuned_text, overrides,
                                                                                message):
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(tuned_text)
    with pytest.raises(UserError, match=f"^{re.escape(message.format(tuned=tuned))}$"):
        run(generate_cfg(tmp_path, "stage.adapter=base", f"stage.tuned={tuned}", "stage.num_images=2", *overrides))


@pytest.mark.parametrize("overrides, message", [
    (["stage.strength=0"], "stage.strength must be in (0, 1], got 0.0"),
    (["stage.strength=1.5"], "stage.strength must be in (0, 1], got 1.5"),
    (["stage.guidance_scale=-1"], "stage.guidance_scale must be a finite number >= 0, got -1.0"),
    (["stage.guidance_scale=nan"], "stage.guidance_scale must be a finite number >= 0, got nan"),
    (["stage.guidance_scale=inf"], "stage.guidance_scale must be a finite number >= 0, got inf"),
    (["stage.num_images=0"], "stage.num_images must be a positive integer, got 0"),
    (["stage.num_inference_steps=4", "stage.strength=0.2"], "gives 0 denoising steps"),
    (["stage.scheduler=unknown", "stage.strength=0.5"], "unknown stage.scheduler='unknown'"),
    (["stage.prompt_template=steel"], "stage.prompt_template='steel' has no {} for the placeholder"),
    (["stage.score=true", "stage.features=fid"], "unknown stage.features='fid'; choose from inception, random_inception"),
    (["stage.grid_images=-1"], "stage.grid_images must be an integer >= 0 (0: none), got -1"),
    (["stage.alpha=0.01"], "stage.alpha=0.01 leaves none of the 8 train images of Pa; raise stage.alpha"),
    (["stage.source_split=test", "dataset.split.fractions=[0.9,0.1,0]"],
     "there are no test images of Pa (dataset synthetic, dataset.split.fractions=[0.9, 0.1, 0.0])"),
    (["stage.source_split=training"], "stage.source_split must be one of train, val, test, got 'training'"),
    (["stage.score=true", "stage.real_split=validation"],
     "stage.real_split must be one of train, val, test, got 'validation'"),
    (["stage.score=true", "stage.real_split=val"], "stage.real_split=val holds only 1 image of Pa; FID needs at least 2"),
    (["stage.score=true", "stage.num_images=1"], "stage.num_images=1 leaves FID fewer than the 2 generated images it needs"),
    (["stage.num_inference_steps=1001"], "stage.num_inference_steps=1001 is more than the 1000 timesteps the model was "
                                         "trained with; use at most 1000"),
    # what the command returns to a sweeper, which read it from the result once the set was made and scored
    (["stage.score=true", "stage.objective=kid"], "stage.objective must be one of fid, kid_mean (or null), got 'kid'"),
    (["stage.objective=fid"], "stage.objective=fid needs stage.score=true: the set's fid is what the command returns "
                              "to the sweeper"),
])
def test_bad_generation_settings_are_refused_before_any_image_is_made(tmp_path, overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run(generate_cfg(tmp_path, "stage.adapter=base", *overrides))
    assert not list((tmp_path / "artifacts").rglob("*.png"))


UNUSED_NEGATIVE = ("stage.negative_prompt='blurry' does nothing at stage.guidance_scale={}: diffusers reads it only "
                   "with classifier-free guidance, at a guidance above 1")


@pytest.mark.parametrize("guidance, negative, warnings", [
    ("0.5", "null", ["stage.guidance_scale=0.5 < 1 disables classifier-free guidance"]),
    ("0.5", "blurry", ["stage.guidance_scale=0.5 < 1 disables classifier-free guidance", UNUSED_NEGATIVE.format(0.5)]),
    ("1", "blurry", [UNUSED_NEGATIVE.format(1)]),
    ("3", "blurry", []),
])
def test_guidance_that_turns_cfg_off_says_so_and_that_the_negative_prompt_goes_unread(tmp_path, caplog, guidance,
                                                                                      negative, warnings):
    with caplog.at_level(logging.WARNING, logger="stablesdg.stages.generate"):
        metrics = json.loads(run(generate_cfg(tmp_path, "stage.adapter=base", "stage.num_images=2", "stage.strength=0.5",
                                              f"stage.guidance_scale={guidance}", f"stage.negative_prompt={negative}"))
                             .read_text())["metrics"]
    assert metrics["guidance_scale"] == float(guidance)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == warnings


@pytest.mark.parametrize("init, start", [("image", "s=0.30 (config)"), ("noise", "text-to-image")])
def test_the_start_line_gives_a_strength_only_where_the_images_start_from_real_ones(tmp_path, caplog, init, start):
    with caplog.at_level(logging.INFO, logger="stablesdg.stages.generate"):
        run(generate_cfg(tmp_path, "stage.adapter=base", "stage.num_images=1", "stage.guidance_scale=5",
                         f"stage.init={init}", *(["stage.strength=0.3"] if init == "image" else [])))
    steps = "1 of 4" if init == "image" else "4 of 4"  # img2img runs the last s of the schedule
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("generating ")]
    assert said == [f"generating 1 images of Pa: base, {start}, guidance=5.00 (config), {steps} steps with ddim"]


def test_a_strength_given_for_text_to_image_is_refused_rather_than_ignored(tmp_path):
    # a sweep over stage.strength with stage.init=noise made identical sets under different names
    with pytest.raises(UserError, match=r"^stage.strength=0.3 does nothing with stage.init=noise: text-to-image "):
        run(generate_cfg(tmp_path, "stage.adapter=base", "stage.init=noise", "stage.strength=0.3"))
    assert not out_dir(tmp_path).exists()
    # 1: the pipeline's text-to-image methods sweep ω at strength 1, pure noise
    record = json.loads(run(generate_cfg(tmp_path, "stage.adapter=base", "stage.init=noise", "stage.strength=1",
                                         "stage.num_images=1")).read_text())
    assert record["metrics"]["init"] == "noise"
    for setting in ("stage.source_split=val", "stage.alpha=0.4"):  # the real images img2img would start from
        with pytest.raises(UserError, match=rf"^{setting} does nothing with stage.init=noise: text-to-image starts from "
                                            "no real image"):
            run(generate_cfg(tmp_path, "stage.adapter=base", "stage.init=noise", setting))


def test_a_model_variant_the_base_model_would_not_read_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"^stage.model_variant=other does nothing with stage.adapter=base: the base model "
                                        r"loads no adapter"):
        run(generate_cfg(tmp_path, "stage.adapter=base", "stage.model_variant=other"))
    assert not out_dir(tmp_path).exists()


def test_a_text_to_image_set_names_no_real_image_it_started_from(tmp_path):
    from stablesdg.generated import manifest_rows, real_sources

    run(generate_cfg(tmp_path, "stage.adapter=base", "stage.init=noise", "stage.num_images=2"))
    rows = manifest_rows(out_dir(tmp_path) / "manifest.csv")
    assert [(row["source_image"], row["strength"]) for row in rows] == [("", ""), ("", "")]
    files = [out_dir(tmp_path) / row["file"] for row in rows]
    assert real_sources(files) == {}
    # a set an earlier version made named a source image in each text-to-image row, which it never read
    with open(out_dir(tmp_path) / "manifest.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["file", "source_image", "strength"],
                                      *[[row["file"], "synthetic/Pa_0.png", ""] for row in rows]])
    assert real_sources(files) == {}


@pytest.mark.parametrize("trainer, precision, on_gpu", [
    ("gpu", None, torch.bfloat16), ("gpu", "16-mixed", torch.float16), ("gpu", "32-true", torch.float32),
    ("cpu", None, torch.float32),
])
def test_generation_weights_follow_the_trainer_precision_on_a_gpu_and_stay_fp32_on_a_cpu(trainer, precision, on_gpu):
    from stablesdg.precision import inference_dtype

    cfg = compose_config([f"trainer={trainer}"] + ([f"trainer.precision={precision}"] if precision else []))
    assert inference_dtype(cfg, torch.device("cuda", 0)) == on_gpu
    assert inference_dtype(cfg, torch.device("cpu")) == torch.float32


def test_moving_a_pipeline_to_bf16_casts_every_network_without_diffusers_empty_fp32_notice():
    from stablesdg.models.components import move_pipeline

    class Collect(logging.Handler):
        def emit(self, record):
            notices.append(record.getMessage())

    notices, handler = [], Collect()
    logger = logging.getLogger("diffusers.models.modeling_utils")
    logger.addHandler(handler)
    try:
        pipe = build_tiny_sd(seed=0).pipeline(img2img=True)
        pipe.vae.to(dtype=torch.float32)  # diffusers' own cast gives the notice
        assert len(notices) == 1 and "should be kept in float32: []" in notices[0]
        move_pipeline(pipe, torch.device("cpu"), torch.bfloat16)
    finally:
        logger.removeHandler(handler)
    assert {p.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()} == {torch.bfloat16}
    assert len(notices) == 1


def test_loading_the_adapters_prints_no_library_notice_or_bar_and_restores_transformers_settings(adapted, capfd):
    from transformers.utils import logging as transformers_logging

    transformers_logging.warning_once.cache_clear()  # transformers prints each such notice once per process
    capfd.readouterr()
    pipe, token = load_pipeline(generate_cfg(adapted), "Pa")
    printed = "".join(capfd.readouterr())
    assert token == "<unknown>" and "<unknown>" in pipe.tokenizer.get_vocab()
    assert "mean_resizing" not in printed and "Loading weights" not in printed, printed
    assert transformers_logging.is_progress_bar_enabled()
    assert not logging.getLogger("transformers.modeling_utils").filters


def test_an_adapter_trained_on_another_split_is_refused_before_any_image_is_read(adapted):
    split0 = "split-seed0-0.8-0.1-0.1"  # the split file's name (README)
    assert artifacts.read_result(out_dir(adapted, "lora"))["split"] == split0
    assert (adapted / "artifacts/synthetic/splits" / f"{split0}.json").is_file()
    refused = run_cli(adapted, "stage=generate", *COMMON, "dataset.split.fractions=[0.6,0.2,0.2]")
    assert refused.returncode == 2 and refused.stderr.splitlines() == [
        f"error: synthetic/Pa/default/lora was made on the split {split0} and this run splits the images as "
        "split-seed0-0.6-0.2-0.2 (dataset.split), so images it learned from or was made from may be among this run's "
        "validation and test images; run with the split it was made on, or make it and what it was made from again "
        "on this split, under a variant of their own (variant=<name>)"]
    assert not (adapted / "artifacts/synthetic/splits/split-seed0-0.6-0.2-0.2.json").exists(), "refused by its checks"


def test_missing_adapter_names_the_command(tmp_path):
    with pytest.raises(UserError, match="make it with: python -m stablesdg.train stage=lora dataset=synthetic category=Pa"):
        run(generate_cfg(tmp_path))


def test_another_variant_makes_its_set_from_the_adapters_of_the_variant_it_names(adapted, caplog):
    made = json.loads(run(generate_cfg(adapted, "stage.num_images=2", "stage.guidance_scale=1.0")).read_text())
    with caplog.at_level(logging.INFO, logger="stablesdg.stages.generate"):
        again = run(generate_cfg(adapted, "stage.num_images=2", "stage.guidance_scale=1.0", "variant=second",
                                 "stage.model_variant=default"))
    assert [r.getMessage().split(", ")[0] for r in caplog.records if r.getMessage().startswith("generating ")] == \
        ["generating 2 images of Pa: lora of variant default"]
    record = json.loads(again.read_text())
    assert again.parent == adapted / "artifacts/synthetic/Pa/second/generate"
    assert record["metrics"]["adapter_checksums"] == made["metrics"]["adapter_checksums"]
    assert [p.read_bytes() for p in sorted((again.parent / "images").glob("*.png"))] == \
        [p.read_bytes() for p in sorted((out_dir(adapted) / "images").glob("*.png"))], "the same adapters, settings, seed"
    assert not (adapted / "artifacts/synthetic/Pa/second/lora").exists()
    with pytest.raises(UserError, match=r"needs the lora artifact of synthetic/Pa/third, which does not exist yet .*"
                                        r"make it with: python -m stablesdg.train stage=lora .*variant=third"):
        run(generate_cfg(adapted, "variant=second", "stage.model_variant=third"))


def test_a_set_made_with_an_adapter_since_retrained_is_made_again_not_resumed(tmp_path):
    def train_ti(steps: int) -> None:
        run(compose_config([f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs", "stage=ti",
                            f"stage.max_steps={steps}", "stage.lr=1e-2", "stage.validation_every=0", *COMMON]))

    def generate() -> tuple[int, list[bytes]]:
        record = json.loads(run(generate_cfg(tmp_path, "stage.adapter=ti", "stage.num_images=2")).read_text())
        embedding = out_dir(tmp_path, "ti") / EMBEDS_FILE
        assert record["metrics"]["adapter_checksums"] == {"ti": {EMBEDS_FILE: provenance.file_sha256(embedding)}}
        return record["metrics"]["resumed_images"], [p.read_bytes() for p in sorted(images.glob("*.png"))]

    images = out_dir(tmp_path) / "images"
    train_ti(2)
    _, first = generate()
    assert generate() == (2, first), "the same adapter: the finished set is kept"
    train_ti(4)
    resumed, second = generate()
    assert resumed == 0 and len(second) == 2
    assert second[0] != first[0] and second[1] != first[1], "every image comes from the retrained embedding"


@pytest.mark.parametrize("where", ["tuned", "table"])
def test_a_set_made_at_a_strength_looked_up_elsewhere_is_made_again_not_resumed_once_it_gives_another(tmp_path, where):
    tuned = tmp_path / "tuned.yaml"

    def generate(strength: float) -> tuple[float, int, list[bytes]]:
        tuned.write_text(f"Pa: {{strength: {strength}, guidance_scale: 3}}\n")
        found = [f"stage.tuned={tuned}"] if where == "tuned" else [f"+generation.categories.Pa.strength={strength}"]
        metrics = json.loads(run(generate_cfg(tmp_path, "stage.adapter=base", "stage.num_images=2", *found))
                             .read_text())["metrics"]
        return metrics["strength"], metrics["resumed_images"], [p.read_bytes() for p in sorted(images.glob("*.png"))]

    images = out_dir(tmp_path) / "images"
    _, _, first = generate(0.3)
    assert generate(0.3) == (0.3, 2, first), "the same strength: the finished set is kept"
    strength, resumed, second = generate(0.8)
    assert (strength, resumed) == (0.8, 0) and second[0] != first[0], "every image made at the new strength"


def test_a_set_made_from_a_tuned_file_is_up_to_date_wherever_the_file_lies_until_it_gives_the_category_others(
        tmp_path):
    from stablesdg.up_to_date import why_not_up_to_date

    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("Pa: {strength: 0.3, guidance_scale: 3}\nSc: {strength: 0.5, guidance_scale: 3}\n")

    def config(path: Path, *overrides: str) -> dict:
        return provenance.recorded_config(generate_cfg(tmp_path, "stage.adapter=base", "stage.num_images=2",
                                            f"stage.tuned={path}", *overrides))

    result = run(generate_cfg(tmp_path, "stage.adapter=base", "stage.num_images=2", f"stage.tuned={tuned}"))
    store = str(tmp_path / "artifacts")
    moved = tuned.rename(tmp_path / "best.yaml")
    moved.write_text("Pa: {strength: 0.30, guidance_scale: 3.0}\nSc: {strength: 0.9, guidance_scale: 3}\n")
    assert why_not_up_to_date(result, config(moved), newest_input=0, store=store) is None, "another class's value"
    assert why_not_up_to_date(result, config(moved, "stage.guidance_scale=4"), 0, store) == \
        "made with other settings: stage.guidance_scale=null (now 4)"
    moved.write_text("Pa: {strength: 0.4, guidance_scale: 3}\n")
    assert why_not_up_to_date(result, config(moved), newest_input=0, store=store) == \
        f"made from other values than stage.tuned={moved} gives Pa now"
    assert why_not_up_to_date(result, config(moved, "stage.strength=0.3"), newest_input=0, store=store) == \
        "made with other settings: stage.strength=null (now 0.3)", "the value it is given is compared as a setting"


def test_a_set_made_from_the_generation_table_is_up_to_date_until_the_table_gives_its_category_other_values(tmp_path):
    from stablesdg.up_to_date import why_not_up_to_date

    table = ["+generation.categories.Pa.strength=0.3", "generation.fallback.guidance_scale=3"]

    def config(*overrides: str) -> dict:
        return provenance.recorded_config(generate_cfg(tmp_path, "stage.adapter=base", "stage.num_images=2", *overrides))

    result = run(generate_cfg(tmp_path, "stage.adapter=base", "stage.num_images=2", *table))
    store = str(tmp_path / "artifacts")
    for unread in (["+generation.categories.Sc.strength=0.9", "+generation.categories.Sc.guidance_scale=7"],
                   ["generation.fallback.strength=0.9"]):  # Pa's own entry gives its strength
        assert why_not_up_to_date(result, config(*table, *unread), 0, store) is None, unread
    assert why_not_up_to_date(result, config("+generation.categories.Pa.strength=0.4", table[1]), 0, store) == \
        "made with other settings: generation.categories.Pa.strength=0.3 (now 0.4)"
    assert why_not_up_to_date(result, config(table[0], "generation.fallback.guidance_scale=4"), 0, store) == \
        "made with other settings: generation.fallback.guidance_scale=3 (now 4)"
    moved = ["generation.fallback.strength=0.3", "+generation.categories.Pa.guidance_scale=3"]  # Pa reads 0.3 and 3
    assert why_not_up_to_date(result, config(*moved), 0, store) is None, "the same values, moved in the table"
    assert why_not_up_to_date(result, config(moved[0], "+generation.categories.Pa.guidance_scale=4"), 0, store) == \
        "made with other settings: generation.categories.Pa.guidance_scale=3 (now 4)", "named where it is read now"
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("Pa: {strength: 0.3}\n")  # the table gives Pa's guidance alone
    with_tuned = [*table, f"stage.tuned={tuned}"]
    made_with_tuned = run(generate_cfg(tmp_path, "stage.adapter=base", "stage.num_images=2", *with_tuned))
    assert why_not_up_to_date(made_with_tuned, config("+generation.categories.Pa.strength=0.8", *with_tuned[1:]), 0,
                              store) is None, "the tuned file gives Pa's strength"
    assert why_not_up_to_date(made_with_tuned, config(table[0], "generation.fallback.guidance_scale=4",
                                                      with_tuned[2]), 0, store) == \
        "made with other settings: generation.fallback.guidance_scale=3 (now 4)"


def test_the_settings_a_set_resumes_across_are_settings_of_stage_generate():
    assert set(KEYS_NOT_SHAPING_IMAGES) <= set(compose_config(["stage=generate"]).stage)


def test_a_set_grown_shrunk_or_scored_later_keeps_its_images_and_equals_a_fresh_set(tmp_path, caplog):
    def generate(root: Path, count: int, *overrides: str) -> tuple[int, dict[str, bytes]]:
        record = json.loads(run(generate_cfg(root, "stage.adapter=base", "stage.strength=1.0", "stage.grid_images=2",
                                             f"stage.num_images={count}", *overrides)).read_text())
        images = out_dir(root) / "images"
        with open(out_dir(root) / "manifest.csv", newline="") as handle:
            assert [row["file"] for row in csv.DictReader(handle)] == [f"images/{i:05d}.png" for i in range(count)]
        return record["metrics"]["resumed_images"], {p.name: p.read_bytes() for p in sorted(images.glob("*.png"))}

    def fresh(count: int) -> dict[str, bytes]:
        return generate(tmp_path / f"fresh{count}", count)[1]

    grown = tmp_path / "grown"
    assert generate(grown, 3)[0] == 0  # batches of 2: [0, 1] and a short [2]
    with caplog.at_level(logging.INFO, logger="stablesdg.generated"):
        resumed, images = generate(grown, 5, "stage.score=true", "stage.grid_images=4")
    assert resumed == 2, "[0, 1] is kept; [2, 3] is made whole, as a fresh run of 5 makes it"
    assert "2 of the 5 images were made by an earlier run of these settings and are kept; making the other 3" in [
        r.getMessage() for r in caplog.records]
    assert images == fresh(5)
    resumed, images = generate(grown, 3)
    assert resumed == 2, "the short [2] of a set of 3 is made again, not kept from the batch [2, 3]"
    assert images == fresh(3), "and images 3 and 4 are gone"
    assert generate(grown, 3)[0] == 3, "the same set again: all kept"
    assert generate(grown, 3, "stage.score=true", "stage.objective=fid")[0] == 3, "a sweep's point: scored, all kept"
    resumed, images = generate(grown, 3, "stage.guidance_scale=2.0")
    assert resumed == 0 and images != fresh(3), "a setting that shapes the images makes the set again"


def test_a_score_of_a_set_remade_since_is_reported_stale_until_stage_fid_runs_again(tmp_path, capsys):
    from stablesdg import report

    root = tmp_path / "artifacts"
    fid_overrides = [f"paths.artifacts={root}", f"paths.logs={tmp_path}/logs", "stage=fid", "stage.features=pixels",
                     *COMMON]

    def generate(count: int, *overrides: str) -> None:
        run(generate_cfg(tmp_path, "stage.adapter=base", "stage.strength=1.0", f"stage.num_images={count}", *overrides))

    def fid_state() -> list[str]:
        assert report.main(["status", "--artifacts", str(root)]) == 0
        lines = capsys.readouterr().out.splitlines()
        return next(line.split(None, 2)[1:] for line in lines if line.startswith("synthetic/Pa/default/fid "))

    generate(3)
    record = json.loads(run(compose_config(fid_overrides)).read_text())
    assert record["inputs"] == {"synthetic/Pa/default/generate": artifacts.output_fingerprint(out_dir(tmp_path))}
    assert fid_state()[0] == "finished"
    generate(3, "stage.score=true")
    assert fid_state()[0] == "finished", "the same images, scored this time: what the FID read is unchanged"
    generate(5)
    state, detail = fid_state()
    assert state == "stale" and detail.endswith(" from synthetic/Pa/default/generate, remade or removed since; run "
                                                "the stage again")
    assert report.main(["tables", "--artifacts", str(root), "--dataset", "synthetic"]) == 0
    warned = "1 of these results (first: synthetic/Pa/default/fid) were made from artifacts remade or removed since"
    assert f"warning: {warned}" in capsys.readouterr().err
    assert warned in (root / "report/report.md").read_text()
    run(compose_config(fid_overrides))
    assert fid_state()[0] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_resume_after_a_kill_completes_exactly_the_set(tmp_path, sig):
    overrides = ["stage=generate", "stage.adapter=base", "stage.num_images=16", "stage.batch_size=2",
                 "stage.num_inference_steps=10", "stage.strength=1.0", *COMMON]
    args = [sys.executable, "-m", "stablesdg.train", *overrides, f"paths.artifacts={tmp_path}/artifacts",
            f"paths.logs={tmp_path}/logs"]
    images = tmp_path / "artifacts/synthetic/Pa/default/generate/images"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(images.glob("*.png"))) < 4:
        time.sleep(0.1)
    os.kill(process.pid, sig)
    _, stderr = process.communicate(timeout=120)
    written = len(list(images.glob("*.png")))
    assert 4 <= written < 16, "the kill must land mid-run"
    assert not (images.parent / "result.json").exists()
    if sig == signal.SIGTERM:  # a scheduler's pre-emption: one line, where Python's default says nothing (code 143)
        assert process.returncode == 2 and "Traceback" not in stderr, stderr[-2000:]
        assert stderr.strip().splitlines()[-1] == (
            "error: stage=generate stopped by SIGTERM; run the same command again to resume")
    assert subprocess.run(args, cwd=REPO, capture_output=True).returncode == 0
    assert sorted(p.name for p in images.iterdir() if p.suffix == ".png") == [f"{i:05d}.png" for i in range(16)]
    assert not [p for p in images.iterdir() if p.suffix not in (".png", ".txt")], "no temporary files left"
    record = json.loads((images.parent / "result.json").read_text())
    assert record["metrics"]["num_images"] == 16 and record["metrics"]["resumed_images"] >= 4
    # the resumed set equals an uninterrupted one
    straight = tmp_path / "straight"
    run(compose_config([*overrides, f"paths.artifacts={straight}/artifacts", f"paths.logs={straight}/logs"]))
    for i in range(16):
        a = Image.open(images / f"{i:05d}.png")
        b = Image.open(straight / f"artifacts/synthetic/Pa/default/generate/images/{i:05d}.png")
        assert np.array_equal(np.asarray(a), np.asarray(b)), f"image {i} differs from the uninterrupted run's"


def test_a_set_being_made_again_has_no_grid_of_the_set_it_replaces_until_its_own(tmp_path):
    rows = [{"seed": i} for i in range(4)]
    write_generated_set(tmp_path, rows, lambda indices: [Image.new("L", (8, 8), 200) for _ in indices], 2, "set")
    write_grid(tmp_path, 4)
    assert write_generated_set(tmp_path, rows, lambda indices: pytest.fail("all made"), 2, "set") == 4
    assert (tmp_path / "grid.png").is_file(), "a set made whole before keeps its grid"

    def stopped(indices):
        raise KeyboardInterrupt

    for image in (tmp_path / "images").glob("*.png"):  # what claim_directory does to a set of other settings
        image.unlink()
    with pytest.raises(KeyboardInterrupt):
        write_generated_set(tmp_path, rows, stopped, 2, "set")
    assert not (tmp_path / "grid.png").exists(), "the grid of images no longer there"
    write_generated_set(tmp_path, rows, lambda indices: [Image.new("L", (8, 8), 50) for _ in indices], 2, "set")
    with Image.open(tmp_path / "images/00000.png") as image:
        assert image.getpixel((0, 0)) == 50
    assert np.asarray(write_grid(tmp_path, 4).convert("L")).max() == 50, "the grid of the new set"


def _reference_fid(real: np.ndarray, fake: np.ndarray) -> float:
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_equals_a_float64_scipy_reference_and_is_zero_for_identical_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16))
    fake = rng.normal(0.3, 1.2, size=(200, 16))
    scores = fid_kid(torch.from_numpy(real), torch.from_numpy(fake))
    assert scores["fid"] == pytest.approx(_reference_fid(real, fake), rel=1e-6)
    assert fid_kid(torch.from_numpy(real), torch.from_numpy(real))["fid"] == pytest.approx(0.0, abs=1e-6)
    assert scores["kid_subset_size"] == 200 and scores["kid_mean"] > 0


def test_kid_works_with_fewer_than_1000_real_images_and_without_torchmetrics_buffer_notice(recwarn):
    rng = np.random.default_rng(1)
    scores = fid_kid(torch.from_numpy(rng.normal(size=(30, 8))), torch.from_numpy(rng.normal(size=(50, 8))))
    assert scores["kid_subset_size"] == 30 and np.isfinite(scores["kid_mean"]) and np.isfinite(scores["kid_std"])
    assert not [w for w in recwarn if "extracted features in buffer" in str(w.message)]


@pytest.mark.parametrize("overrides, message", [
    (["stage.features=clip"], "unknown stage.features='clip'; choose from inception, random_inception, pixels"),
    (["stage.max_images=-2"], "stage.max_images must be a positive integer, got -2"),  # not the set without its last 2
    (["stage.max_images=0"], "stage.max_images must be a positive integer, got 0"),
    (["stage.max_images=1"], "stage.max_images=1 leaves FID fewer than the 2 generated images it needs"),
    (["stage.real_split=training"], "stage.real_split must be one of train, val, test, got 'training'"),
])
def test_fid_stage_checks_its_settings_before_looking_for_the_set(tmp_path, overrides, message):
    cfg = compose_config([f"paths.artifacts={tmp_path}/artifacts", "stage=fid", *COMMON, *overrides,
                          "stage.generated=/no/such/set"])
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        run(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["stage.real_split=val"], "stage.real_split=val holds only 1 image of Pa; FID needs at least 2"),
    (["stage.real_split=test", "dataset.split.fractions=[0.9,0.1,0]"],
     "there are no test images of Pa (dataset synthetic, dataset.split.fractions=[0.9, 0.1, 0.0])"),
])
def test_fid_stage_names_too_few_real_images_before_extracting_any_features(tmp_path, overrides, message):
    (tmp_path / "set" / "Pa").mkdir(parents=True)
    for i in range(2):
        Image.new("L", (64, 64), 40 * i).save(tmp_path / "set" / "Pa" / f"{i}.png")
    cfg = compose_config([f"paths.artifacts={tmp_path}/artifacts", "stage=fid", *COMMON, *overrides,
                          f"stage.generated={tmp_path}/set"])
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        run(cfg)
    assert not list((tmp_path / "artifacts").rglob("fid-real-*")), "no real features extracted, none cached"


def test_fid_of_a_category_that_a_generated_set_lacks_names_the_command_that_makes_it(tmp_path, monkeypatch):
    sc_only = tmp_path / "artifacts/synthetic/Sc/v2/generate"  # a finished set of Sc alone (generated.py's layout)
    sc_only.mkdir(parents=True)
    (sc_only / "manifest.csv").write_text("file\n")
    (sc_only / "result.json").write_text("{}")
    (tmp_path / "v2" / "Sc").mkdir(parents=True)  # a folder of the same name here: the store's set is still read
    monkeypatch.chdir(tmp_path)
    cfg = compose_config([f"paths.artifacts={tmp_path}/artifacts", "stage=fid", *COMMON, "variant=v2"])
    with pytest.raises(UserError, match=re.escape("stage.generated=v2 has 0 images of Pa; FID needs at least 2; "
                                                  "stage=generate category=Pa variant=v2 makes them")):
        run(cfg)
    with pytest.raises(UserError, match=r"^stage.generated=\./v2 has 0 images of Pa; FID needs at least 2$"):
        run(compose_config([f"paths.artifacts={tmp_path}/artifacts", "stage=fid", *COMMON, "variant=v2",
                            "stage.generated=./v2"]))


def test_fid_stage_caches_real_features_and_scores_a_folder(tmp_path, caplog, progress_lines):
    from stablesdg.data.synthetic import render_synthetic_defect

    caplog.set_level(logging.INFO)
    (tmp_path / "other" / "Pa").mkdir(parents=True)
    for i in range(6):
        render_synthetic_defect("Pa", 100 + i, 64, seed=0).save(tmp_path / "other" / "Pa" / f"{i}.png")
    overrides = [f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs", "stage=fid",
                 f"stage.generated={tmp_path}/other", "stage.features=pixels", "variant=other", *COMMON]
    first = json.loads(run(compose_config(overrides)).read_text())["metrics"]
    # a progress bar per extraction (minutes on a CPU with InceptionV3), logged where no terminal shows it
    assert progress_lines() == ["pixels features of Pa, real: 100%|##########| 8/8",
                                "pixels features of Pa, generated: 100%|##########| 6/6"]
    caches = list((tmp_path / "artifacts/synthetic/Pa/_cache").glob("fid-real-pixels-train-*.safetensors"))
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns
    second = json.loads(run(compose_config(overrides)).read_text())["metrics"]
    assert caches[0].stat().st_mtime_ns == stamp and second == first
    assert progress_lines() == ["pixels features of Pa, generated: 100%|##########| 6/6"], "real: cached"
    assert first["n_real"] == 8 and first["n_fake"] == 6 and first["fid"] > 0
    said = [r.getMessage() for r in caplog.records if r.name == "stablesdg.stages.fid"]
    assert said[-1] == (f"stage=fid: Pa, 6 generated images ({tmp_path}/other) against 8 real train images: "
                        f"FID {first['fid']:.4g}, KID {first['kid_mean']:.4g} ± {first['kid_std']:.3g} "
                        "(pixels features: they compare runs of this tool, not published FIDs)")


def test_fid_records_the_set_it_read_and_warns_where_the_report_would_count_it_for_another_method(tmp_path, caplog,
                                                                                                  monkeypatch):
    from stablesdg.data.synthetic import render_synthetic_defect

    folder = tmp_path / "sg3" / "Pa"
    stored = tmp_path / "artifacts/synthetic/Pa/dcgan/generate"  # a finished set of variant dcgan
    for images in (folder, stored / "images"):
        images.mkdir(parents=True)
        for i in range(3):
            render_synthetic_defect("Pa", 100 + i, 64, seed=0).save(images / f"{i}.png")
    (stored / "manifest.csv").write_text("file\nimages/0.png\nimages/1.png\nimages/2.png\n")
    (stored / "result.json").write_text("{}")
    monkeypatch.chdir(tmp_path)

    def score(*overrides):
        caplog.clear()
        cfg = compose_config([f"paths.artifacts={tmp_path}/artifacts", "stage=fid", "stage.features=pixels", *COMMON,
                              *overrides])
        read = json.loads(run(cfg).read_text())["metrics"]["generated"]
        return read, [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    assert score("variant=dcgan") == ("dcgan", [])
    assert score("variant=stylegan3", f"stage.generated={tmp_path}/sg3") == (str(tmp_path / "sg3"), []), \
        "a folder under a variant of its own is that variant's"
    assert score("variant=ti_only", "stage.generated=dcgan") == ("dcgan", [
        "stage.generated=dcgan is variant dcgan's generated set, not variant ti_only's, so the report leaves this result "
        "out of its tables (a variant's rows count its own set only); run it with variant=dcgan for a row"])
    assert score("stage.generated=sg3/Pa") == (str(folder), [  # relative to the current folder, recorded absolute
        f"stage.generated={folder} is a folder read under variant default, StableSDG's own (where a run that names no "
        "variant goes), so the report leaves this result out of its tables (StableSDG's rows count its own generated "
        "sets only); for a row, name the method the folder holds: variant=<name> (variant=stylegan3 for StyleGAN3's)"])


def test_fid_of_one_category_reads_a_flat_folder_of_its_images_and_a_sets_folder_by_its_manifest(tmp_path):
    from stablesdg.data.synthetic import render_synthetic_defect

    (tmp_path / "classes" / "Pa").mkdir(parents=True)
    (tmp_path / "flat" / "unrelated").mkdir(parents=True)
    for i in range(5):
        image = render_synthetic_defect("Pa", 100 + i, 64, seed=0)
        image.save(tmp_path / "classes" / "Pa" / f"{i}.png")
        image.save(tmp_path / "flat" / f"{i}.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "flat" / "unrelated" / "x.png")  # not an image of the flat set

    def score(generated):
        cfg = compose_config([f"paths.artifacts={tmp_path}/artifacts", "stage=fid", "stage.features=pixels", *COMMON,
                              f"stage.generated={generated}"])
        return json.loads(run(cfg).read_text())

    by_class, flat = score(tmp_path / "classes")["metrics"], score(tmp_path / "flat")["metrics"]
    assert flat["n_fake"] == 5 and {k: v for k, v in flat.items() if k != "generated"} == \
        {k: v for k, v in by_class.items() if k != "generated"}

    stored = tmp_path / "artifacts/synthetic/Pa/v/generate"  # a finished set: manifest rows, and a grid beside
    (stored / "images").mkdir(parents=True)
    for i in range(4):
        render_synthetic_defect("Pa", 100 + i, 64, seed=0).save(stored / "images" / f"{i}.png")
    (stored / "manifest.csv").write_text("file\nimages/0.png\nimages/1.png\nimages/2.png\n")
    Image.new("L", (64, 64), 255).save(stored / "grid.png")
    (stored / "result.json").write_text("{}")
    for folder in (stored, stored / "images"):
        result = score(folder)
        assert result["metrics"]["n_fake"] == 3, "the manifest's images, not the grid or an unlisted file"
        assert list(result["inputs"]) == ["synthetic/Pa/v/generate"], "read as the set, as variant=v reads it"
    (stored / "images" / "config_hash.txt").write_text("...")  # a set made again, unfinished: refused, not read
    (stored / "result.json").unlink()
    for folder in (stored, stored / "images"):
        with pytest.raises(UserError, match=re.escape(f"no finished generated set in {stored} (no result.json)")):
            score(folder)
    (tmp_path / "artifacts/synthetic/Pa/v/ti").mkdir(parents=True)
    (tmp_path / "artifacts/synthetic/Pa/v/ti/result.json").write_text("{}")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path}/artifacts/synthetic/Pa/v/ti is the folder of a stage "
                                                  "that makes no generated set")):
        score(tmp_path / "artifacts/synthetic/Pa/v/ti")
    with pytest.raises(UserError, match=re.escape(f"generated-image folder {tmp_path} has no class sub-folders (Cr "
                                                  "(crazing), Pa (patches), PS (pitted_surface), Sc (scratches)) and "
                                                  "no images of Pa directly in it")):
        score(tmp_path)
    assert score(tmp_path / "classes" / "Pa")["metrics"]["n_fake"] == 5, "the category's own folder, given directly"
    scratches = (tmp_path / "flat").rename(tmp_path / "scratches")
    with pytest.raises(UserError, match=re.escape(f"generated-image folder {scratches} holds the images of class Sc, by "
                                                  "its name, not of Pa: give the folder of Pa's images")):
        score(scratches)


def test_random_inception_features_are_deterministic_and_finite():
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    a = build_feature_extractor("random_inception", seed=0)(images)
    b = build_feature_extractor("random_inception", seed=0)(images)
    assert a.shape == (3, 2048) and torch.equal(a, b) and torch.isfinite(a).all()


@pytest.mark.parametrize("count", [0, 1, 5])
def test_features_in_batches_are_those_of_all_images_at_once_in_float64_on_the_host(count):
    images = torch.rand(count, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    extractor = build_feature_extractor("pixels")
    features = extract_features(extractor, iter(images), batch_size=2)
    assert features.dtype == torch.float64 and features.device.type == "cpu"
    assert features.shape == (count, extractor.num_features)
    if count:
        assert torch.equal(features, extractor(images).double())


def test_standard_inception_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="pt_inception-2015-12-05-6726825d.pth.*stage.inception_weights=<file>"):
        build_feature_extractor("inception")


class _Payload:
    """A pickled object that would run code on load: it makes the file named ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_inception_weights_holding_code_are_refused_and_the_code_never_runs(tmp_path):
    # torch-fidelity itself unpickles the file with weights_only=False
    torch.save({"Conv2d_1a_3x3.conv.weight": _Payload(tmp_path / "ran")}, tmp_path / INCEPTION_FILE)
    with pytest.raises(UserError, match=rf"^cannot read stage.inception_weights={tmp_path}/{INCEPTION_FILE}: not a "
                                        r"state dict that torch.load\(weights_only=True\) reads"):
        build_feature_extractor("inception", str(tmp_path / INCEPTION_FILE))
    assert not (tmp_path / "ran").exists()


def test_generation_that_scores_its_set_refuses_unreadable_inception_weights_before_making_any_image(tmp_path):
    (tmp_path / "inception.pth").write_text("garbage")
    done = run_cli(tmp_path, "stage=generate", "category=Pa", "stage.adapter=base", "stage.num_images=2",
                   "stage.score=true", "stage.features=inception", f"stage.inception_weights={tmp_path}/inception.pth",
                   "logger=none")
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: cannot read stage.inception_weights={tmp_path}/inception.pth: "), done.stderr
    assert not list((tmp_path / "artifacts").rglob("*.png"))


def test_inception_weights_of_another_network_are_one_line_naming_what_does_not_fit(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=rf"^stage.inception_weights={tmp_path}/other.pth is not the FID InceptionV3 "
                                        rf"\({INCEPTION_FILE}\): Missing key\(s\) in state_dict: .*…; size mismatch "
                                        r"for fc.weight: .*$"):
        build_feature_extractor("inception", str(tmp_path / "other.pth"))


def test_sweep_through_hydra_picks_the_minimum_fid_cell(tmp_path):
    done = run_cli(tmp_path, "+sweep=strength_guidance", "stage.adapter=base", "stage.strength=0.3,0.6",
                   "stage.guidance_scale=2,4", "stage.num_images=4", "stage.num_inference_steps=4", "stage.features=pixels",
                   *COMMON, flags=("-m", "--config-dir", str(REPO / "multirun_sweeps")))
    assert done.returncode == 0, done.stderr[-2000:]
    cells = {}
    for result in (tmp_path / "artifacts/synthetic/Pa/default").glob("sweep_*/result.json"):
        metrics = json.loads(result.read_text())["metrics"]
        cells[(metrics["strength"], metrics["guidance_scale"])] = metrics["fid"]
    assert set(cells) == {(0.3, 2.0), (0.3, 4.0), (0.6, 2.0), (0.6, 4.0)}
    for (strength, guidance), fid in cells.items():  # each job says its cell's score
        assert f"stage=generate: Pa, 4 generated images (default/sweep_s{strength}_g{guidance:g}) against 8 real train " \
               f"images: FID {fid:.4g}, KID " in done.stdout, done.stdout[-3000:]

    sweeps = tmp_path / "artifacts/synthetic/sweeps/default"
    tuned = yaml.safe_load((sweeps / "tuned_generation.yaml").read_text())
    best = min(cells, key=cells.get)
    assert (tuned["Pa"]["strength"], tuned["Pa"]["guidance_scale"]) == best and tuned["Pa"]["fid"] == cells[best]
    with open(sweeps / "fid_Pa.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[1][0] == "0.3" and float(rows[1][2]) == cells[(0.3, 4.0)]
    assert (sweeps / "fid_Pa.png").is_file() and "| 0.6 |" in (sweeps / "fid_Pa.md").read_text()

    # the same sweep again (run again after an interruption): its finished points are skipped, not made again
    results = {path: path.read_bytes() for path in (tmp_path / "artifacts/synthetic/Pa/default").glob("sweep_*/result.json")}
    again = run_cli(tmp_path, "+sweep=strength_guidance", "stage.adapter=base", "stage.strength=0.3,0.6",
                    "stage.guidance_scale=2,4", "stage.num_images=4", "stage.num_inference_steps=4",
                    "stage.features=pixels", *COMMON, flags=("-m", "--config-dir", str(REPO / "multirun_sweeps")))
    assert again.returncode == 0, again.stderr[-2000:]
    assert {path: path.read_bytes() for path in results} == results
    assert again.stdout.count("up to date: skipped (skip_up_to_date=true)") == 4
    assert yaml.safe_load((sweeps / "tuned_generation.yaml").read_text()) == tuned


def test_sweep_aggregation_logs_the_matrix_to_wandb(tmp_path, caplog):
    from lightning.pytorch.loggers import WandbLogger

    from stablesdg.sweeps import aggregate_sweep

    for strength, guidance, fid in ((0.3, 3.0, 9.0), (0.3, 5.0, 7.0), (0.5, 3.0, 8.0)):
        artifacts.write_result(tmp_path / "a" / "neu" / "Pa" / "default" / f"sweep_s{strength}_g{guidance}", stage="generate",
                               dataset="neu", category="Pa", variant="default", config={}, wall_time_s=0,
                               metrics={"strength": strength, "guidance_scale": guidance, "fid": fid})
    logger = WandbLogger(project="stablesdg-test", save_dir=str(tmp_path / "logs"), mode="offline")
    artifacts.write_result(tmp_path / "a" / "neu" / "Cr" / "default" / "sweep_s0.7_g7.5", stage="generate",
                           dataset="neu", category="Cr", variant="default", config={}, wall_time_s=0,
                           metrics={"strength": 0.7, "guidance_scale": 7.5, "fid": 123.456789})
    artifacts.write_result(tmp_path / "a" / "neu" / "PS" / "default" / "sweep_s0.5_g5.0", stage="generate",
                           dataset="neu", category="PS", variant="default", config={}, wall_time_s=0,
                           metrics={"strength": 0.5, "guidance_scale": 5.0, "fid": 50.0})
    with caplog.at_level(logging.INFO, logger="stablesdg.sweeps"):
        best = aggregate_sweep(tmp_path / "a", "neu", logger=logger)
    logger.finalize("success")
    logger.experiment.finish()
    assert best == {"Cr": {"strength": 0.7, "guidance_scale": 7.5, "fid": 123.456789},
                    "Pa": {"strength": 0.3, "guidance_scale": 5.0, "fid": 7.0},
                    "PS": {"strength": 0.5, "guidance_scale": 5.0, "fid": 50.0}}
    assert [r.getMessage() for r in caplog.records if r.name == "stablesdg.sweeps"] == [  # Pa before PS, as NEU lists them
        "sweep of neu/default: lowest fid: Cr s=0.7 ω=7.5 (123.5); Pa s=0.3 ω=5 (7); PS s=0.5 ω=5 (50); written to "
        f"{tmp_path}/a/neu/sweeps/default/tuned_generation.yaml"]
    tuned = (tmp_path / "a/neu/sweeps/default/tuned_generation.yaml").read_text()
    assert [line for line in tuned.splitlines() if not line.startswith(" ")] == ["Cr:", "Pa:", "PS:"]
    assert yaml.safe_load(tuned) == best
    tables = sorted((tmp_path / "logs" / "wandb").glob("offline-run-*/files/media/table/**/*.table.json"))
    assert len(tables) == 3
    table = json.loads(next(t for t in tables if "fid_Pa" in t.name).read_text())
    assert table["columns"] == ["strength \\ guidance_scale", "3.0", "5.0"]
    assert table["data"] == [[0.3, 9.0, 7.0], [0.5, 8.0, None]], "the missing cell stays missing"


def test_fid_settings_given_to_a_set_that_is_not_scored_are_named_as_unread(tmp_path):
    from omegaconf import OmegaConf

    from stablesdg.unread_settings import unread_scoring_settings

    given = ["stage=generate", "stage.features=pixels", "stage.real_split=val", "stage.num_images=2"]
    unscored = OmegaConf.create({"name": "generate", "score": False})
    assert unread_scoring_settings(given, unscored) == ["stage.features=pixels", "stage.real_split=val"]
    assert unread_scoring_settings(given, OmegaConf.create({"name": "generate", "score": True})) == []
    assert unread_scoring_settings(given, OmegaConf.create({"name": "fid"})) == []
    done = run_cli(tmp_path, "stage=generate", "category=Pa", "stage.adapter=base", "stage.num_images=2",
                   "stage.num_inference_steps=2", "stage.features=pixels", "dataset.synthetic.per_class=10",
                   "logger=none")
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("stage.features=pixels: stage=generate scores its set only with stage.score=true, and leaves it unread; "
            "add stage.score=true, or score the finished set with stage=fid") in done.stdout + done.stderr
    (result,) = (tmp_path / "artifacts").rglob("result.json")
    assert "fid" not in json.loads(result.read_text())["metrics"]


@pytest.mark.parametrize("given, unread", [(["stage.strength=0.5", "stage.guidance_scale=3"], True),
                                           (["stage.strength=0.5"], False), ([], False)])
def test_a_tuned_file_given_where_both_of_its_values_are_set_is_named_as_unread(given, unread):
    from stablesdg.unread_settings import unread_setting_notes

    command = ["stage=generate", "stage.tuned=sweeps/tuned_generation.yaml", *given]
    note = ("stage.tuned=sweeps/tuned_generation.yaml: stage.strength and stage.guidance_scale are both set, and come "
            "before a tuned file's values, which leaves it unread; leave one out to read it from the file")
    assert unread_setting_notes(command, compose_config(command).stage) == ([note] if unread else [])


def test_a_scored_set_and_stage_fid_log_their_scores_and_settings_each_in_a_run_named_after_its_folder(tmp_path):
    common = ("category=Pa", "stage.features=pixels", "dataset.synthetic.per_class=10", "logger=csv")
    made = run_cli(tmp_path, "stage=generate", "stage.adapter=base", "stage.num_images=4", "stage.num_inference_steps=2",
                   "stage.score=true", *common)
    assert made.returncode == 0, made.stderr
    scored = run_cli(tmp_path, "stage=fid", *common)
    assert scored.returncode == 0, scored.stderr
    for folder in ("generate", "fid"):
        result = artifacts.read_result(tmp_path / "artifacts/synthetic/Pa/default" / folder)
        logged = tmp_path / "logs/csv" / f"synthetic-Pa-default-{folder}/version_0"
        with open(logged / "metrics.csv", newline="") as handle:
            (row,) = list(csv.DictReader(handle))
        for key in ("fid", "kid_mean", "kid_std", "n_real", "n_fake"):
            assert float(row[key]) == pytest.approx(result["metrics"][key], rel=1e-12), (folder, key)
        assert yaml.safe_load((logged / "hparams.yaml").read_text()) == result["config"], "the settings it ran with"
    assert float(row["fid"]) > 0


@pytest.mark.parametrize("given, used", [("stage.prompt=''", ""), ("stage.prompt='rusty steel'", "rusty steel"),
                                         ("stage.prompt_template='steel with {}'", "steel with <unknown>")])
def test_a_set_is_made_from_the_prompt_given_the_empty_one_included(tmp_path, given, used):
    done = run_cli(tmp_path, "stage=generate", "category=Pa", "stage.adapter=base", "stage.num_images=2",
                   "stage.num_inference_steps=2", "dataset.synthetic.per_class=10", "logger=none", given)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "artifacts/synthetic/Pa/default/generate"
    with open(folder / "manifest.csv", newline="") as handle:
        assert [row["prompt"] for row in csv.DictReader(handle)] == [used, used]
    assert artifacts.read_result(folder)["metrics"]["prompt"] == used
