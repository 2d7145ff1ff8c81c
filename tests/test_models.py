"""Models by config: the tiny SD, the SD1.5 architecture at random, the real CLIP tokenizer, and weight loading."""

from __future__ import annotations

from pathlib import Path

from unittest import mock

import pytest
import torch

from stablesdg.errors import UserError
from stablesdg.models import build_sd15_random, build_tiny_sd, load_sd15, sd15_random
from stablesdg.models.sd15_random import weights_cache_folder
from stablesdg.models.tokenizer import build_clip_tokenizer

SD15_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def test_clip_tokenizer_matches_sd15_ids():
    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("A photo of a steel surface").input_ids == [49406, 320, 1125, 539, 320, 4726, 7744, 49407]
    assert tokenizer.tokenize("<unknown>") == ["<</w>", "unknown</w>", "></w>"]
    padded = tokenizer("A photo", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(padded) == 77 and padded[3:] == [49407] * 74


def test_the_clip_tokenizer_is_built_without_importing_open_clip_or_timm():
    # open_clip's package imports timm at once: seconds of every run's start, for a vocabulary file
    import subprocess
    import sys

    code = ("import sys\nfrom stablesdg.models.tokenizer import build_clip_tokenizer\n"
            "print(len(build_clip_tokenizer()), 'open_clip' in sys.modules, 'timm' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["49408", "False", "False"], done.stderr[-2000:]


def test_the_clip_tokenizer_without_open_clip_installed_says_what_to_install(monkeypatch):
    import importlib.util

    from stablesdg.models import tokenizer

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else real(name, *a))
    tokenizer._clip_vocab_and_merges.cache_clear()
    try:
        with pytest.raises(ModuleNotFoundError, match="pip install open_clip_torch"):
            build_clip_tokenizer()
    finally:
        tokenizer._clip_vocab_and_merges.cache_clear()


def test_sd15_random_has_the_sd15_parameter_counts():
    with torch.device("meta"):
        components = build_sd15_random()
    assert components.parameter_counts() == SD15_PARAMETERS
    assert components.latent_shape() == (4, 64, 64) and components.vae_scale_factor == 8


def test_tiny_is_deterministic_by_seed():
    a, b, c = build_tiny_sd(seed=0), build_tiny_sd(seed=0), build_tiny_sd(seed=1)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb, sc = (getattr(x, name).state_dict() for x in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_tiny_runs_one_denoising_step_shape_for_shape():
    sd = build_tiny_sd(seed=0)
    ids = sd.tokenizer(["A photo of <unknown>"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = sd.text_encoder(ids)[0]
    image = torch.rand(2, 3, sd.resolution, sd.resolution) * 2 - 1
    latents = sd.vae.encode(image).latent_dist.sample() * sd.vae.config.scaling_factor
    assert latents.shape == (2, *sd.latent_shape())
    out = sd.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=hidden.expand(2, -1, -1)).sample
    assert out.shape == latents.shape


@pytest.mark.parametrize("resolution", [0, 7, -64, 36, float("nan")])
def test_a_resolution_diffusers_pipelines_or_the_vae_cannot_take_is_a_one_line_error_before_any_build(resolution):
    with pytest.raises(UserError, match=r"^model.resolution must be a positive multiple of 8 \(diffusers' pipelines "
                                        rf"take sides divisible by 8\), got {resolution}$"):
        build_tiny_sd(resolution=resolution)
    with pytest.raises(UserError, match=r"^model.resolution must be a positive multiple of 8 "):
        load_sd15(path="/nonexistent/sd15", resolution=resolution)  # refused before the missing weights are looked for


def test_a_compile_setting_that_is_no_mode_is_refused_before_the_weights_are_looked_for():
    with pytest.raises(UserError, match=r"^model.compile='fast' is not one of true, false, default, "):
        load_sd15(path="/nonexistent/sd15", compile="fast")


def test_a_vae_with_more_pixels_per_latent_cell_than_8_needs_a_multiple_of_its_factor():
    from stablesdg.choices import require_resolution

    assert require_resolution(48, 16) == 48
    with pytest.raises(UserError, match=r"^model.resolution must be a positive multiple of 16 \(diffusers' pipelines take "
                                        r"sides divisible by 8; the VAE has 16 pixels per latent cell\), got 40$"):
        require_resolution(40, 16)


def test_a_resolution_that_is_a_multiple_of_8_denoises_at_that_size():
    sd = build_tiny_sd(resolution=40)
    latents = torch.randn(1, *sd.latent_shape())
    hidden = torch.randn(1, 77, sd.text_encoder.config.hidden_size)
    assert sd.unet(latents, torch.tensor([10]), encoder_hidden_states=hidden).sample.shape == latents.shape == (1, 4, 20, 20)


@pytest.fixture(scope="module")
def tiny_diffusers_folder(tmp_path_factory) -> tuple[Path, object]:
    sd = build_tiny_sd(seed=3)
    pipe = sd.pipeline()
    folder = tmp_path_factory.mktemp("sd") / "tiny-diffusers"
    pipe.save_pretrained(folder)
    return folder, sd


def test_sd15_loader_reads_a_local_diffusers_folder(tiny_diffusers_folder, capsys):
    folder, original = tiny_diffusers_folder
    capsys.readouterr()
    loaded = load_sd15(str(folder), resolution=64)
    assert "Loading weights" not in capsys.readouterr().err, "transformers' bar of carriage returns, in a log"
    assert loaded.parameter_counts() == original.parameter_counts()
    for name in ("unet", "vae", "text_encoder"):
        expected = getattr(original, name).state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in getattr(loaded, name).state_dict().items())
    assert loaded.tokenizer("A photo of a steel surface").input_ids == original.tokenizer("A photo of a steel surface").input_ids
    assert type(loaded.scheduler).__name__ == "DDPMScheduler"
    assert loaded.scheduler.config.beta_schedule == "scaled_linear"


@pytest.fixture(scope="module")
def fp16_only_folder(tmp_path_factory) -> tuple[Path, object]:
    """A diffusers folder as ``hf download --include "*fp16*"`` leaves it: fp16 weights only, each config saying fp16."""
    sd = build_tiny_sd(seed=4)
    folder = tmp_path_factory.mktemp("sd") / "fp16-only"
    sd.pipeline().to(torch.float16).save_pretrained(folder, variant="fp16")
    return folder, sd


def test_a_folder_holding_only_fp16_weights_loads_them_in_float32(fp16_only_folder):
    folder, original = fp16_only_folder
    assert not (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (folder / "text_encoder" / "model.fp16.safetensors").is_file()
    for variant in (None, "fp16"):
        loaded = load_sd15(str(folder), resolution=64, variant=variant)
        for name in ("unet", "vae", "text_encoder"):
            expected = getattr(original, name).state_dict()
            for key, value in getattr(loaded, name).state_dict().items():
                assert value.dtype == torch.float32, (name, key)
                assert torch.equal(value, expected[key].half().float()), (name, key)


def test_the_standard_weights_saved_in_fp16_load_in_float32(tmp_path):
    folder = tmp_path / "fp16-standard"
    build_tiny_sd(seed=5).pipeline().to(torch.float16).save_pretrained(folder)
    loaded = load_sd15(str(folder), resolution=64)
    assert {p.dtype for name in ("unet", "vae", "text_encoder") for p in getattr(loaded, name).parameters()} == {torch.float32}


def test_weight_variants_that_cannot_be_read_are_one_line_before_torch_reads_a_file(fp16_only_folder, tmp_path):
    from shutil import copytree

    folder, _ = fp16_only_folder
    with pytest.raises(UserError, match=rf"^model.variant=bf16: {folder}/unet/ holds no bf16 weights, only fp16; set "
                                        r"model.variant to one of them, or null for the standard weights$"):
        load_sd15(str(folder), variant="bf16")
    two = copytree(folder, tmp_path / "two-variants")
    (two / "vae" / "diffusion_pytorch_model.fp16.safetensors").rename(two / "vae" / "diffusion_pytorch_model.bf16.safetensors")
    (two / "vae" / "diffusion_pytorch_model.non_ema.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=rf"^model.path={two}: vae/ holds the weight variants bf16, non_ema and no "
                                        r"standard weights; choose one with model.variant=<variant>$"):
        load_sd15(str(two))
    none = copytree(folder, tmp_path / "no-text-encoder-weights")
    (none / "text_encoder" / "model.fp16.safetensors").unlink()
    with pytest.raises(UserError, match=rf"^model.path={none}: text_encoder/ holds no weights "):
        load_sd15(str(none))
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match=r"^model.variant=fp16 picks among a diffusers folder's weight files; "):
        load_sd15(str(tmp_path / "model.safetensors"), variant="fp16")


def test_sd15_loader_errors_are_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr("stablesdg.weight_files.hub_offline", lambda: True)
    with pytest.raises(UserError, match="model=sd15 needs weights"):
        load_sd15(None)
    with pytest.raises(UserError, match="does not exist"):
        load_sd15(str(tmp_path / "no-such-folder"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(UserError, match=r"not a diffusers Stable Diffusion folder \(missing vae/, text_encoder/"):
        load_sd15(str(tmp_path / "half"))
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    with pytest.raises(UserError, match="only .safetensors checkpoints are loaded"):
        load_sd15(str(tmp_path / "model.ckpt"))
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match="set model.config"):
        load_sd15(str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match=r"cannot load model.path=stable-diffusion-v1-5/stable-diffusion-v1-5 .*hub id"):
        load_sd15("stable-diffusion-v1-5/stable-diffusion-v1-5")


def _hub_answering(monkeypatch, answer):
    """The hub online, its model_info calls recorded and answered by ``answer(repo_id)``."""
    asked = []

    def model_info(repo_id, *args, **kwargs):
        asked.append(repo_id)
        return answer(repo_id)

    monkeypatch.setattr("stablesdg.weight_files.hub_offline", lambda: False)
    monkeypatch.setattr("huggingface_hub.model_info", model_info)
    return asked


def _no_network(repo_id):  # what huggingface_hub raises on a machine without a network
    raise OSError("[Errno -2] Name or service not known")


def _never(*args, **kwargs):
    raise AssertionError("a loader reached the hub")


def test_a_hub_id_the_hub_cannot_give_is_one_line_at_once_not_after_the_loaders_retries(monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError
    from transformers import CLIPTokenizer

    monkeypatch.setattr(CLIPTokenizer, "from_pretrained", _never)  # the first loader: retries each file for minutes
    hub_id = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    asked = _hub_answering(monkeypatch, _no_network)
    with pytest.raises(UserError) as raised:
        load_sd15(hub_id)
    assert (asked, str(raised.value)) == ([hub_id], (
        f"model.path={hub_id} (no folder {Path(hub_id).absolute()}, so a hub id): cannot reach the Hugging Face hub "
        "([Errno -2] Name or service not known); download the "
        f"model where there is a network (hf download {hub_id}) and set HF_HUB_OFFLINE=1 to read it from the cache, "
        "or set model.path to a local diffusers folder (with unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a "
        f".safetensors checkpoint, or to the hub id {hub_id} when online"))

    def not_there(repo_id):
        raise RepositoryNotFoundError(f"404 Client Error. Repository Not Found for url: {repo_id}", response=mock.Mock())

    _hub_answering(monkeypatch, not_there)
    with pytest.raises(UserError, match=r"^model.path=me/sd-typo \(no folder .*/me/sd-typo, so a hub id\): the Hugging "
                                        r"Face hub has no model me/sd-typo that this machine may read \(a gated or private one needs `hf auth login`\); set "):
        load_sd15("me/sd-typo")
    # a hub that answers: the loaders go on (here to a tokenizer that cannot be read)
    asked = _hub_answering(monkeypatch, lambda repo_id: None)
    monkeypatch.setattr(CLIPTokenizer, "from_pretrained", mock.Mock(side_effect=OSError("no tokenizer files")))
    with pytest.raises(UserError, match=rf"^cannot load model.path={hub_id} \(no tokenizer files\)"):
        load_sd15(hub_id)
    assert asked == [hub_id]
    # offline, nothing asks the hub: the loaders read the cache
    monkeypatch.setattr("stablesdg.weight_files.hub_offline", lambda: True)
    monkeypatch.setattr("huggingface_hub.model_info", _never)
    with pytest.raises(UserError, match=rf"^cannot load model.path={hub_id} \(no tokenizer files\)"):
        load_sd15(hub_id)


def test_a_single_file_checkpoint_whose_configs_the_hub_cannot_give_says_to_set_model_config(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", _never)
    asked = _hub_answering(monkeypatch, _no_network)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UserError) as raised:
        load_sd15(str(tmp_path / "model.safetensors"))
    assert asked == ["stable-diffusion-v1-5/stable-diffusion-v1-5"]  # the configs diffusers fetches for an SD1.x file
    assert str(raised.value) == (
        f"model.path={tmp_path}/model.safetensors is a single-file checkpoint, whose configs diffusers fetches from the "
        "hub (stable-diffusion-v1-5/stable-diffusion-v1-5): cannot reach the Hugging Face hub ([Errno -2] Name or "
        "service not known); set model.config=<local diffusers SD1.5 folder (configs suffice)>, or model.path to a "
        "diffusers folder")
    asked.clear()
    with pytest.raises(UserError, match=r"whose configs diffusers fetches from the hub \(me/configs\): cannot reach"):
        load_sd15(str(tmp_path / "model.safetensors"), config="me/configs")
    assert asked == ["me/configs"]


def _same_weights(a, b) -> bool:
    return all(
        a_state.keys() == b_state.keys() and all(torch.equal(a_state[k], b_state[k]) for k in a_state)
        for a_state, b_state in ((m.state_dict(), getattr(b, name).state_dict()) for name, m in a.modules().items())
    )


@pytest.mark.slow
def test_sd15_random_builds_real_weights_deterministically_and_caches_them_exactly(tmp_path, monkeypatch):
    drawn = build_sd15_random(seed=0, weights_cache=str(tmp_path))  # draws (as without a cache), and saves
    assert drawn.parameter_counts() == SD15_PARAMETERS
    assert next(drawn.unet.parameters()).device.type == "cpu"
    folder = weights_cache_folder(tmp_path, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no staging folder left
    for name in ("unet", "vae", "text_encoder"):
        assert list((folder / name).glob("*.safetensors")) and not list((folder / name).glob("*.bin"))

    def no_drawing(seed):
        raise AssertionError("a cached seed must not be drawn again")

    monkeypatch.setattr(sd15_random, "_draw", no_drawing)
    loaded = build_sd15_random(seed=0, weights_cache=str(tmp_path))
    assert _same_weights(loaded, drawn)
    assert all(not m.training and next(m.parameters()).dtype == torch.float32 for m in loaded.modules().values())
    assert weights_cache_folder(tmp_path, 1) != folder
    with pytest.raises(AssertionError, match="must not be drawn"):  # another seed is not in the cache
        build_sd15_random(seed=1, weights_cache=str(tmp_path))


def test_an_unusable_weights_cache_is_a_one_line_error(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with torch.device("meta"), pytest.raises(UserError, match=r"^model.weights_cache: cannot write .*/file \(not a folder\)$"):
        build_sd15_random(weights_cache=str(not_a_folder))
    broken = weights_cache_folder(tmp_path / "cache", 0)
    for name in ("unet", "vae", "text_encoder"):
        (broken / name).mkdir(parents=True)
    with pytest.raises(UserError, match=r"model.weights_cache: .*sd15_random-seed0-\w+ cannot be read .*delete it"):
        build_sd15_random(weights_cache=str(tmp_path / "cache"))


def test_unet_attention_uses_pytorch_sdpa():
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = build_tiny_sd(seed=0).unet.attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())


def _unet_output(sd) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, *sd.latent_shape(), generator=generator)
    text = torch.randn(2, 77, sd.text_encoder.config.hidden_size, generator=generator)
    with torch.no_grad():
        return sd.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=text).sample


@pytest.mark.parametrize("setting, arguments", [("true", {"mode": "default"}),
                                                ("reduce-overhead", {"mode": "reduce-overhead"}),
                                                ("max-autotune", {"mode": "max-autotune"}),
                                                ("cudagraphs", {"backend": "cudagraphs"}), ("false", None)])
def test_model_compile_takes_a_torch_compile_mode_or_the_cudagraphs_backend(make_cfg, monkeypatch, setting, arguments):
    from hydra.utils import instantiate

    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: calls.append((type(self).__name__, kwargs)))
    instantiate(make_cfg("model=tiny", f"model.compile={setting}").model)
    assert calls == ([("UNet2DConditionModel", arguments)] if arguments else [])


def test_cuda_graphs_compiled_on_a_cpu_say_so_in_one_line_once_not_in_torchs_seven_per_graph(caplog):
    import logging

    from stablesdg.models.components import CUDA_GRAPH_SKIPS_LOGGER, apply_speed_options

    reaching_torchs_handlers = []
    collect = logging.Handler()
    collect.emit = reaching_torchs_handlers.append
    torchs = logging.getLogger(CUDA_GRAPH_SKIPS_LOGGER)
    torchs.addHandler(collect)
    torch._dynamo.reset()
    try:
        module = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.SiLU())
        apply_speed_options(module, None, compile="cudagraphs")
        with caplog.at_level(logging.WARNING, logger="stablesdg"):
            for rows in (2, 4, 7):  # a shape that changes compiles the graph again
                module(torch.randn(rows, 3)).sum().backward()
            again = torch.nn.Linear(3, 2)  # a second model compiled in the same process says it again
            apply_speed_options(again, None, compile="cudagraphs")
            again(torch.randn(2, 3)).sum().backward()
    finally:
        torchs.removeHandler(collect)
        torch._dynamo.reset()
    ours = [r.getMessage() for r in caplog.records if r.name == "stablesdg.models.components"]
    assert ours == ["model.compile=cudagraphs: CUDA graphs need a CUDA device; on a CPU the compiled UNet runs without "
                    "them"] * 2
    assert [r.getMessage() for r in reaching_torchs_handlers if "cpu device" in r.getMessage()] == []


def test_a_compiled_unet_in_bf16_is_traced_without_dynamos_nine_lines_about_diffusers_cached_version_check():
    import warnings

    from diffusers.models.upsampling import Upsample2D

    from stablesdg.models.components import apply_speed_options

    torch._dynamo.utils.warn_once_cache.clear()  # dynamo says each warning once per process
    torch._dynamo.reset()
    try:
        upsample = Upsample2D(4)  # as in every up-block of the UNet
        with warnings.catch_warnings(record=True) as caught:
            apply_speed_options(upsample, None, compile="cudagraphs")
            traced = upsample(torch.randn(1, 4, 8, 8, dtype=torch.bfloat16))
    finally:
        torch._dynamo.reset()
    assert traced.shape == (1, 4, 16, 16)
    assert [str(w.message) for w in caught if "lru_cache" in str(w.message)] == []


def test_an_unknown_compile_mode_is_a_one_line_error(make_cfg):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    with pytest.raises((UserError, InstantiationException), match="model.compile='fastest' is not one of true, false, "
                                                                   "default, reduce-overhead"):
        instantiate(make_cfg("model=tiny", "model.compile=fastest").model)


def test_speed_options_from_the_model_config(make_cfg):
    from hydra.utils import instantiate

    plain = instantiate(make_cfg("model=tiny").model)
    fast = instantiate(make_cfg("model=tiny", "model.channels_last=true", "model.compile=true").model)
    conv = fast.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert fast.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.unet._compiled_call_impl is not None and plain.unet._compiled_call_impl is None
    assert list(fast.unet.state_dict()) == list(plain.unet.state_dict()), "compiling keeps the parameter names"
    fast.unet._compiled_call_impl = None  # compiling the tiny UNet takes minutes on a CPU: check the layout only
    torch.testing.assert_close(_unet_output(fast), _unet_output(plain), atol=1e-5, rtol=1e-5)
