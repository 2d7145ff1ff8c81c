"""Textual inversion, LoRA and full fine-tuning on the tiny model: what changes, what is saved, what reloads."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from stablesdg import artifacts

from conftest import REPO, compose_config, meeting_port, outputs_of_all, run_cli
from stablesdg.adaptation.latents import latent_cache_key
from stablesdg.adaptation.lora import DIFFUSERS_FILE, KOHYA_FILE, add_lora, autocast_chooses_adapter_input_dtype
from stablesdg.adaptation.placeholder import EMBEDS_FILE
from stablesdg.errors import UserError
from stablesdg.models import build_sd15_random, build_tiny_sd
from stablesdg.stages.adapt import adapt_full, adapt_lora, adapt_ti, make_prior_images
from stablesdg.stages.checks import check_adaptation

# model.resolution=32: latents of 16 x 16, a quarter of the default 64 px model's work per step (what these tests check
# does not depend on the image size)
FAST = ["dataset.synthetic.per_class=10", "logger=none", "stage.validation_every=0", "category=Pa", "model.resolution=32"]
BASE_VOCAB = 49408


class FixedBatchLoss(L.Callback):
    """The mean loss over fixed draws (fixed latents, noise and timesteps) before and after training."""

    def __init__(self, draws: int = 8):
        self.draws = draws
        self.before = self.after = None

    @torch.no_grad()
    def measure(self, module) -> float:
        losses = []
        for i in range(self.draws):
            generator = module.step_generator(step=10_000_000 + i)
            latents = module.draw_latents(module.latent_dist, generator)
            losses.append(module.denoising_loss(latents, module.prompt_ids, generator))
        return float(torch.stack(losses).mean())

    def on_train_start(self, trainer, module):
        self.before = self.measure(module)

    def on_train_end(self, trainer, module):
        self.after = self.measure(module)


def stage_out(cfg) -> Path:
    return Path(cfg.paths.artifacts) / "synthetic" / "Pa" / cfg.variant / cfg.stage.name


def record_result(cfg, adaptation) -> None:
    """Mark the stage finished, as the entry point does after a stage returns."""
    artifacts.write_result(stage_out(cfg), stage=cfg.stage.name, dataset="synthetic", category="Pa", variant=cfg.variant,
                           metrics=adaptation.metrics, config=OmegaConf.to_container(cfg, resolve=True), wall_time_s=0)


def prompt_ids(tokenizer, prompt):
    return tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def trained_ti(tmp_path_factory):
    from conftest import compose_config

    root = tmp_path_factory.mktemp("ti")
    cfg = compose_config([f"paths.artifacts={root}/artifacts", f"paths.logs={root}/logs", "stage=ti", "stage.max_steps=15",
                          "stage.lr=5e-3", *FAST, "model.resolution=64"])  # 15 steps lower the loss at 64 px, not at 32
    loss = FixedBatchLoss()
    adaptation = adapt_ti(cfg, stage_out(cfg), callbacks=[loss])
    record_result(cfg, adaptation)
    return cfg, adaptation, loss


def test_ti_learns_three_new_tokens_for_unknown_and_nothing_else(trained_ti):
    cfg, adaptation, _ = trained_ti
    base = build_tiny_sd(seed=0)
    base_table = base.text_encoder.get_input_embeddings().weight
    table = adaptation.components.text_encoder.get_input_embeddings().weight
    assert table.shape == (BASE_VOCAB + 3, 32)
    assert torch.equal(table[:BASE_VOCAB], base_table), "every base row must be bit-identical"
    saved = load_file(str(stage_out(cfg) / EMBEDS_FILE))
    assert list(saved) == ["<unknown>"] and saved["<unknown>"].shape == (3, 32)
    assert torch.equal(table[BASE_VOCAB:], saved["<unknown>"])
    init_ids = base.tokenizer("<unknown>", add_special_tokens=False).input_ids
    assert base.tokenizer.convert_ids_to_tokens(init_ids) == ["<</w>", "unknown</w>", "></w>"]
    assert not torch.equal(saved["<unknown>"], base_table[init_ids]), "the vectors must have been trained"
    assert adaptation.metrics["tokens"] == ["<unknown>", "<unknown>_1", "<unknown>_2"]
    assert adaptation.metrics["trainable_parameters"] == 3 * 32


def test_ti_fixed_batch_loss_does_not_rise(trained_ti):
    _, _, loss = trained_ti
    assert loss.after <= loss.before + 1e-6, (loss.before, loss.after)


def test_ti_file_loads_with_diffusers_and_reproduces_the_text_encoder(trained_ti):
    cfg, adaptation, _ = trained_ti
    pipe = build_tiny_sd(seed=0).pipeline()
    pipe.load_textual_inversion(str(stage_out(cfg) / EMBEDS_FILE))
    prompt = pipe.maybe_convert_prompt("A photo of <unknown>", pipe.tokenizer)
    assert prompt == adaptation.metrics["prompt"] == "A photo of <unknown> <unknown>_1 <unknown>_2"
    ids = prompt_ids(pipe.tokenizer, prompt)
    assert torch.equal(ids, prompt_ids(adaptation.components.tokenizer, prompt))
    with torch.no_grad():
        expected = adaptation.components.text_encoder(ids)[0]
        assert torch.allclose(pipe.text_encoder(ids)[0], expected, atol=1e-6)


def test_ti_on_an_existing_word_leaves_the_vocabulary_untouched(make_cfg):
    cfg = make_cfg("stage=ti", "stage.placeholder=defect", "stage.max_steps=3", *FAST)
    adaptation = adapt_ti(cfg, stage_out(cfg))
    tokenizer = adaptation.components.tokenizer
    word_id = build_tiny_sd(0).tokenizer("defect", add_special_tokens=False).input_ids
    assert tokenizer("defect", add_special_tokens=False).input_ids == word_id, "the base word keeps its id"
    assert tokenizer.convert_tokens_to_ids("<defect>") == BASE_VOCAB
    saved = load_file(str(stage_out(cfg) / EMBEDS_FILE))
    assert list(saved) == ["<defect>"] and saved["<defect>"].shape == (1, 32)
    assert adaptation.metrics["prompt"] == "A photo of <defect>"


def _attention_projections(module, targets):
    return {name: m for name, m in module.named_modules()
            if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)}


@pytest.mark.parametrize("rank", [1, 4])
def test_lora_starts_unchanged_and_has_the_expected_parameter_count(rank):
    sd = build_tiny_sd(seed=0)
    te_targets = _attention_projections(sd.text_encoder, ("q_proj", "k_proj", "v_proj", "out_proj"))
    unet_targets = _attention_projections(sd.unet, ("to_q", "to_k", "to_v", "to_out.0"))
    assert len(te_targets) == 5 * 4 and len(unet_targets) > 0
    expected = sum(rank * (m.in_features + m.out_features) for m in [*te_targets.values(), *unet_targets.values()])
    ids = prompt_ids(sd.tokenizer, "A photo of a steel surface")
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = sd.text_encoder(ids)[0]
        before = sd.unet(latents, 500, encoder_hidden_states=hidden).sample
        for module in sd.modules().values():
            module.requires_grad_(False)
        add_lora(sd, rank)
        assert torch.equal(sd.text_encoder(ids)[0], hidden)
        assert torch.equal(sd.unet(latents, 500, encoder_hidden_states=hidden).sample, before)
    trainable = sum(p.numel() for m in sd.modules().values() for p in m.parameters() if p.requires_grad)
    assert trainable == expected


def test_lora_adapters_start_from_the_seed_and_leave_the_global_rng_alone():
    def adapters(seed: int) -> dict[str, torch.Tensor]:
        sd = build_tiny_sd(seed=0)
        add_lora(sd, 1, seed=seed)
        return {n: p for m in (sd.unet, sd.text_encoder) for n, p in m.named_parameters() if "lora_A" in n}

    state = torch.random.get_rng_state()
    first, again, other = adapters(0), adapters(0), adapters(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first and all(torch.equal(first[n], again[n]) for n in first)
    assert not any(torch.equal(first[n], other[n]) for n in first)


@pytest.fixture(scope="module")
def trained_lora(trained_ti):
    from conftest import compose_config

    ti_cfg = trained_ti[0]
    cfg = compose_config([f"paths.artifacts={ti_cfg.paths.artifacts}", f"paths.logs={ti_cfg.paths.logs}", "stage=lora",
                          "stage.max_steps=30", "stage.lr=1e-2", *FAST])
    loss = FixedBatchLoss()
    return cfg, adapt_lora(cfg, stage_out(cfg), callbacks=[loss]), loss


def test_lora_loss_drops_on_a_fixed_batch(trained_lora):
    _, adaptation, loss = trained_lora
    assert loss.after < 0.97 * loss.before, (loss.before, loss.after)
    assert adaptation.metrics["prompt"] == "A photo of <unknown> <unknown>_1 <unknown>_2"


@pytest.mark.parametrize("lora_file", [DIFFUSERS_FILE, KOHYA_FILE])
def test_lora_files_reload_into_a_fresh_pipeline(trained_ti, trained_lora, lora_file):
    """Both LoRA files give the trained model back: the kohya copy through diffusers' own kohya converter."""
    ti_cfg = trained_ti[0]
    cfg, adaptation, _ = trained_lora
    pipe = build_tiny_sd(seed=0).pipeline()
    pipe.load_textual_inversion(str(stage_out(ti_cfg) / EMBEDS_FILE))
    pipe.load_lora_weights(str(stage_out(cfg)), weight_name=lora_file)
    ids = prompt_ids(pipe.tokenizer, pipe.maybe_convert_prompt("A photo of <unknown>", pipe.tokenizer))
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = adaptation.components.text_encoder(ids)[0]
        assert torch.allclose(pipe.text_encoder(ids)[0], hidden, atol=1e-4)
        expected = adaptation.components.unet(latents, torch.tensor([10, 700]), encoder_hidden_states=hidden.expand(2, -1, -1)).sample
        got = pipe.unet(latents, torch.tensor([10, 700]), encoder_hidden_states=hidden.expand(2, -1, -1)).sample
        assert torch.allclose(got, expected, atol=1e-4)
        base_unet = build_tiny_sd(seed=0).unet(latents, torch.tensor([10, 700]), encoder_hidden_states=hidden.expand(2, -1, -1)).sample
        assert not torch.allclose(base_unet, expected, atol=1e-4), "LoRA must have changed the UNet"


def test_lora_kohya_copy_has_the_expected_keys(trained_lora):
    cfg, adaptation, _ = trained_lora
    kohya = load_file(str(stage_out(cfg) / KOHYA_FILE))
    sd = build_tiny_sd(seed=0)
    expected = set()
    for prefix, module, targets in (("lora_unet_", sd.unet, ("to_q", "to_k", "to_v", "to_out.0")),
                                    ("lora_te_text_model_", sd.text_encoder, ("q_proj", "k_proj", "v_proj", "out_proj"))):
        for name in _attention_projections(module, targets):
            stem = prefix + name.replace(".", "_")
            expected |= {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"}
    assert set(kohya) == expected
    assert all(float(v) == 1.0 for k, v in kohya.items() if k.endswith(".alpha"))
    assert (stage_out(cfg) / DIFFUSERS_FILE).is_file()


class CrashAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_after_a_crash_equals_an_uninterrupted_run(make_cfg, tmp_path, recwarn):
    overrides = ["stage=ti", "stage.max_steps=6", "stage.checkpoint_every=2", *FAST]
    straight = make_cfg(*overrides, f"paths.artifacts={tmp_path}/straight")
    uninterrupted = adapt_ti(straight, stage_out(straight))
    crashed = make_cfg(*overrides, f"paths.artifacts={tmp_path}/crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        adapt_ti(crashed, stage_out(crashed), callbacks=[CrashAt(3)])
    assert not (stage_out(crashed) / EMBEDS_FILE).exists()
    assert (stage_out(crashed) / "checkpoints" / "last.ckpt").is_file()
    checkpoint = torch.load(stage_out(crashed) / "checkpoints" / "last.ckpt", weights_only=True)
    assert list(checkpoint["state_dict"]) == ["text_encoder.embeddings.token_embedding.learned"]
    assert checkpoint["global_step"] == 2
    resumed = adapt_ti(crashed, stage_out(crashed))
    assert resumed.metrics == uninterrupted.metrics  # the loss of all 6 steps, not of the 4 after the resume
    assert (stage_out(crashed) / "loss.csv").read_bytes() == (stage_out(straight) / "loss.csv").read_bytes()
    assert resumed.metrics["steps"] == 6
    assert not [w for w in recwarn if "not resumable" in str(w.message)], "Lightning knows the run resumes exactly"
    a = load_file(str(stage_out(straight) / EMBEDS_FILE))["<unknown>"]
    b = load_file(str(stage_out(crashed) / EMBEDS_FILE))["<unknown>"]
    assert torch.equal(a, b)
    assert not (stage_out(crashed) / "checkpoints").exists(), "checkpoints are removed once the artifact exists"


class StartStep(L.Callback):
    """The step a run starts training at: 0, or a resumed checkpoint's."""

    def on_train_start(self, trainer, module):
        self.step = trainer.global_step


def test_a_run_stopped_without_gradient_checkpointing_resumes_with_it_to_the_uninterrupted_artifact(make_cfg, tmp_path):
    """What a user does after running out of GPU memory at step 3: run the command again with
    stage.gradient_checkpointing=true, which resumes from the last checkpoint rather than starting again."""
    overrides = ["stage=ti", "stage.max_steps=6", "stage.checkpoint_every=2", *FAST]
    straight = make_cfg(*overrides, f"paths.artifacts={tmp_path}/straight")
    adapt_ti(straight, stage_out(straight))
    stopped = make_cfg(*overrides, f"paths.artifacts={tmp_path}/stopped")
    with pytest.raises(RuntimeError, match="simulated crash"):
        adapt_ti(stopped, stage_out(stopped), callbacks=[CrashAt(3)])
    again = make_cfg(*overrides, "stage.gradient_checkpointing=true", f"paths.artifacts={tmp_path}/stopped")
    start = StartStep()
    adapt_ti(again, stage_out(again), callbacks=[start])
    assert start.step == 2, "resumed from the checkpoint of step 2"
    assert (stage_out(again) / EMBEDS_FILE).read_bytes() == (stage_out(straight) / EMBEDS_FILE).read_bytes()
    assert (stage_out(again) / "loss.csv").read_bytes() == (stage_out(straight) / "loss.csv").read_bytes()


def test_a_run_shorter_than_the_logging_interval_logs_its_loss_at_the_end_without_a_lightning_warning(
        make_cfg, tmp_path, recwarn):
    fast_with_a_logger = [o if o != "logger=none" else "logger=csv" for o in FAST]
    cfg = make_cfg("stage=ti", "stage.max_steps=4", *fast_with_a_logger)  # trainer=cpu logs every 10 steps
    adapt_ti(cfg, stage_out(cfg))
    with open(next((tmp_path / "logs").rglob("metrics.csv")), newline="") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")] == [3]  # the 4th step
    assert not [w for w in recwarn if "smaller than the logging interval" in str(w.message)]


@pytest.mark.parametrize("prompt, message", [
    ("A photo of steel", "stage.prompt='A photo of steel' has no {} for the placeholder"),
    ("A {} and a {}", "stage.prompt='A {} and a {}' must have one {} and no other braces"),
    ("A {x} of {}", "stage.prompt='A {x} of {}' must have one {} and no other braces"),
])
def test_a_training_prompt_without_one_placeholder_is_refused_before_any_work(make_cfg, tmp_path, prompt, message):
    cfg = make_cfg("stage=ti", *FAST)
    cfg.stage.prompt = prompt  # as 'stage.prompt="..."' on the command line
    with pytest.raises(UserError, match="^" + re.escape(message)) as refused:
        adapt_ti(cfg, stage_out(cfg))
    assert not (tmp_path / "artifacts").exists(), "no split, no cached latents"
    example = re.search(r"; e\.g\. (.*) \(the braces", str(refused.value))
    if example:  # typed as shown, the example reaches Hydra as a prompt it reads
        (word,) = shlex.split(example[1])
        assert compose_config(["stage=ti", word]).stage.prompt == "A photo of {}"


def test_same_config_gives_bit_identical_embeddings(make_cfg, tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = make_cfg("stage=ti", "stage.max_steps=4", *FAST, f"paths.artifacts={tmp_path}/{name}")
        adapt_ti(cfg, stage_out(cfg))
        runs.append((stage_out(cfg) / EMBEDS_FILE).read_bytes())
    assert runs[0] == runs[1]


@pytest.mark.parametrize("stage, adapt, artifact", [("ti", adapt_ti, EMBEDS_FILE), ("lora", adapt_lora, DIFFUSERS_FILE)])
def test_a_unet_compiled_for_cuda_graphs_learns_the_same_numbers_bit_for_bit(make_cfg, tmp_path, stage, adapt,
                                                                             artifact):
    """model.compile=cudagraphs traces the UNet's forward and backward (LoRA: with its adapters) with torch.compile's
    cudagraphs backend; on a CPU the traced graphs run as they are, so the numbers must be eager's exactly (on a GPU
    they are replayed)."""
    from torch._dynamo.utils import counters

    runs, graphs = {}, {}
    torch._dynamo.reset()
    try:
        for setting in ("false", "cudagraphs"):
            cfg = make_cfg(f"stage={stage}", "stage.max_steps=3", *FAST, f"model.compile={setting}",
                           f"paths.artifacts={tmp_path}/{setting}", *(["stage.use_ti=false"] if stage == "lora" else []))
            traced_before = counters["stats"]["unique_graphs"]  # dynamo's running count of graphs it traced
            adapt(cfg, stage_out(cfg))
            runs[setting] = (stage_out(cfg) / artifact).read_bytes()
            graphs[setting] = counters["stats"]["unique_graphs"] - traced_before
    finally:
        torch._dynamo.reset()
    assert graphs["false"] == 0 and graphs["cudagraphs"] > 0, "the compiled UNet trained"
    assert runs["cudagraphs"] == runs["false"]


class KeptForBackward(L.Callback):
    """The bytes of the tensors that the first training step's forward pass saves for its backward pass through
    autograd's saved-tensor hooks, less the module's own weights (kept without a copy); a checkpointed block saves none
    that way (checkpointing holds the block's inputs itself). And whether the UNet checkpoints during training."""

    def __init__(self):
        self.bytes, self.kept, self.hooks, self.checkpointing = 0, {}, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx:
            return
        self.checkpointing = unet_checkpoints(module.unet)
        weights = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                self.kept[storage.data_ptr()] = storage.nbytes()
            return tensor

        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
        self.hooks.__enter__()

    def on_before_backward(self, trainer, module, loss):
        if self.hooks is not None:
            self.hooks.__exit__(None, None, None)
            self.hooks, self.bytes = None, sum(self.kept.values())


def unet_checkpoints(unet) -> bool:
    return any(getattr(block, "gradient_checkpointing", False) for block in unet.modules())


@pytest.mark.parametrize("stage, adapt", [("ti", adapt_ti), ("lora", adapt_lora), ("full", adapt_full)])
def test_gradient_checkpointing_recomputes_the_unets_activations_and_learns_the_same_numbers_bit_for_bit(
        make_cfg, tmp_path, stage, adapt):
    """A user who runs out of GPU memory sets stage.gradient_checkpointing=true: the UNet's blocks keep only their
    inputs for the backward pass and recompute the rest there, and the weights learned are exactly those of a run
    without it (on a CPU; on a GPU up to its kernels' own run-to-run differences). After training the UNet no longer
    checkpoints (generation in the same process has no backward pass)."""
    runs = {}
    for setting in ("false", "true"):
        cfg = make_cfg(f"stage={stage}", "stage.max_steps=3", *FAST, f"stage.gradient_checkpointing={setting}",
                       f"paths.artifacts={tmp_path}/{setting}", *([] if stage == "ti" else ["stage.use_ti=false"]))
        kept = KeptForBackward()
        adaptation = adapt(cfg, stage_out(cfg), callbacks=[kept])
        trained = {name: p.detach().clone() for name, p in adaptation.module.trainable_named_parameters().items()}
        runs[setting] = kept, trained, unet_checkpoints(adaptation.components.unet)
    (plain, plain_weights, plain_after), (checkpointed, checkpointed_weights, checkpointed_after) = runs.values()
    assert (plain.checkpointing, checkpointed.checkpointing) == (False, True)
    assert 0 < 3 * checkpointed.bytes < plain.bytes, (checkpointed.bytes, plain.bytes)
    assert list(checkpointed_weights) == list(plain_weights)
    assert all(torch.equal(checkpointed_weights[name], w) for name, w in plain_weights.items())
    assert (plain_after, checkpointed_after) == (False, False)


def test_full_fine_tuning_with_prior_images_saves_a_loadable_pipeline(make_cfg, tmp_path, capsys):
    prior = tmp_path / "prior"
    prior.mkdir()
    for i in range(3):
        Image.new("L", (40, 40), color=60 * i).save(prior / f"p{i}.png")
    cfg = make_cfg("stage=full", "stage.use_ti=false", "stage.max_steps=3", "stage.lr=1e-3", f"stage.prior_images={prior}",
                   *FAST)
    adaptation = adapt_full(cfg, stage_out(cfg))
    assert "Writing model shards" not in capsys.readouterr().err, "transformers' bar of carriage returns, in a log"
    assert adaptation.metrics["prior_images"] == 6  # with flips
    assert adaptation.metrics["trainable_parameters"] > 1_000_000
    pipe = StableDiffusionPipeline.from_pretrained(str(stage_out(cfg) / "pipeline"), local_files_only=True)
    assert not [p for p in stage_out(cfg).iterdir() if p.name.startswith(".pipeline")], "no staged folder is left"
    trained = adaptation.components.unet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in pipe.unet.state_dict().items())
    base = build_tiny_sd(seed=0).unet.state_dict()
    assert not all(torch.equal(v, base[k]) for k, v in pipe.unet.state_dict().items())
    assert pipe.safety_checker is None


@pytest.mark.parametrize("overrides, message", [
    (["stage=ti", "category=null"], "stage=ti adapts one category: add category=<Cr, Pa, PS, Sc>"),
    (["stage=ti", "stage.max_steps=0"], "stage.max_steps must be a positive integer, got 0"),
    (["stage=ti", "stage.max_steps=1.5"], "stage.max_steps must be a positive integer, got 1.5"),
    (["stage=ti", "stage.batch_size=true"], "stage.batch_size must be a positive integer, got True"),
    (["stage=lora", "stage.use_ti=false", "stage.rank=0"], "stage.rank must be a positive integer, got 0"),
    (["stage=lora"], "make it with: python -m stablesdg.train stage=ti dataset=synthetic category=Pa variant=default"),
    (["stage=ti", "stage.validation_every=-1"], "stage.validation_every must be an integer >= 0 (0: none), got -1"),
    (["stage=ti", "stage.validation_every=2", "stage.validation_steps=0"],
     "stage.validation_steps must be a positive integer, got 0"),  # not a ZeroDivisionError at the first grid
    (["stage=full", "stage.use_ti=false", "stage.prior_images=auto", "stage.prior_steps=0"],
     "stage.prior_steps must be a positive integer, got 0"),
    (["stage=full", "stage.use_ti=false", "stage.prior_images=auto", "stage.prior_loss_weight=-1"],
     "stage.prior_loss_weight must be a positive finite number, got -1"),
    (["stage=ti", "stage.alpha=0.01"], "stage.alpha=0.01 leaves none of the 8 train images of Pa; raise stage.alpha"),
    (["stage=lora", "stage.use_ti=false", "+trainer.accumulate_grad_batches=4"],  # the run stopped short of its steps
     "stage=lora trains on one batch per optimiser step and does not accumulate gradients: "
     "drop trainer.accumulate_grad_batches=4 (a larger stage.batch_size averages over as many images)"),
    (["stage=ti", "+trainer.overfit_batches=2"],  # it stopped at step 2, and a rerun stopped there again
     "stage=ti draws a batch of its own for each of its stage.max_steps steps, and trainer.overfit_batches=2 would "
     "stop it short of them"),
    (["stage=ti", "+trainer.limit_train_batches=0.5"], "and trainer.limit_train_batches=0.5 would stop it short"),
])
def test_adaptation_settings_are_checked(make_cfg, overrides, message):
    cfg = make_cfg(*FAST, *overrides)
    runner = {"ti": adapt_ti, "lora": adapt_lora, "full": adapt_full}[cfg.stage.name]
    with pytest.raises(UserError, match=re.escape(message)):
        runner(cfg, stage_out(cfg))


def test_auto_prior_images_are_made_with_a_progress_bar_and_a_rerun_makes_only_the_missing_ones(make_cfg, tmp_path,
                                                                                                   progress_lines):
    cfg = make_cfg(*FAST, "stage=full", "stage.use_ti=false", "stage.prior_images=auto", "stage.num_prior_images=3",
                   "stage.prior_steps=2")
    components = build_tiny_sd()
    folder = make_prior_images(cfg, components, tmp_path / "prior")
    assert sorted(p.name for p in folder.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    kept = (folder / "00000.png").read_bytes()
    assert progress_lines() == ["prior-preservation images: 100%|##########| 3/3"]  # 200 of 50 steps by default
    (folder / "00001.png").unlink()
    make_prior_images(cfg, components, folder)
    assert progress_lines() == ["prior-preservation images: 100%|##########| 1/1"] and (folder / "00001.png").is_file()
    assert (folder / "00000.png").read_bytes() == kept


def test_a_prior_image_folder_that_is_missing_or_empty_is_refused_before_the_model_is_built(make_cfg, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("not an image")
    for folder, reason in [(tmp_path / "missing", "is not a folder; give a folder of class images, or "
                                                  "stage.prior_images=auto to make them"),
                           (tmp_path / "empty", "holds no images")]:
        cfg = make_cfg(*FAST, "stage=full", "stage.use_ti=false", f"stage.prior_images={folder}")
        with pytest.raises(UserError, match=f"^{re.escape(f'stage.prior_images={folder} {reason}')}$"):
            check_adaptation(cfg)  # the settings check that runs before any model or image is read


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_writes_one_artifact(tmp_path):
    command = [sys.executable, "-m", "stablesdg.train", "stage=ti", "trainer=ddp", "trainer.accelerator=cpu",
               "trainer.devices=2", "trainer.precision=32-true", "stage.max_steps=4", *FAST,
               f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = list((tmp_path / "artifacts").rglob("result.json"))
    assert len(results) == 1
    assert done.stdout.count("result: ") == 1, "rank 1 prints no result line of its own"
    record = json.loads(results[0].read_text())
    assert record["metrics"]["world_size"] == 2 and record["metrics"]["steps"] == 4
    assert load_file(str(results[0].parent / EMBEDS_FILE))["<unknown>"].shape == (3, 32)


@pytest.mark.slow
def test_ddp_processes_that_srun_starts_train_together_and_each_logs_to_its_own_file(tmp_path):
    port = meeting_port()  # as SLURM's job id would give it
    command = [sys.executable, "-m", "stablesdg.train", "stage=ti", "trainer=ddp", "trainer.accelerator=cpu",
               "trainer.devices=2", "trainer.precision=32-true", "stage.max_steps=4", *FAST,
               f"paths.artifacts={tmp_path}/artifacts", f"hydra.run.dir={tmp_path}/job"]
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "localhost", "MASTER_PORT": str(port)}
    # srun starts every task of the job with the same command at once; Lightning starts none itself
    tasks = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)})
             for rank in (0, 1)]
    (first, first_err), (second, second_err) = outputs_of_all(tasks, timeout=600)
    assert [task.returncode for task in tasks] == [0, 0], (first_err + second_err)[-3000:]
    (result,) = (tmp_path / "artifacts").rglob("result.json")
    assert json.loads(result.read_text())["metrics"]["world_size"] == 2
    assert first.count("result: ") == 1 and second == "", "the second task says nothing on the console"
    logs = {path.name: path.read_text() for path in (tmp_path / "job").glob("*.log")}
    assert sorted(logs) == ["train.log", "train_ddp_process_1.log"]
    assert "GLOBAL_RANK: 0" in logs["train.log"] and "GLOBAL_RANK: 1" not in logs["train.log"]
    assert "GLOBAL_RANK: 1" in logs["train_ddp_process_1.log"]


@pytest.mark.slow
def test_ddp_training_that_diverges_says_so_in_one_line_not_one_per_process(tmp_path):
    command = [sys.executable, "-m", "stablesdg.train", "stage=ti", "trainer=ddp", "trainer.accelerator=cpu",
               "trainer.devices=2", "trainer.precision=32-true", "stage.max_steps=3", "stage.lr=1e30", *FAST,
               f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    said = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and said == [
        "error: stage=ti diverged: its trained weights hold nan or inf values at step 3, so nothing was saved; train it "
        "again with a smaller stage.lr (now 1e+30)"], done.stderr[-3000:]
    assert not list((tmp_path / "artifacts").rglob("result.json"))


def test_lora_on_a_model_of_other_widths_than_its_ti_embedding_is_refused_before_any_image_is_encoded(trained_ti):
    ti_cfg = trained_ti[0]
    cfg = compose_config([f"paths.artifacts={ti_cfg.paths.artifacts}", f"paths.logs={ti_cfg.paths.logs}", "stage=lora",
                          "model=sd15_random", "stage.max_steps=1", *FAST, "model.resolution=64"])
    store = Path(ti_cfg.paths.artifacts)
    before = sorted(store.rglob("*"))
    with pytest.raises(UserError) as refused:
        adapt_lora(cfg, stage_out(cfg))
    assert str(refused.value) == (
        f"{store}/synthetic/Pa/default/ti was made with model=tiny, which this run's model=sd15_random does not fit (its "
        "vectors have 32 values, this model's token embeddings 768); make it again with this model: python -m "
        "stablesdg.train stage=ti dataset=synthetic category=Pa variant=default, or run with model=tiny")
    assert sorted(store.rglob("*")) == before, "no latents encoded or cached"


@pytest.mark.slow
def test_sd15_random_lora_smoke_step_at_128px(make_cfg):  # every block of the architecture, latents of 16 x 16
    cfg = make_cfg("model=sd15_random", "model.resolution=128", "stage=lora", "stage.use_ti=false", "stage.max_steps=1",
                   "stage.batch_size=1", "stage.flip=false", "dataset.synthetic.per_class=5", "logger=none",
                   "stage.validation_every=0", "category=Pa")
    adaptation = adapt_lora(cfg, stage_out(cfg))
    with torch.device("meta"):
        fresh = build_sd15_random()
    te = _attention_projections(fresh.text_encoder, ("q_proj", "k_proj", "v_proj", "out_proj"))
    unet = _attention_projections(fresh.unet, ("to_q", "to_k", "to_v", "to_out.0"))
    expected = sum(m.in_features + m.out_features for m in [*te.values(), *unet.values()])
    assert len(te) == 48 and adaptation.metrics["trainable_parameters"] == expected
    assert adaptation.metrics["resolution"] == 128 and adaptation.metrics["steps"] == 1
    assert torch.isfinite(torch.tensor(adaptation.metrics["final_loss"]))
    assert (stage_out(cfg) / DIFFUSERS_FILE).is_file()


def test_latents_are_cached_with_flips_and_no_vae_encoder_runs_in_training(make_cfg, monkeypatch, progress_lines):
    from diffusers import AutoencoderKL

    calls = []
    original = AutoencoderKL.encode
    monkeypatch.setattr(AutoencoderKL, "encode", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    cfg = make_cfg("stage=ti", "stage.max_steps=3", *FAST)
    first = adapt_ti(cfg, stage_out(cfg))
    assert first.metrics["training_latents"] == 16  # 8 training images of Pa and their mirrors
    encodes = len(calls)
    assert encodes == 2  # 16 images in batches of 8, once, before training
    bar = "VAE latents of the Pa images and their mirror images, cached for later runs: 100%|##########| 16/16"  # minutes at 512 px on a CPU
    assert progress_lines() == [bar]
    adapt_ti(cfg, stage_out(cfg))
    assert len(calls) == encodes, "the second run reads the cache"
    assert progress_lines() == []
    cached = list((Path(cfg.paths.artifacts) / "synthetic" / "Pa" / "_cache").glob("latents-tiny-*.safetensors"))
    assert len(cached) == 1
    unflipped = make_cfg("stage=ti", "stage.max_steps=1", "stage.flip=false", *FAST)
    assert adapt_ti(unflipped, stage_out(unflipped)).metrics["training_latents"] == 8
    assert progress_lines() == ["VAE latents of the Pa images, cached for later runs: 100%|##########| 8/8"]


def test_cached_latents_follow_how_the_dataset_reads_its_files(make_cfg, tmp_path):
    """The same files read in colour or grey, or at another size, are other pixels: a run does not train on the
    latents a run with other ``dataset.channels`` or ``dataset.image_size`` cached."""
    from stablesdg.stages.adapt import prepare

    rng = np.random.default_rng(0)
    for name in ("dent", "rust"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for n in range(10):
            grey = rng.integers(20, 200, (48, 64), dtype=np.int16)
            rgb = np.stack([grey + 40, grey, grey - 20], axis=-1).clip(0, 255).astype(np.uint8)
            Image.fromarray(rgb).save(tmp_path / "data" / name / f"{n}.png")

    def latents(*overrides):
        cfg = make_cfg("stage=ti", "dataset=folder", f"dataset.root={tmp_path}/data", "dataset.name=mine",
                       "category=dent", "logger=none", "dataset.image_size=32", *overrides)
        return prepare(cfg)[1]

    grey, colour, small = latents(), latents("dataset.channels=3"), latents("dataset.image_size=16")
    assert len(list((tmp_path / "artifacts/mine/dent/_cache").glob("latents-tiny-*.safetensors"))) == 3
    assert not torch.equal(grey, colour) and not torch.equal(grey, small)
    computed_anew = latents("dataset.channels=3", f"paths.artifacts={tmp_path}/fresh")
    assert len(list((tmp_path / "fresh/mine/dent/_cache").glob("latents-tiny-*.safetensors"))) == 1
    assert torch.equal(computed_anew, colour)


def test_latent_cache_key_ignores_compiling_and_the_weights_cache_but_not_the_layout_or_the_weights(make_cfg):
    def key(*overrides):
        cfg = make_cfg("model=sd15_random", *overrides)
        return latent_cache_key(OmegaConf.to_container(cfg.model, resolve=True), 512, True, ["a", "b"])

    plain = key()
    assert key("model.compile=true") == key("model.compile=reduce-overhead") == key("model.compile=cudagraphs") == plain
    assert key("model.weights_cache=/somewhere") == plain
    assert len({plain, key("model.channels_last=true"), key("seed=1"), key("model.resolution=256")}) == 4


def test_bf16_mixed_keeps_trainable_tensors_in_fp32(make_cfg):
    cfg = make_cfg("stage=ti", "stage.max_steps=2", "trainer.precision=bf16-mixed", *FAST)
    adaptation = adapt_ti(cfg, stage_out(cfg))
    assert all(p.dtype == torch.float32 for p in adaptation.module.trainable_named_parameters().values())
    assert load_file(str(stage_out(cfg) / EMBEDS_FILE))["<unknown>"].dtype == torch.float32


class CopyCounter(TorchDispatchMode):
    """Counts dtype copies (``aten._to_copy``) dispatched inside."""

    def __init__(self):
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.copies += func is torch.ops.aten._to_copy.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("attention_dropout, training", [(0.0, True), (0.5, False), (0.5, True)])
def test_a_batch_encodes_its_prompt_once_unless_the_text_encoder_drops_out(attention_dropout, training):
    from stablesdg.adaptation.module import DiffusionAdapter

    sd = build_tiny_sd(seed=0)  # its modules in eval mode, as the stages train them
    sd.text_encoder.train(training)
    sd.text_encoder.config.attention_dropout = attention_dropout
    for module in sd.text_encoder.modules():
        if hasattr(module, "dropout") and isinstance(module.dropout, float):  # CLIP's attention reads it at init
            module.dropout = attention_dropout
    table = sd.text_encoder.get_input_embeddings().weight  # trainable, as in TI
    adapter = DiffusionAdapter(sd, torch.zeros(2, 8, 32, 32), "A photo of a steel surface", 1e-3, 4, seed=0)
    batches = []
    sd.text_encoder.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    weights = torch.randn(4, 77, 32, generator=torch.Generator().manual_seed(0))  # each image's own gradient

    def encoded(encode):
        torch.manual_seed(1)  # the dropout's draws
        hidden = encode()
        (gradient,) = torch.autograd.grad((hidden * weights).sum(), table)
        return hidden.detach(), gradient

    hidden, gradient = encoded(lambda: adapter.encode_prompt(adapter.prompt_ids, 4))
    per_image, per_image_gradient = encoded(lambda: sd.text_encoder(adapter.prompt_ids.expand(4, -1))[0])
    assert hidden.shape == (4, 77, 32)
    if attention_dropout and training:
        assert batches == [4, 4], "each image its own dropout"
        assert torch.equal(hidden, per_image) and not torch.equal(hidden[0], hidden[1])
    else:
        assert batches == [1, 4], "encoded once"
        torch.testing.assert_close(hidden, per_image, rtol=0, atol=1e-6)
        # the same sum in another order: float32 rounding of the largest entries (about 1,600 here) sets the bound
        largest = per_image_gradient.abs().max()
        assert largest > 0
        torch.testing.assert_close(gradient, per_image_gradient, rtol=0, atol=1e-6 * float(largest))


def test_instance_and_class_images_train_in_one_unet_call_with_each_group_its_own_prompt_and_loss():
    from stablesdg.adaptation.module import DiffusionAdapter

    sd = build_tiny_sd(seed=0)
    prior = torch.randn(3, 8, 32, 32, generator=torch.Generator().manual_seed(2))
    adapter = DiffusionAdapter(sd, torch.randn(3, 8, 32, 32, generator=torch.Generator().manual_seed(1)),
                               "A photo of a steel surface", 1e-3, 2, seed=0, prior_latent_dist=prior,
                               prior_prompt="a photo of steel")
    calls = []
    sd.unet.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
    latents = torch.randn(5, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    groups = [(adapter.prompt_ids, 2), (adapter.prior_prompt_ids, 3)]
    with torch.no_grad():
        batched = adapter.denoising_losses(latents, groups, torch.Generator().manual_seed(4))
        assert calls == [5], "one UNet call for both groups"
        # the same draws, each group through the UNet on its own with its own prompt
        generator = torch.Generator().manual_seed(4)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (5,), generator=generator)
        noisy = adapter.noise_scheduler.add_noise(latents, noise, timesteps)
        apart = [torch.nn.functional.mse_loss(
            sd.unet(noisy[part], timesteps[part], encoder_hidden_states=adapter.encode_prompt(ids, count)).sample,
            noise[part]) for (ids, count), part in zip(groups, (slice(0, 2), slice(2, 5)))]
    torch.testing.assert_close(torch.stack(batched), torch.stack(apart), rtol=1e-5, atol=0)
    assert not torch.allclose(batched[0], batched[1])
    logged = {}
    adapter.log = lambda name, value: logged.setdefault(name, value)
    calls.clear()
    loss = adapter.training_step(None, 0)
    assert calls == [4], "a training step: batch_size instance and batch_size class images in one call"
    torch.testing.assert_close(loss, logged["train/loss"])
    assert logged["train/prior_loss"] < loss


def test_under_autocast_lora_inputs_skip_peft_casts_and_every_number_stays_the_same():
    sd = build_tiny_sd(seed=0)
    for module in sd.modules().values():
        module.requires_grad_(False)
    add_lora(sd, 1)
    trainable = [p for m in (sd.unet, sd.text_encoder) for p in m.parameters() if p.requires_grad]
    for p in trainable:  # B starts at zero, which would hide a difference in A's gradient
        torch.nn.init.normal_(p, generator=torch.Generator().manual_seed(p.numel()))
    ids = prompt_ids(sd.tokenizer, "A photo of a steel surface").repeat(2, 1)
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))

    def step(skip: bool):
        counter = CopyCounter()
        with autocast_chooses_adapter_input_dtype(sd, active=skip), counter, torch.autocast("cpu", torch.bfloat16):
            hidden = sd.text_encoder(ids)[0]
            loss = sd.unet(latents, torch.tensor([10, 700]), encoder_hidden_states=hidden).sample.float().square().mean()
        grads = torch.autograd.grad(loss, trainable)
        return loss.detach(), grads, counter.copies

    loss, grads, copies = step(skip=False)
    fast_loss, fast_grads, fast_copies = step(skip=True)
    assert torch.equal(fast_loss, loss)
    assert all(torch.equal(a, b) for a, b in zip(fast_grads, grads))
    assert fast_copies < copies
    assert all(getattr(m, "cast_input_dtype_enabled", True) for m in sd.unet.modules()), "peft's setting is restored"


def test_text_encoder_with_bf16_linear_weights_computes_the_same_numbers_under_autocast_with_fewer_casts():
    from stablesdg.precision import store_frozen_weights

    sd = build_tiny_sd(seed=0)
    text_encoder = sd.text_encoder.requires_grad_(False)
    table = text_encoder.get_input_embeddings().weight.requires_grad_(True)  # trainable, as in TI: stays fp32
    ids = prompt_ids(sd.tokenizer, "A photo of a steel surface")

    def forward():
        counter = CopyCounter()
        with counter, torch.autocast("cpu", torch.bfloat16):
            hidden = text_encoder(ids)[0]
        (gradient,) = torch.autograd.grad(hidden.float().square().sum(), table)
        return hidden.detach(), gradient, counter.copies

    hidden, gradient, copies = forward()
    store_frozen_weights([text_encoder], torch.bfloat16, matmul_layers_only=True)
    dtypes = {name: p.dtype for name, p in text_encoder.named_parameters()}
    assert {dtypes[n] for n in dtypes if "proj" in n or "fc" in n} == {torch.bfloat16}
    assert {dtypes[n] for n in dtypes if "norm" in n or "embedding" in n} == {torch.float32}
    fast_hidden, fast_gradient, fast_copies = forward()
    assert torch.equal(fast_hidden, hidden) and torch.equal(fast_gradient, gradient)
    assert fast_copies < copies


class FirstStepProbe(L.Callback):
    """In the first training step: the dtypes of the frozen UNet and text-encoder weights and of the trainable
    tensors, peft's input-cast setting of the adapters, and the dtype copies dispatched (the callbacks that run at
    the end of the step included)."""

    def on_train_batch_start(self, trainer, module, *args):
        if trainer.global_step == 0:
            self.dtypes = {name: {p.dtype for p in getattr(module, name).parameters() if not p.requires_grad}
                           for name in ("unet", "text_encoder")}
            self.dtypes["trainable"] = {p.dtype for p in module.trainable_named_parameters().values()}
            self.peft_casts = {m.cast_input_dtype_enabled for m in module.unet.modules()
                               if hasattr(m, "cast_input_dtype_enabled")}
            self.counter = CopyCounter().__enter__()

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 1:
            self.counter.__exit__(None, None, None)


BF16, FP32 = {torch.bfloat16}, {torch.float32}


@pytest.mark.parametrize("precision, half_frozen, skipped", [("bf16-mixed", True, True), ("32-true", True, False)])
def test_lora_under_mixed_precision_keeps_frozen_weights_in_bf16_and_skips_peft_input_casts(
        make_cfg, precision, half_frozen, skipped):
    probe = FirstStepProbe()
    cfg = make_cfg("stage=lora", "stage.use_ti=false", "stage.max_steps=1", "stage.batch_size=1",
                   f"trainer.precision={precision}", f"stage.half_precision_frozen={half_frozen}", *FAST)
    adaptation = adapt_lora(cfg, stage_out(cfg), callbacks=[probe])
    frozen = BF16 if precision == "bf16-mixed" and half_frozen else FP32
    assert probe.dtypes == {"unet": frozen, "text_encoder": frozen, "trainable": frozen}  # adapters: fp32 masters
    assert probe.peft_casts == {not skipped}
    after = adaptation.components
    assert {p.dtype for m in (after.unet, after.text_encoder) for p in m.parameters()} == FP32, "fp32 again after"
    assert all(m.cast_input_dtype_enabled for m in after.unet.modules() if hasattr(m, "cast_input_dtype_enabled"))


def test_ti_under_mixed_precision_keeps_frozen_unet_and_text_encoder_matmuls_in_bf16_with_fewer_casts_and_validates(
        make_cfg):
    fast = [o for o in FAST if not o.startswith("stage.validation_every")]
    probes = {}
    for half_frozen in (True, False):
        probes[half_frozen] = FirstStepProbe()
        cfg = make_cfg("stage=ti", "stage.max_steps=1", "stage.batch_size=1", "trainer.precision=bf16-mixed",
                       f"stage.half_precision_frozen={half_frozen}", f"stage.half_precision_unet={half_frozen}",
                       "stage.validation_every=1",
                       "stage.validation_images=1", "stage.validation_steps=2", *fast)
        adaptation = adapt_ti(cfg, stage_out(cfg), callbacks=[probes[half_frozen]])
        assert (stage_out(cfg) / "validation" / "step_000001.png").is_file()
        assert {p.dtype for p in adaptation.components.unet.parameters()} == FP32
    assert probes[True].dtypes == {"unet": BF16, "text_encoder": BF16 | FP32, "trainable": FP32}  # bf16: linear layers
    assert probes[False].dtypes == {"unet": FP32, "text_encoder": FP32, "trainable": FP32}
    assert probes[True].counter.copies < probes[False].counter.copies


class UNetCallProbe(L.Callback):
    """In the first training step: whether autocast was on where the UNet and the text encoder were called, and the
    dtypes of the UNet's inputs and prediction."""

    def on_train_batch_start(self, trainer, module, *args):
        if trainer.global_step == 0:
            self.seen = {}

            def record(name):
                def hook(layer, args, kwargs, output):
                    self.seen.setdefault(name, (torch.is_autocast_enabled("cpu"), args[0].dtype,
                                                kwargs.get("encoder_hidden_states", args[0]).dtype))
                    if name == "unet":
                        self.seen.setdefault("prediction", output.sample.dtype)
                return hook

            self.handles = [getattr(module, name).register_forward_hook(record(name), with_kwargs=True)
                            for name in ("unet", "text_encoder")]

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 1:
            for handle in self.handles:
                handle.remove()


@pytest.mark.parametrize("precision, half_unet, unet_autocast, unet_dtype", [
    ("bf16-mixed", True, False, torch.bfloat16), ("bf16-mixed", False, True, torch.float32),
    ("32-true", True, False, torch.float32)])
def test_ti_under_mixed_precision_runs_its_frozen_unet_in_bf16_outside_autocast_as_textual_inversion_py(
        make_cfg, precision, half_unet, unet_autocast, unet_dtype):
    probe = UNetCallProbe()
    cfg = make_cfg("stage=ti", "stage.max_steps=2", "stage.batch_size=2", f"trainer.precision={precision}",
                   f"stage.half_precision_unet={half_unet}", *FAST)
    adaptation = adapt_ti(cfg, stage_out(cfg), callbacks=[probe])
    mixed = precision == "bf16-mixed"
    assert probe.seen["text_encoder"][0] is mixed, "the text encoder computes under autocast"
    assert probe.seen["unet"] == (unet_autocast, unet_dtype, unet_dtype if half_unet else torch.float32)
    assert probe.seen["prediction"] == (torch.bfloat16 if mixed else torch.float32)
    assert {p.dtype for p in adaptation.components.unet.parameters()} == FP32, "fp32 again after training"
    learned = load_file(str(stage_out(cfg) / EMBEDS_FILE))["<unknown>"]
    init_ids = adaptation.components.tokenizer.convert_tokens_to_ids(adaptation.metrics["initialised_from"])
    initial = adaptation.components.text_encoder.get_input_embeddings().weight[init_ids].detach()
    assert learned.dtype == torch.float32 and learned.shape == initial.shape
    assert not torch.equal(learned, initial), "the gradient reached the embedding through the UNet"


@pytest.mark.parametrize("half_trainable, unet_autocast", [(True, False), (False, True)])
def test_lora_under_bf16_runs_its_unet_outside_autocast_where_its_adapters_are_held_in_bf16(
        make_cfg, half_trainable, unet_autocast):
    probe = UNetCallProbe()
    cfg = make_cfg("stage=lora", "stage.use_ti=false", "stage.max_steps=2", "stage.batch_size=2", "stage.lr=1e-2",
                   "trainer.precision=bf16-mixed", "stage.half_precision_unet=true",
                   f"stage.half_precision_trainable={half_trainable}", *FAST)
    adaptation = adapt_lora(cfg, stage_out(cfg), callbacks=[probe])
    assert probe.seen["text_encoder"][0] is True
    assert probe.seen["unet"][0] is unet_autocast
    assert probe.seen["unet"][1] == (torch.float32 if unet_autocast else torch.bfloat16)
    trainable = adaptation.module.trainable_named_parameters()
    assert {p.dtype for p in adaptation.components.unet.parameters()} == FP32, "fp32 again after training"
    assert any("unet" in name and "lora_B" in name and p.abs().sum() > 0 for name, p in trainable.items()), \
        "the UNet's adapters learned (lora_B starts at zero)"


def test_lora_under_bf16_holds_adapters_in_bf16_with_fp32_masters_and_saves_the_same_bytes(make_cfg, tmp_path):
    fast = [o for o in FAST if not o.startswith("stage.validation_every")]
    probes, files = {}, {}
    for half in (True, False):
        probes[half] = FirstStepProbe()
        cfg = make_cfg("stage=lora", "stage.use_ti=false", "stage.max_steps=3", "stage.batch_size=2", "stage.lr=1e-2",
                       "trainer.precision=bf16-mixed", f"stage.half_precision_trainable={half}",
                       "stage.half_precision_unet=false",  # under autocast both ways: the masters alone are compared
                       "stage.validation_every=2", "stage.validation_images=1", "stage.validation_steps=2", *fast,
                       f"paths.artifacts={tmp_path}/{half}")
        adaptation = adapt_lora(cfg, stage_out(cfg), callbacks=[probes[half]])
        files[half] = [(stage_out(cfg) / name).read_bytes() for name in (DIFFUSERS_FILE, KOHYA_FILE)]
        assert (stage_out(cfg) / "validation" / "step_000002.png").is_file()
        assert {p.dtype for p in adaptation.module.trainable_named_parameters().values()} == FP32, "fp32 after"
    assert probes[True].dtypes["trainable"] == BF16 and probes[False].dtypes["trainable"] == FP32
    assert probes[True].counter.copies < probes[False].counter.copies
    assert files[True] == files[False]


def test_lora_under_bf16_resumes_from_fp32_masters_to_the_uninterrupted_adapters(make_cfg, tmp_path):
    overrides = ["stage=lora", "stage.use_ti=false", "stage.max_steps=5", "stage.checkpoint_every=2", "stage.lr=1e-2",
                 "trainer.precision=bf16-mixed", *FAST]
    straight = make_cfg(*overrides, f"paths.artifacts={tmp_path}/straight")
    adapt_lora(straight, stage_out(straight))
    crashed = make_cfg(*overrides, f"paths.artifacts={tmp_path}/crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        adapt_lora(crashed, stage_out(crashed), callbacks=[CrashAt(3)])
    checkpoint = torch.load(stage_out(crashed) / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert checkpoint["state_dict"] and {v.dtype for v in checkpoint["state_dict"].values()} == {torch.float32}
    adapt_lora(crashed, stage_out(crashed))
    assert (stage_out(straight) / DIFFUSERS_FILE).read_bytes() == (stage_out(crashed) / DIFFUSERS_FILE).read_bytes()


def test_lora_stopped_then_its_ti_retrained_starts_again_rather_than_resuming(make_cfg, tmp_path):
    def ti(root: Path, steps: int) -> None:
        cfg = make_cfg("stage=ti", f"stage.max_steps={steps}", "stage.lr=1e-2", *FAST, f"paths.artifacts={root}")
        record_result(cfg, adapt_ti(cfg, stage_out(cfg)))

    lora = ["stage=lora", "stage.max_steps=4", "stage.checkpoint_every=2", "stage.lr=1e-2", *FAST]
    stopped = make_cfg(*lora, f"paths.artifacts={tmp_path}/stopped")
    ti(tmp_path / "stopped", 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        adapt_lora(stopped, stage_out(stopped), callbacks=[CrashAt(3)])
    assert (stage_out(stopped) / "checkpoints" / "last.ckpt").is_file()
    ti(tmp_path / "stopped", 4)
    adapt_lora(stopped, stage_out(stopped))

    straight = make_cfg(*lora, f"paths.artifacts={tmp_path}/straight")
    ti(tmp_path / "straight", 4)
    adapt_lora(straight, stage_out(straight))
    assert (stage_out(stopped) / DIFFUSERS_FILE).read_bytes() == (stage_out(straight) / DIFFUSERS_FILE).read_bytes(), \
        "the steps trained with the old embedding were not kept"


def test_lora_trains_only_adapters_with_the_ti_embedding_frozen(trained_ti, trained_lora):
    _, adaptation, _ = trained_lora
    trainable = adaptation.module.trainable_named_parameters()
    assert trainable and all("lora_" in name for name in trainable)
    table = adaptation.components.text_encoder.get_input_embeddings().weight
    ti_table = trained_ti[1].components.text_encoder.get_input_embeddings().weight
    assert torch.equal(table, ti_table), "the TI embedding is loaded and stays frozen"


def test_full_fine_tuning_with_the_ti_embedding(trained_ti):
    from conftest import compose_config

    ti_cfg = trained_ti[0]
    cfg = compose_config([f"paths.artifacts={ti_cfg.paths.artifacts}", f"paths.logs={ti_cfg.paths.logs}", "stage=full",
                          "stage.max_steps=2", *FAST])
    adaptation = adapt_full(cfg, stage_out(cfg))
    assert adaptation.metrics["token"] == "<unknown>" and adaptation.metrics["use_ti"] is True
    assert adaptation.metrics["prompt"] == "A photo of <unknown> <unknown>_1 <unknown>_2"
    saved_tokenizer = (stage_out(cfg) / "pipeline" / "tokenizer")
    from transformers import CLIPTokenizer

    assert CLIPTokenizer.from_pretrained(str(saved_tokenizer)).convert_tokens_to_ids("<unknown>_2") == BASE_VOCAB + 2


def test_a_stage_counted_in_steps_that_trainer_max_time_stops_says_why_in_its_terms_only(tmp_path):
    done = run_cli(tmp_path, "stage=ti", "stage.max_steps=100000", *FAST, "+trainer.max_time=00:00:00:01")
    assert done.returncode == 2
    assert re.match(r"error: stage=ti stopped at step \d+ of 100000: trainer.max_time=00:00:00:01 ran out",
                    done.stderr.strip().splitlines()[-1]), done.stderr[-2000:]
    assert "max_epochs=1" not in done.stdout + done.stderr, "Lightning's one epoch of steps is not why it stopped"
