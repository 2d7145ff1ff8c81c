"""Each benchmark script runs one tiny iteration on the CPU and writes its JSON table, so they never rot."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import runpy
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch

from conftest import REPO

EXPECTED_ROWS = {
    "adaptation": ["ti", "ti + channels_last", "lora", "lora + channels_last"],
    "generation": None,
    "scoring_and_classifiers": None,
}


@pytest.fixture(autouse=True)
def log_filters_restored():
    """Whatever filters a benchmark run in this process adds to the loggers it quiets are gone after each test, so
    the tests that check our stages' own filtering (in this process, later) see the libraries' notices."""
    names = ["diffusers.models.modeling_utils", "transformers.modeling_utils", "lightning.pytorch.utilities.rank_zero"]
    saved = {name: list(logging.getLogger(name).filters) for name in names}
    with warnings.catch_warnings():
        yield
    for name, filters in saved.items():
        logging.getLogger(name).filters[:] = filters


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_benchmark_runs_one_iteration_and_writes_its_table(tmp_path, name):
    out = tmp_path / f"{name}.json"
    argv = [f"benchmarks/{name}.py", "--device", "cpu", "--steps", "1", "--warmup", "0", "--batch", "2",
            "--fid-features", "pixels", "--out", str(out), "--workdir", str(tmp_path / "work")]
    if name == "adaptation":
        argv += ["--profile", str(tmp_path / "profiles")]
    if name != "scoring_and_classifiers":  # the tiny model at half its resolution: a quicker smoke run
        argv += ["--set", "model.resolution=32"]
    if name == "generation":  # ours is timed as the difference of two runs: 2 and 8 images, well above the noise
        argv[argv.index("--steps") + 1] = "3"
        argv += ["--inference-steps", "10"]  # DDIM 10 and DPM-Solver++ 4, not 50 and 20
    if name == "scoring_and_classifiers":  # two of the five networks (each builds in tests/test_classify.py)
        argv += ["--networks", "squeezenet", "resnet"]
    printed = io.StringIO()
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(printed):  # as `python <script>`, in-process
        runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    record = json.loads(out.read_text())
    assert record["model"] == "tiny" and record["device"].startswith("CPU") and record["rows"]
    if EXPECTED_ROWS[name]:
        assert [row["stage"] for row in record["rows"]] == EXPECTED_ROWS[name]
    for row in record["rows"]:
        speeds = [v for k, v in row.items() if k.endswith("/s")]
        assert speeds and all(v > 0 for v in speeds), row
    assert "| " in printed.getvalue(), "the table is printed"
    if name == "generation":
        assert {(row["host syncs per image"], row["peak GiB"]) for row in record["rows"]} == {(None, None)}, \
            "counted and measured on a GPU only"
        assert [row["setting"].rsplit(", ", 1)[-1] for row in record["rows"]] == [
            "DDIM 10", "DDIM 10", "DDIM 10", "DDIM 10", "DPM-Solver++ 4", "after ours"], "each row names its steps"
    if name == "scoring_and_classifiers":
        assert [row["work"] for row in record["rows"] if row["work"].startswith("train ")] == \
            ["train resnet", "train squeezenet"], "the networks asked for, in the table's order"
    if name == "adaptation":
        assert all({"model-only samples/s", "ratio bound"} <= set(row) for row in record["rows"])
        # the reference does our arithmetic and its VAE encode besides
        assert all(row["reference GFLOP per step"] > row["GFLOP per step"] > 0 for row in record["rows"])
        assert all(row["FLOP ratio"] == pytest.approx(row["reference GFLOP per step"] / row["GFLOP per step"])
                   for row in record["rows"])
        assert {(row["reference host syncs per step"], row["ours host syncs per step"]) for row in record["rows"]} \
            == {(None, None)}, "counted on a GPU only"
        tables = {p.name: p.read_text() for p in (tmp_path / "profiles").iterdir()}
        assert sorted(tables) == ["ours-lora-channels_last.txt", "ours-lora.txt", "ours-ti-channels_last.txt",
                                  "ours-ti.txt", "reference-lora.txt", "reference-ti.txt"]
        assert all("aten::convolution" in t and "Self CPU time total" in t for t in tables.values())
        # the rows share one latent cache: one set of latents per model config (with and without channels_last)
        assert len(list((tmp_path / "work" / "artifacts").rglob("latents-*.safetensors"))) == 2


@pytest.mark.slow
def test_adaptation_benchmark_under_bf16_mixed_measures_each_precision_switch_and_its_operators(tmp_path):
    out = tmp_path / "adaptation.json"
    argv = ["benchmarks/adaptation.py", "--device", "cpu", "--steps", "1", "--warmup", "0", "--batch", "1",
            "--set", "model.resolution=32", "--set", "trainer.precision=bf16-mixed", "--out", str(out),
            "--workdir", str(tmp_path / "work")]
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(io.StringIO()):
        runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    rows = {row["stage"]: row for row in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["ti", "ti + channels_last", "ti + UNet under autocast", "ti + fp32 frozen weights", "lora",
                          "lora + channels_last", "lora + UNet under autocast", "lora + fp32 frozen weights",
                          "lora + fp32 adapters"]
    operators = {stage: row["ours operators per step"] for stage, row in rows.items()}
    for stage in ("ti", "lora"):
        assert operators[stage] <= operators[f"{stage} + UNet under autocast"] < operators[f"{stage} + fp32 frozen weights"]
    assert operators["lora"] < operators["lora + fp32 adapters"]


@pytest.mark.slow
def test_adaptation_benchmark_measures_full_fine_tuning_without_writing_its_pipeline(tmp_path):
    out = tmp_path / "adaptation.json"
    argv = ["benchmarks/adaptation.py", "--device", "cpu", "--steps", "1", "--warmup", "0", "--batch", "1",
            "--set", "model.resolution=32", "--stages", "full", "--rows", "defaults", "--out", str(out),
            "--workdir", str(tmp_path / "work")]
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(io.StringIO()):
        runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    (row,) = json.loads(out.read_text())["rows"]
    assert row["stage"] == "full" and row["ours samples/s"] > 0 and row["reference samples/s"] > 0
    # ours: one fused Adam; the reference: train_dreambooth.py's foreach AdamW and gradient clipping, per tensor
    assert row["ours operators per step"] < row["reference operators per step"]
    assert list((tmp_path / "work" / "ours-full" / "out").rglob("*.safetensors")) == []


@pytest.mark.parametrize("name", ["adaptation", "generation"])
def test_set_overrides_reach_every_measured_run(tmp_path, name):
    from hydra.errors import ConfigCompositionException

    argv = [f"benchmarks/{name}.py", "--device", "cpu", "--set", "model.no_such_option=1",
            "--workdir", str(tmp_path / "work")]
    with mock.patch.object(sys, "argv", argv), pytest.raises(ConfigCompositionException, match="no_such_option"):
        runpy.run_path(str(REPO / argv[0]), run_name="__main__")


def test_scoring_benchmark_takes_no_config_overrides():
    argv = ["benchmarks/scoring_and_classifiers.py", "--set", "model.resolution=32"]
    with mock.patch.object(sys, "argv", argv), pytest.raises(SystemExit) as stop, \
            contextlib.redirect_stderr(io.StringIO()) as printed:
        runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    assert stop.value.code == 2 and "unrecognized arguments: --set" in printed.getvalue()


@pytest.mark.parametrize("option, message", [
    (["--steps", "0"], "argument --steps: 0 is below 1"),  # not a division by zero after the timed loop
    (["--batch", "-1"], "argument --batch: -1 is below 1"),
    (["--warmup", "abc"], "argument --warmup: 'abc' is not an integer"),
    (["--model", "sd15"], "argument --model: invalid choice: 'sd15' (choose from 'tiny', 'sd15_random')"),
    (["--set", "model.resolution"], "argument --set: 'model.resolution' is not KEY=VALUE"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "nodevice"], "argument --device: "),
])
def test_a_bad_option_is_argparses_one_line_usage_error_before_any_model_is_built(tmp_path, option, message):
    argv = ["benchmarks/adaptation.py", *option, "--workdir", str(tmp_path / "work")]
    with mock.patch.object(sys, "argv", argv), pytest.raises(SystemExit) as stop, \
            contextlib.redirect_stderr(io.StringIO()) as printed:
        runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    assert stop.value.code == 2 and f"adaptation.py: error: {message}" in printed.getvalue()
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("overrides, label, config", [
    ([], " + channels_last + compile", ("model.channels_last=true", "model.compile=true")),
    (["model.channels_last=false"], " + compile", ("model.compile=true",)),
])
def test_compile_rows_are_labelled_with_the_options_they_measure(overrides, label, config):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from common import compile_option
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    args = argparse.Namespace(compile_mode="default", overrides=overrides)
    assert compile_option(args) == (label, config)
    args.compile_mode = "reduce-overhead"
    assert compile_option(args) == (label.replace("compile", "compile (reduce-overhead)"),
                                    config[:-1] + ("model.compile=reduce-overhead",))


def test_benchmarks_drop_diffusers_empty_fp32_notice_and_transformers_resizing_note_and_keep_other_notices():
    from stablesdg.models.tiny import build_tiny_sd

    class Collect(logging.Handler):
        def emit(self, record):
            notices.append(record.getMessage())

    notices, handler = [], Collect()
    loggers = [logging.getLogger(name) for name in ("diffusers.models.modeling_utils", "transformers.modeling_utils")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        vae = build_tiny_sd(seed=0).vae
        vae.to(dtype=torch.float32)  # diffusers' cast notice, with no module to keep in fp32
        assert len(notices) == 1 and "should be kept in float32: []" in notices.pop()
        benchmark_namespace("common")["quiet_notices"]()
        vae.to(dtype=torch.float32)
        # transformers gives its note once per process (warning_once), so it is logged here as it words it
        loggers[1].warning("The new embeddings will be initialized from a multivariate normal distribution that has "
                           "old embeddings' mean and covariance. [...] To disable this, use `mean_resizing=False`")
        loggers[0].warning("There are modules in X that should be kept in float32: ['norm']. Casting ...")
        loggers[1].warning("another notice")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert notices == ["There are modules in X that should be kept in float32: ['norm']. Casting ...", "another notice"]


def test_flop_counts_include_attention_on_a_cpu_as_the_same_products_written_out():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from common import counted_flops
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    query, key, value = (torch.randn(2, 4, 64, 16, requires_grad=True) for _ in range(3))
    fused = counted_flops(lambda: torch.nn.functional.scaled_dot_product_attention(query, key, value))
    written_out = counted_flops(lambda: ((query @ key.transpose(-1, -2)) / 4).softmax(-1) @ value)
    assert fused == written_out == 2 * (2 * 2 * 4 * 64 * 64 * 16)  # two batched products of 2·b·h·s·s·d each
    attention = torch.nn.functional.scaled_dot_product_attention(query, key, value)
    assert counted_flops(lambda: attention.sum().backward()) > fused, "its backward pass is counted too"


def test_device_syncs_counts_torchs_sync_warnings_on_cuda_and_restores_the_mode(monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from common import DeviceSyncs
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    modes = ["off"]  # torch's sync debug mode, as this machine has no CUDA to set it on
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: modes[-1])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    def sync_in_a_library():  # torch's warning names the Python line that made the sync
        warnings.warn("called a synchronizing CUDA operation")

    library_line = sync_in_a_library.__code__.co_firstlineno + 1
    with DeviceSyncs("cuda:0") as syncs:
        assert modes[-1] == "warn"
        for _ in range(3):  # what torch warns at each sync in "warn" mode, from one place: every one counts
            sync_in_a_library()
        warnings.warn("something else")
        warnings.warn("called a synchronizing CUDA operation"); own_line = sys._getframe().f_lineno  # noqa: E702
    assert syncs.count == 4 and modes[-1] == "off"
    assert syncs.sites == [f"{__file__}:{library_line} ×3", f"{__file__}:{own_line}"], "most first, each line once"
    with DeviceSyncs("cpu") as on_cpu, pytest.warns(UserWarning, match="synchronizing"):  # left to pass through
        warnings.warn("called a synchronizing CUDA operation")
    assert on_cpu.count is None and on_cpu.sites == [] and modes == ["off", "warn", "off"]


# The lent GPU machine's python3 and nvidia-smi, for a dry run of benchmarks/gpu_call.sh here: pip installs nothing,
# and each benchmark's command line is recorded (one JSON list per line), to be parsed afterwards in this process.
RECORDING_PYTHON = '''#!/bin/sh
[ "$1 $2" = "-m pip" ] && exit 0
{python} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "{record}"
echo "parsed: $*"
'''


def run_gpu_call(tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    (stubs / "python3").write_text(RECORDING_PYTHON.format(python=sys.executable, record=tmp_path / "commands.jsonl"))
    (stubs / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H200, 580.95.05, 143771 MiB'\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    (tmp_path / "out").mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"),
           "TMPDIR": str(tmp_path)}
    return subprocess.run(["bash", "benchmarks/gpu_call.sh", *arguments], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


class Parsed(Exception):
    """Raised where a benchmark has parsed its arguments: the dry run stops there."""


def parse_as_the_benchmark_would(argv: list[str]) -> argparse.Namespace:
    """Run ``python <argv>`` in this process up to its parsed arguments, composing the config its ``--set``
    overrides apply to as it would; an argument it refuses is argparse's ``SystemExit``."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import common
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    parse = common.arguments

    def parse_and_stop(*args, **kwargs):
        parsed = parse(*args, **kwargs)
        if getattr(parsed, "overrides", None):
            common.compose([f"model={parsed.model}", *parsed.overrides])
        raise Parsed(parsed)

    with mock.patch.object(common, "arguments", parse_and_stop), mock.patch.object(sys, "argv", argv), \
            pytest.raises(Parsed) as stopped:
        sys.path.insert(0, str(REPO / "benchmarks"))
        try:
            runpy.run_path(str(REPO / argv[0]), run_name="__main__")
        finally:
            sys.path.remove(str(REPO / "benchmarks"))
    return stopped.value.args[0]


GPU_CALL_PARTS = ["adapt_b8", "adapt_b4", "adapt_b32", "full", "cudagraphs", "cudagraphs_b4", "cudagraphs_lora",
                  "cgbackend_b4", "peak_b32", "compile_b32", "switches", "checkpointing", "generation", "scoring"]


def test_gpu_call_runs_every_part_with_arguments_its_benchmark_accepts_and_packs_the_results(tmp_path):
    done = run_gpu_call(tmp_path, "9999", *GPU_CALL_PARTS)
    assert done.returncode == 0, done.stdout + done.stderr
    names = ["adaptation", "adaptation_batch4", "adaptation_batch32", "adaptation_full", "adaptation_cudagraphs",
             "adaptation_cudagraphs_batch4", "adaptation_cudagraphs_lora", "adaptation_cgbackend_batch4",
             "adaptation_peak_batch32", "adaptation_compile_batch32", "adaptation_switches",
             "adaptation_checkpointing", "generation", "scoring_and_classifiers"]
    assert re.findall(r"^== (\w+): exit (\d+)", done.stdout, re.M) == [(name, "0") for name in names]
    with tarfile.open(tmp_path / "out" / "results.tgz") as packed:
        files = {member.name: packed.extractfile(member).read().decode() for member in packed if member.isfile()}
    assert files["results/device.txt"].startswith("NVIDIA H200")
    for name in names:
        assert files[f"results/gpu_{name}.log"].startswith("parsed: benchmarks/"), name
    commands = [json.loads(line) for line in (tmp_path / "commands.jsonl").read_text().splitlines()]
    assert [Path(argv[0]).stem for argv in commands] == \
        ["adaptation"] * 12 + ["generation", "scoring_and_classifiers"]
    parsed = [parse_as_the_benchmark_would(argv) for argv in commands]
    assert [Path(args.out).name for args in parsed] == [f"gpu_{name}.json" for name in names]
    graphs = [(args.only_compile, args.compile_mode, args.stages, args.batch) for args in parsed[4:8]]
    assert graphs == [(True, "reduce-overhead", ["ti"], 8), (True, "reduce-overhead", ["ti"], 4),
                      (True, "reduce-overhead", ["lora"], 8), (True, "cudagraphs", ["ti", "lora"], 4)]
    assert (parsed[1].batch, parsed[1].rows, parsed[1].profile) == (4, ["defaults", "channels_last"], None)
    peak, compiled = parsed[8:10]
    assert (peak.batch, peak.stages, peak.rows, peak.compile, peak.only_compile) == \
        (32, ["ti", "lora"], ["defaults", "channels_last"], False, False)
    assert (compiled.batch, compiled.stages, compiled.only_compile, compiled.compile_mode) == (32, ["ti"], True, "default")
    checkpointing = parsed[11]
    assert (checkpointing.batch, checkpointing.stages, checkpointing.rows) == \
        (8, ["ti", "lora", "full"], ["defaults", "gradient_checkpointing"])
    cache = f"model.weights_cache={tmp_path}/stablesdg_weights_cache"
    for name, args in zip(names[:-1], parsed):  # every SD1.5 run draws the random weights once and then loads them
        assert args.model == "sd15_random" and cache in args.overrides, name


def test_gpu_call_without_parts_runs_the_plans_open_questions_first(tmp_path):
    done = run_gpu_call(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.findall(r"^== (\w+): exit 0", done.stdout, re.M) == \
        ["adaptation_batch4", "adaptation_cgbackend_batch4", "adaptation_peak_batch32", "scoring_and_classifiers",
         "adaptation_compile_batch32", "adaptation_cudagraphs_batch4", "adaptation_cudagraphs_lora",
         "adaptation_checkpointing"]


def test_gpu_call_starts_no_part_past_its_time_and_refuses_an_unknown_part(tmp_path):
    done = run_gpu_call(tmp_path, "0", "adapt_b8", "generation")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.findall(r"^== (\w+): skipped", done.stdout, re.M) == ["adaptation", "generation"]
    assert (tmp_path / "out" / "results.tgz").exists()
    refused = run_gpu_call(tmp_path, "60", "adapt_b8", "nope")
    assert refused.returncode == 2 and "unknown part 'nope'" in refused.stdout and "== " not in refused.stdout


def benchmark_namespace(name: str) -> dict:
    """The functions of benchmarks/<name>.py, loaded without running it."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return runpy.run_path(str(REPO / "benchmarks" / f"{name}.py"), run_name=f"benchmark_{name}")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.parametrize("rows, stage, mixed, compile, labels", [
    (None, "lora", True, False, ["", " + channels_last", " + UNet under autocast", " + fp32 frozen weights",
                                 " + fp32 adapters"]),
    (None, "ti", True, False, ["", " + channels_last", " + UNet under autocast", " + fp32 frozen weights"]),
    (None, "lora", False, False, ["", " + channels_last"]),
    (None, "full", True, False, ["", " + channels_last"]),
    (["fp32_adapters"], "ti", True, False, []),
    (["fp32_adapters", "defaults"], "lora", True, False, ["", " + fp32 adapters"]),
    (["defaults"], "ti", False, True, ["", " + channels_last + compile"]),
    (["gradient_checkpointing", "defaults"], "full", False, False, ["", " + gradient checkpointing"]),
])
def test_adaptation_rows_are_those_asked_for_that_apply(rows, stage, mixed, compile, labels):
    stage_rows = benchmark_namespace("adaptation")["stage_rows"]
    args = argparse.Namespace(rows=rows, compile=compile, only_compile=False, compile_mode="default", overrides=[])
    assert [label for label, _ in stage_rows(args, stage, mixed)] == labels


def test_adaptation_refuses_rows_that_apply_to_no_stage_before_measuring(tmp_path):
    argv = ["benchmarks/adaptation.py", "--device", "cpu", "--stages", "ti", "--rows", "fp32_adapters",
            "--workdir", str(tmp_path / "work")]
    with mock.patch.object(sys, "argv", argv), pytest.raises(SystemExit, match="no row of --rows fp32_adapters"):
        runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    assert not (tmp_path / "work").exists()


def test_generation_settings_are_those_asked_for_in_their_order():
    our_settings = benchmark_namespace("generation")["our_settings"]
    args = argparse.Namespace(settings=["dpmsolver", "fast_off"], batch=8, compile=False, only_compile=False,
                              inference_steps=50)
    assert [(batch, scheduler) for _, batch, scheduler, _ in our_settings(args)] == [(1, "ddim"), (8, "dpmsolver++")]
