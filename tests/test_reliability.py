"""Faults provoked on real subprocesses: killed training, concurrent jobs sharing a cache, determinism."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, compose_config, meeting_port, outputs_of_all, run_cli
from stablesdg.errors import UserError
from stablesdg.train import run

STEPS = ["category=Sc", "stage.max_steps=30", "stage.checkpoint_every=3", "logger=none"]
TRAINING = [*STEPS, "stage.validation_every=0", "stage.max_steps=12"]  # a TI/LoRA step takes long enough to kill mid-run
SMALL_DDPM = ["stage.widths=[16,32]", "stage.layers_per_block=1", "stage.resolution=16", "stage.batch_size=4"]
# stage -> (command-line overrides, its folder under the artifact root, the artifact compared byte for byte)
STAGES = {
    "ti": (["stage=ti", *TRAINING], "synthetic/Sc/default/ti", "learned_embeds.safetensors"),
    "lora": (["stage=lora", "stage.use_ti=false", *TRAINING], "synthetic/Sc/default/lora", "pytorch_lora_weights.safetensors"),
    "dcgan": (["stage=dcgan", "stage.width=8", "stage.batch_size=8", *STEPS], "synthetic/Sc/default/dcgan",
              "generator.safetensors"),
    "ddpm": (["stage=ddpm", *SMALL_DDPM, *STEPS], "synthetic/Sc/default/ddpm", "unet/diffusion_pytorch_model.safetensors"),
    "classify": (["stage=classify", "stage.max_epochs=6", "logger=none"],
                 "synthetic/all/default/classify_squeezenet_a1.0_none_seed0", "classifier.safetensors"),
}


def _command(root: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "stablesdg.train", f"paths.artifacts={root}/artifacts", f"paths.logs={root}/logs",
            *overrides]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update({"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"})
    return env


@pytest.mark.slow
@pytest.mark.parametrize("name, sig", [("lora", signal.SIGINT), ("dcgan", signal.SIGKILL), ("ddpm", signal.SIGTERM),
                                       ("classify", signal.SIGKILL)])  # TI: the submitit pre-emption test below
def test_killed_training_resumes_to_the_uninterrupted_artifact(tmp_path, name, sig):
    args, folder, artifact = STAGES[name]
    stage = tmp_path / "killed/artifacts" / folder
    process = subprocess.Popen(_command(tmp_path / "killed", *args), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,  # Ctrl-C reaches it even where this job ignores it
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not (stage / "checkpoints/last.ckpt").is_file():
        time.sleep(0.1)
    assert process.poll() is None, f"the run ended before its first checkpoint: {process.stderr.read()[-2000:]}"
    os.kill(process.pid, sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert not (stage / "result.json").exists(), "no result for unfinished work"
    assert not (stage / artifact).exists()
    if sig == signal.SIGTERM:  # its state saved at the step it stopped at, not only at the last periodic checkpoint
        assert process.returncode == 2 and "Traceback" not in stderr, stderr[-2000:]
        stopped = re.fullmatch(rf"error: stage={name} stopped by SIGTERM at step (\d+); run the same command again to "
                               "resume from there", stderr.strip().splitlines()[-1])
        assert stopped, stderr[-2000:]
        saved = torch.load(stage / "checkpoints/hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
        assert saved["global_step"] == int(stopped.group(1))
    if sig == signal.SIGINT:  # Ctrl-C: Lightning's shutdown, then the same kind of line, with the shell's code for it
        assert process.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
        assert re.fullmatch(rf"error: stage={name} stopped by Ctrl-C at step \d+; run the same command again to resume",
                            stderr.strip().splitlines()[-1]), stderr[-2000:]
    resumed = subprocess.run(_command(tmp_path / "killed", *args), cwd=REPO, env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    if sig == signal.SIGTERM:
        assert f"resuming from {stage / 'checkpoints/hpc_ckpt_1.ckpt'}" in resumed.stdout + resumed.stderr
    straight = tmp_path / "straight"
    run(compose_config([f"paths.artifacts={straight}/artifacts", f"paths.logs={straight}/logs", *args]))
    reference = straight / "artifacts" / folder
    assert (stage / artifact).read_bytes() == (reference / artifact).read_bytes(), "bit-identical on CPU"
    metrics = [json.loads((root / "result.json").read_text())["metrics"] for root in (stage, reference)]
    assert metrics[0] == metrics[1], "the same losses and scores as the uninterrupted run"
    if name == "lora":  # every step's loss, those before the kill too
        assert (stage / "loss.csv").read_bytes() == (reference / "loss.csv").read_bytes()


@pytest.mark.slow
def test_sigterm_in_a_pipelines_training_step_names_the_step_and_saves_its_state(tmp_path):
    stage = tmp_path / "artifacts/synthetic/Pa/default/ti"
    process = subprocess.Popen(_command(tmp_path, "+experiment=quickstart", "category=Pa",
                                        "pipeline.adaptation=['stage.max_steps=400','stage.checkpoint_every=5']",
                                        "logger=none"), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not (stage / "checkpoints/last.ckpt").is_file():
        time.sleep(0.1)
    assert process.poll() is None, f"the run ended before its first checkpoint: {process.stderr.read()[-2000:]}"
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    stopped = re.fullmatch(r"error: pipeline step ti Pa: stage=ti stopped by SIGTERM at step (\d+); run the same "
                           r"command again to resume from there", stderr.strip().splitlines()[-1])
    assert process.returncode == 2 and stopped, stderr[-2000:]
    saved = torch.load(stage / "checkpoints/hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == int(stopped.group(1))


def _processes_running(module: str, mentioning: Path) -> list[int]:
    """The ids of live processes running ``python -m module`` whose command line names a path under ``mentioning``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and module in argv and any(str(mentioning) in a for a in argv):
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_job_preempted_under_submitit_is_requeued_and_resumes_to_the_uninterrupted_artifact(tmp_path):
    # SLURM warns a job it pre-empts (or that nears its time limit) with SIGUSR2; submitit then requeues Hydra's job
    # with the same overrides. submitit_local runs the same machinery as local processes.
    args, folder, artifact = STAGES["ti"]
    args = [*args, "stage.max_steps=24"]
    stage = tmp_path / "preempted/artifacts" / folder
    command = _command(tmp_path / "preempted", "hydra/launcher=submitit_local", *args)
    launcher = subprocess.Popen([*command[:3], "-m", *command[3:]],
                                cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and launcher.poll() is None and not (stage / "checkpoints/last.ckpt").is_file():
        time.sleep(0.1)
    jobs = _processes_running("submitit.core._submit", tmp_path / "preempted")
    assert len(jobs) == 1, f"one job process before it finished: {jobs}, {launcher.poll()}"
    os.kill(jobs[0], signal.SIGUSR2)
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, stderr[-2000:]
    log = next((tmp_path / "preempted/logs").rglob("*_0_log.out")).read_text()
    assert "Calling checkpoint method" in log and "Requeued job" in log
    assert f"resuming from {stage / 'checkpoints/last.ckpt'}" in log
    straight = tmp_path / "straight"
    run(compose_config([f"paths.artifacts={straight}/artifacts", f"paths.logs={straight}/logs", *args]))
    for name in (artifact, "loss.csv"):
        assert (stage / name).read_bytes() == (straight / "artifacts" / folder / name).read_bytes(), name


DDP_ON_CPUS = ["stage=ti", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
               "category=Sc", "logger=none", "dataset.synthetic.per_class=10", "stage.validation_images=1"]


@pytest.fixture
def session_run(tmp_path):
    """Starts commands (``python -m stablesdg.train`` with ``flags`` and overrides), each in a session of its own, to
    be signalled as SLURM or a terminal signals one: every process of it (Ctrl-C included, which a test job may
    ignore). A command still there when the test ends (a hang it failed on) is killed with all its processes."""
    started = []

    def start(*overrides: str, flags: tuple[str, ...] = (), env: dict[str, str] | None = None) -> subprocess.Popen:
        command = _command(tmp_path, *overrides)
        started.append(subprocess.Popen([*command[:3], *flags, *command[3:]], cwd=REPO, env=env or _env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)))
        return started[-1]

    yield start
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def ddp_run(session_run):
    """Starts two-process DDP runs of ``stage=ti`` on CPUs with ``session_run``."""
    return lambda *overrides: session_run(*DDP_ON_CPUS, *overrides)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_a_multirun_of_parallel_jobs_and_its_command_in_one_line(tmp_path, session_run, sig):
    stages = [tmp_path / f"artifacts/synthetic/{c}/default/ti" for c in ("Pa", "Sc")]
    process = session_run("stage=ti", "category=Pa,Sc", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                          "stage.max_steps=300", "stage.checkpoint_every=2", "stage.validation_every=0", "logger=none",
                          "dataset.synthetic.per_class=10", flags=("-m",))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not all(
            (stage / "checkpoints/last.ckpt").is_file() for stage in stages):
        time.sleep(0.1)
    assert process.poll() is None, process.stdout.read()[-2000:]
    if sig == signal.SIGINT:
        os.killpg(process.pid, sig)  # a terminal's Ctrl-C: every process of the command
    else:
        os.kill(process.pid, sig)  # `kill <pid>`: the command alone, which must stop the jobs of its pool too
    output, _ = process.communicate(timeout=60)  # the pool's processes gone too: they held the output open
    name, code = ("Ctrl-C", 130) if sig == signal.SIGINT else ("SIGTERM", 2)
    # nor a resource tracker's warning of the pool's semaphores ("leaked semaphore", "leaked semlock")
    assert process.returncode == code and "Traceback" not in output and "resource_tracker" not in output, output[-3000:]
    lines = output.strip().splitlines()
    assert lines[-1] == f"error: the multirun stopped by {name}; run the same command again to resume its jobs", \
        output[-3000:]
    assert all(re.fullmatch(rf"error: stage=ti stopped by {name} at step \d+; run the same command again to resume",
                            line) for line in lines if line.startswith("error: stage=")), output[-3000:]
    assert not any((stage / "result.json").exists() for stage in stages)


class UnbufferedStream:
    """A joblib worker's standard streams: each write reaches the shared pipe at once."""

    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)

    def flush(self):
        self.writes.append("<flush>")


def test_a_line_is_said_in_one_write_with_its_newline_so_another_jobs_line_cannot_run_on_from_it():
    from stablesdg.errors import say

    stream = UnbufferedStream()
    print("error: as print says it", file=stream)
    assert stream.writes == ["error: as print says it", "\n"], "two writes: another job's line can come between"
    stream.writes.clear()
    say("error: stage=ti stopped by Ctrl-C at step 2; run the same command again to resume", stream)
    assert stream.writes == ["error: stage=ti stopped by Ctrl-C at step 2; run the same command again to resume\n",
                             "<flush>"]


def test_inspects_report_reaches_an_unbuffered_stream_whole_so_a_parallel_jobs_line_cannot_split_it(make_cfg, tmp_path,
                                                                                                  monkeypatch):
    from stablesdg.stages import inspect

    out = tmp_path / "out"
    out.mkdir()
    stream = UnbufferedStream()
    monkeypatch.setattr(sys, "stdout", stream)
    inspect.run(make_cfg("stage=inspect", "logger=none", "dataset.synthetic.per_class=10"), out)
    report, grid = [text for text in stream.writes if text != "<flush>"]
    assert report.startswith("dataset synthetic") and report.count("\n") > 5 and report.endswith("\n"), "the whole report"
    assert grid == f"sample grid {out / inspect.SAMPLES_FILE}\n"


@pytest.mark.slow
def test_sigterm_stops_every_ddp_process_at_one_step_in_one_line_and_the_run_resumes(tmp_path, ddp_run):
    # rank 0 renders a grid after every step, so the signal mostly lands while the other rank waits at the next step
    args = ["stage.max_steps=6", "stage.checkpoint_every=2", "stage.validation_every=1", "stage.validation_steps=10"]
    stage = tmp_path / "artifacts/synthetic/Sc/default/ti"
    process = ddp_run(*args)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not (stage / "checkpoints/last.ckpt").is_file():
        time.sleep(0.1)
    assert process.poll() is None, process.stdout.read()[-2000:]
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2 and "Traceback" not in output, output[-3000:]
    said = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(said) == 1 and re.fullmatch(r"error: stage=ti stopped by SIGTERM at step \d+; run the same command "
                                           r"again to resume from the last checkpoint", said[0]), output[-3000:]
    time.sleep(1)
    assert _processes_running("stablesdg.train", tmp_path) == [], "no DDP process left behind"
    assert not (stage / "result.json").exists()
    resumed = ddp_run(*args)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resuming from" in output, output[-3000:]
    metrics = json.loads((stage / "result.json").read_text())["metrics"]
    assert metrics["steps"] == 6 and metrics["world_size"] == 2
    assert len((stage / "loss.csv").read_text().splitlines()) == 1 + 6, "every step's loss, those before the stop too"


@pytest.mark.slow
def test_sigterm_while_rank_0_renders_the_last_grid_saves_the_finished_training_and_ends(tmp_path, ddp_run):
    # the other rank then waits in the end-of-training checkpoint barrier: the signal must not start a collective
    process = ddp_run("stage.max_steps=4", "stage.validation_every=250", "stage.validation_steps=40")
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "`max_steps=4` reached" in line:
            time.sleep(1)  # into the grid's denoising steps
            os.killpg(process.pid, signal.SIGTERM)
            break
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and "Traceback" not in output, "".join(seen)[-2000:] + output[-3000:]
    stage = tmp_path / "artifacts/synthetic/Sc/default/ti"
    assert json.loads((stage / "result.json").read_text())["metrics"]["steps"] == 4
    assert (stage / "learned_embeds.safetensors").is_file()


@pytest.mark.slow
def test_two_jobs_sharing_a_category_cache_neither_clobber_nor_duplicate(tmp_path):
    commands = [_command(tmp_path, "stage=ti", "category=Pa", "stage.max_steps=2", "stage.validation_every=0",
                         "logger=none", f"variant=job{i}") for i in range(2)]
    processes = [subprocess.Popen(c, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for c in commands]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]
    cache = tmp_path / "artifacts/synthetic/Pa/_cache"
    latents = sorted(p.name for p in cache.iterdir() if p.suffix == ".safetensors")
    assert len(latents) == 1, f"one shared latent cache, not one per job: {latents}"
    assert not [p for p in cache.iterdir() if p.suffix == ".tmp"], "no temporary files left"
    splits = list((tmp_path / "artifacts/synthetic/splits").glob("*.json"))
    assert len(splits) == 1
    embeds = [(tmp_path / f"artifacts/synthetic/Pa/job{i}/ti/learned_embeds.safetensors").read_bytes() for i in range(2)]
    assert embeds[0] == embeds[1], "both jobs trained on the same cached latents"


def test_a_second_run_of_a_stage_being_written_is_refused_and_changes_nothing(tmp_path):
    from filelock import FileLock

    assert run_cli(tmp_path, "stage=inspect", "logger=none").returncode == 0
    folder = tmp_path / "artifacts/synthetic/all/default/inspect"
    with FileLock(str(folder / ".lock"), timeout=0):  # the first run, still writing (its lock, held by this process)
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        second = run_cli(tmp_path, "stage=inspect", "logger=none", "seed=1")
        assert second.returncode == 2
        assert second.stderr.strip() == (f"error: {folder} is being written by another run (it holds .lock there); "
                                         "let that run finish or stop it, then run this command again")
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "the finished result is kept"
    assert run_cli(tmp_path, "stage=inspect", "logger=none", "seed=1").returncode == 0, "free once the first ends"


# torch's own words for a CUDA allocation that failed (c10's caching allocator, torch 2.x)
CUDA_OUT_OF_MEMORY = (
    "CUDA out of memory. Tried to allocate 1.22 GiB. GPU 0 has a total capacity of 15.77 GiB of which 959.44 MiB is "
    "free. Process 12447 has 14.83 GiB memory in use. Of the allocated memory 14.01 GiB\nis allocated by PyTorch, and "
    "472.05 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management "
    " (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")


@pytest.mark.parametrize("stage, step", [(["stage=ti", "stage.max_steps=2"], ""),
                                         (["stage=pipeline", "pipeline.steps=[adapt]", "pipeline.adapt=[ti]"],
                                          "pipeline step ti Pa: ")])
def test_a_run_out_of_gpu_memory_is_one_line_with_torchs_account_and_the_settings_that_need_less(
        tmp_path, monkeypatch, stage, step):
    import torch

    from conftest import run_cli

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", out_of_memory)  # every attention layer
    done = run_cli(tmp_path, *stage, "category=Pa", "logger=none", "dataset.synthetic.per_class=10")
    assert (done.returncode, done.stderr) == (2, (
        f"error: {step}stage=ti ran out of GPU memory (CUDA out of memory. Tried to allocate 1.22 GiB. GPU 0 has a total "
        "capacity of 15.77 GiB of which 959.44 MiB is free); try stage.gradient_checkpointing=true (the same weights, "
        "for one more UNet forward pass per step), or a smaller stage.batch_size (now 4), or "
        "trainer.precision=bf16-mixed (now 32-true), or a GPU that no other process holds memory on (nvidia-smi lists "
        "them)\n"))
    assert not list((tmp_path / "artifacts").rglob("result.json"))


@pytest.mark.parametrize("overrides, hints", [
    (["stage=lora", "trainer.precision=bf16-mixed"],
     "try stage.gradient_checkpointing=true (the same weights, for one more UNet forward pass per step), or a smaller "
     "stage.batch_size (now 4), or a GPU"),
    (["stage=full", "stage.gradient_checkpointing=true", "stage.batch_size=1", "trainer.precision=bf16-mixed"],
     "try a GPU"),  # nothing left to name but another GPU
    (["stage=classify"], "try a smaller stage.batch_size (now 32), or trainer.precision=bf16-mixed (now 32-true), or a GPU"),
])
def test_gradient_checkpointing_is_named_where_an_adaptation_stage_has_it_off(tmp_path, overrides, hints):
    from stablesdg.memory import out_of_memory_error

    cfg = compose_config([f"paths.artifacts={tmp_path}", "category=Pa", *overrides])
    said = str(out_of_memory_error(cfg, torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)))
    assert said.startswith(f"stage={cfg.stage.name} ran out of GPU memory (CUDA out of memory. Tried to allocate 1.22 GiB.")
    assert f"is free); {hints} that no other process holds memory on (nvidia-smi lists them)" in said


def test_a_run_out_of_host_memory_is_one_line_that_names_preloading(tmp_path, monkeypatch):
    import torch

    from stablesdg.stages import classify

    def preload_beyond_memory(*args, **kwargs):
        return torch.empty(2 ** 50, dtype=torch.uint8)  # a petabyte: the CPU allocator refuses it at once

    monkeypatch.setattr(classify, "preload_images", preload_beyond_memory)
    cfg = compose_config([f"paths.artifacts={tmp_path}/artifacts", "stage=classify", "logger=none",
                          "dataset.synthetic.per_class=10"])
    with pytest.raises(UserError) as refused:
        run(cfg)
    assert str(refused.value) == (
        f"stage=classify ran out of host memory (can't allocate memory: you tried to allocate {2 ** 50} bytes); try "
        "a smaller stage.batch_size (now 32), or stage.preload=false (images decoded at each epoch, not held in "
        "memory), or more memory for the job (fewer jobs at once on the machine, a larger SLURM --mem)")


@pytest.mark.parametrize("stage, artifact", [
    (["stage=ti", "stage.max_steps=3", "stage.validation_every=0"], "ti/learned_embeds.safetensors"),
    (["stage=dcgan", "stage.max_steps=2", "stage.width=8", "stage.batch_size=8"], "dcgan/generator.safetensors"),
])
def test_training_that_diverges_saves_nothing_and_says_so_in_one_line(tmp_path, stage, artifact):
    from conftest import run_cli

    common = ["category=Pa", "logger=none", "dataset.synthetic.per_class=10"]
    done = run_cli(tmp_path, *stage, *common, "stage.lr=1e30")  # Adam's first step leaves the weights beyond float32
    steps = stage[1].split("=")[1]
    assert (done.returncode, done.stderr) == (2, (
        f"error: {stage[0]} diverged: its trained weights hold nan or inf values at step {steps}, so nothing was "
        "saved; train it again with a smaller stage.lr (now 1e+30)\n"))
    folder = tmp_path / "artifacts/synthetic/Pa/default"
    assert not (folder / artifact).exists() and not list(folder.rglob("result.json"))
    again = run_cli(tmp_path, *stage, *common)  # its own lr: trained anew, not resumed from the diverged checkpoint
    assert again.returncode == 0, again.stderr
    assert (folder / artifact).is_file()


def test_partial_work_resumes_across_a_version_that_moves_a_stages_code_but_not_across_a_changed_setting(tmp_path):
    from stablesdg.artifacts import STAMP_FILE
    from stablesdg.training import claim_directory

    def made_so_far(cfg) -> Path:
        folder = tmp_path / "images"
        shutil.rmtree(folder, ignore_errors=True)
        assert not claim_directory(folder, cfg, {"adapters": "abc"}), "nothing to keep in a new folder"
        (folder / "0.png").write_bytes(b"an image made so far")
        return folder

    def composed(*overrides: str):
        return compose_config([f"paths.artifacts={tmp_path}", "stage=generate", "category=Pa", *overrides])

    moved = composed("stage.checks=elsewhere.check_generation", "stage.inputs=elsewhere.require_inputs",
                     "stage.runner=elsewhere.generate")
    assert claim_directory(made_so_far(composed()), moved, {"adapters": "abc"})
    assert claim_directory(made_so_far(moved), composed(), {"adapters": "abc"})
    assert (tmp_path / "images" / "0.png").is_file()
    for changed, inputs in ((composed("stage.strength=0.3"), {"adapters": "abc"}), (moved, {"adapters": "retrained"})):
        folder = made_so_far(composed())
        assert not claim_directory(folder, changed, inputs)
        assert sorted(p.name for p in folder.iterdir()) == [STAMP_FILE], "the work of other settings is discarded"


SLURM_TASK = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
              "SLURM_NODEID": "0", "SLURM_JOB_ID": "5151", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "localhost"}


def test_under_slurm_a_fresh_run_restores_no_requeue_checkpoint_that_another_run_left(tmp_path, monkeypatch):
    settings = ["stage=ti", "stage.max_steps=3", "stage.validation_every=0", "logger=none"]
    assert run_cli(tmp_path, *settings, "category=Pa", "stage.keep_checkpoints=true").returncode == 0
    pa = tmp_path / "artifacts/synthetic/Pa/default/ti"
    # where Lightning saved a SLURM requeue's checkpoint (hpc_ckpt_<n>.ckpt, on SIGUSR1) when every run shared
    # trainer.default_root_dir; a fresh run under SLURM restored it, whatever stage and category it had trained
    (tmp_path / "logs/lightning").mkdir(parents=True)
    shutil.copy(pa / "checkpoints/last.ckpt", tmp_path / "logs/lightning/hpc_ckpt_1.ckpt")
    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value)
    done = run_cli(tmp_path, *settings, "category=Cr", "stage.max_steps=5")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Restoring states" not in done.stdout + done.stderr and "SLURM auto-requeueing" in done.stdout + done.stderr
    metrics = json.loads((tmp_path / "artifacts/synthetic/Cr/default/ti/result.json").read_text())["metrics"]
    assert metrics["steps"] == 5, "trained from its own start, not from Pa's step 3"


def _slurm_task(tmp_path: Path, rank: int = 0, tasks: int = 1, port: int | None = None,
                scontrol_says: str = "") -> dict[str, str]:
    """The environment of SLURM task ``rank`` of ``tasks``, with an ``scontrol`` that appends its arguments to
    ``tmp_path/scontrol_calls`` and succeeds, or with ``scontrol_says``, fails saying it."""
    scontrol = tmp_path / "bin/scontrol"
    if not scontrol.exists():
        scontrol.parent.mkdir(parents=True)
        failure = f"echo '{scontrol_says}' >&2; exit 1\n" if scontrol_says else ""
        scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol_calls\n{failure}')
        scontrol.chmod(0o755)
    task = {**SLURM_TASK, "SLURM_NTASKS": str(tasks), "SLURM_NTASKS_PER_NODE": str(tasks), "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank), "PATH": f"{scontrol.parent}:{os.environ['PATH']}"}
    return {**_env(), **task, **({"MASTER_PORT": str(port)} if port else {})}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ti", "classify"])
def test_slurms_requeue_signal_saves_at_a_step_end_requeues_and_the_requeued_job_resumes_exactly(tmp_path, name):
    args, folder, artifact = STAGES[name]
    if name == "classify":  # epochs to spare after the first checkpoint: a signal after the last step goes unanswered
        args = [*args, "stage.max_epochs=10"]
    stage = tmp_path / "requeued/artifacts" / folder
    command = _command(tmp_path / "requeued", *args, "stage.keep_checkpoints=true")
    process = subprocess.Popen(command, cwd=REPO, env=_slurm_task(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not (stage / "checkpoints/last.ckpt").is_file():
        time.sleep(0.1)
    assert process.poll() is None, f"the run ended before its first checkpoint: {process.stderr.read()[-2000:]}"
    process.send_signal(signal.SIGUSR1)  # #SBATCH --signal=USR1@90, before the job's time runs out
    _, stderr = process.communicate(timeout=120)
    resumes = "its last finished epoch" if name == "classify" else "there"
    stopped = re.fullmatch(rf"error: stage={name} stopped at step (\d+) on SLURM's requeue signal; the requeued job "
                           f"resumes from {resumes}", stderr.strip().splitlines()[-1])
    assert process.returncode == 2 and stopped, stderr[-2000:]
    assert (tmp_path / "scontrol_calls").read_text() == "requeue 5151\n"
    saved = sorted(p.name for p in (stage / "checkpoints").glob("hpc_ckpt_*"))
    if name == "ti":  # the step it stopped at, saved whole at that step's end
        assert saved == ["hpc_ckpt_1.ckpt"]
        state = torch.load(stage / "checkpoints/hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
        assert state["global_step"] == int(stopped.group(1))
    else:  # a classifier's checkpoint resumes exactly only at an epoch's end: from its last.ckpt
        assert saved == []
    resumed = subprocess.run(command, cwd=REPO, env=_slurm_task(tmp_path), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {stage / 'checkpoints' / (saved or ['last.ckpt'])[0]}" in resumed.stdout + resumed.stderr
    straight = tmp_path / "straight"
    run(compose_config([f"paths.artifacts={straight}/artifacts", f"paths.logs={straight}/logs", *args]))
    assert (stage / artifact).read_bytes() == (straight / "artifacts" / folder / artifact).read_bytes()


def test_an_array_task_is_requeued_by_its_array_name_and_a_missing_scontrol_is_said(tmp_path, monkeypatch):
    from stablesdg.slurm_requeue import requeue_job

    for name, value in _slurm_task(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert requeue_job() == ("77_3", None)
    assert (tmp_path / "scontrol_calls").read_text() == "requeue 77_3\n"
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    job, failure = requeue_job()
    assert job == "77_3" and re.fullmatch(r"scontrol could not be run \(.*No such file or directory.*\)", failure)


def test_jobs_of_one_multirun_side_by_side_in_a_slurm_job_requeue_it_once(tmp_path, monkeypatch):
    from stablesdg import slurm_requeue
    from stablesdg.slurm_requeue import requeue_job

    for name, value in _slurm_task(tmp_path, scontrol_says="Requested operation is presently disabled").items():
        monkeypatch.setenv(name, value)
    sweep = tmp_path / "multiruns/0"
    monkeypatch.setattr(slurm_requeue, "multirun_job", lambda: (0, sweep))
    failed = ("5151", "scontrol requeue 5151 failed (Requested operation is presently disabled)")
    assert requeue_job() == failed and requeue_job() == failed, "each job tries while none has requeued it"
    (tmp_path / "bin/scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol_calls\n')
    assert [requeue_job() for _ in range(3)] == [("5151", None)] * 3
    assert (tmp_path / "scontrol_calls").read_text() == "requeue 5151\n" * 3, "two that failed, then one"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the requeued job runs the multirun again, and is signalled
    assert requeue_job() == ("5151", None)
    assert (tmp_path / "scontrol_calls").read_text() == "requeue 5151\n" * 4


@pytest.mark.slow
def test_slurms_requeue_signal_to_a_parallel_multirun_saves_each_job_and_requeues_once(tmp_path, session_run):
    stages = [tmp_path / f"artifacts/synthetic/{c}/default/ti" for c in ("Pa", "Sc")]
    process = session_run("stage=ti", "category=Pa,Sc", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                          "stage.max_steps=300", "stage.checkpoint_every=2", "stage.validation_every=0", "logger=none",
                          "dataset.synthetic.per_class=10", flags=("-m",), env=_slurm_task(tmp_path))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not all(
            (stage / "checkpoints/last.ckpt").is_file() for stage in stages):
        time.sleep(0.1)
    assert process.poll() is None, process.stdout.read()[-2000:]
    os.killpg(process.pid, signal.SIGUSR1)  # SLURM signals every process of the job step: the command and its pool
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in output, output[-3000:]
    stopped = [line for line in output.splitlines() if line.startswith("error: stage=")]
    assert len(stopped) == 3 and all(re.fullmatch(r"error: stage=ti stopped at step \d+ on SLURM's requeue signal; "
                                                  r"the requeued job resumes from there", line) for line in stopped), \
        output[-3000:]  # each job's line, then the command's, after the overrides of one job
    assert (tmp_path / "scontrol_calls").read_text() == "requeue 5151\n"
    assert all(sorted(p.name for p in (stage / "checkpoints").glob("hpc_ckpt_*")) == ["hpc_ckpt_1.ckpt"]
               for stage in stages)


@pytest.mark.slow
def test_slurms_requeue_signal_while_generating_requeues_the_job_which_completes_the_set(tmp_path):
    # outside a training loop nothing answered the signal, and it ended the process: no requeue, no line
    command = _command(tmp_path, "stage=generate", "category=Pa", "stage.adapter=base", "stage.num_images=24",
                       "stage.num_inference_steps=20", "logger=none")
    images = tmp_path / "artifacts/synthetic/Pa/default/generate/images"
    process = subprocess.Popen(command, cwd=REPO, env=_slurm_task(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not list(images.glob("*.png")):
        time.sleep(0.1)
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and stderr.strip().splitlines()[-1] == (
        "error: stage=generate stopped on SLURM's requeue signal; requeued job 5151, which resumes it"), stderr[-2000:]
    assert (tmp_path / "scontrol_calls").read_text() == "requeue 5151\n"
    made = len(list(images.glob("*.png")))
    assert 0 < made < 24
    resumed = subprocess.run(command, cwd=REPO, env=_slurm_task(tmp_path), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(list(images.glob("*.png"))) == 24


def test_a_requeue_signal_a_training_loop_ended_before_answering_stops_the_next_pipeline_step(tmp_path, monkeypatch):
    import lightning as L

    from stablesdg.errors import RaisedOnEveryRank
    from stablesdg.slurm_requeue import requeue_signal_answered, training_answers_requeue

    unset = signal.getsignal(signal.SIGUSR1)
    with requeue_signal_answered("pipeline"):  # outside SLURM: nothing answers it
        assert signal.getsignal(signal.SIGUSR1) is unset
    for name, value in _slurm_task(tmp_path).items():
        monkeypatch.setenv(name, value)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    with requeue_signal_answered("pipeline"):
        with requeue_signal_answered("ti"):
            with training_answers_requeue(trainer, "ti", save_state=True):
                os.kill(os.getpid(), signal.SIGUSR1)  # after the loop's last step: noted, never answered by it
        assert not (tmp_path / "scontrol_calls").exists()
        with pytest.raises(RaisedOnEveryRank, match="^stage=generate stopped on SLURM's requeue signal; requeued job "
                                                    "5151, which resumes it$"):
            with requeue_signal_answered("generate"):
                pytest.fail("the pipeline's next step must not start")
    assert (tmp_path / "scontrol_calls").read_text() == "requeue 5151\n"
    assert signal.getsignal(signal.SIGUSR1) is unset, "the handler the process had before"
    with requeue_signal_answered("ti"):
        pass  # nothing left over for a later run in this process


def test_a_requeue_stops_at_the_end_of_the_signalled_step_and_keeps_its_state_in_place_of_an_earlier_one(
        tmp_path, monkeypatch):
    import lightning as L
    from torch.utils.data import DataLoader

    from stablesdg.errors import RaisedOnEveryRank
    from stablesdg.slurm_requeue import requeue_signal_answered, training_answers_requeue

    folder = tmp_path / "checkpoints"
    folder.mkdir()

    class Signalled(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, index):
            if self.global_step == 1:
                (folder / "hpc_ckpt_1.ckpt").write_bytes(b"an earlier requeue's state")
            if self.global_step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)  # in the middle of step 3
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for name, value in _slurm_task(tmp_path).items():
        monkeypatch.setenv(name, value)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=10, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder)
    with pytest.raises(RaisedOnEveryRank, match="^stage=ti stopped at step 3 on SLURM's requeue signal; the requeued "
                                                "job resumes from there$"):
        with requeue_signal_answered("ti"), training_answers_requeue(trainer, "ti", save_state=True):
            trainer.fit(Signalled(), DataLoader(torch.ones(20, 2), batch_size=2))
    assert trainer.global_step == 3, "stopped once the signalled step was done"
    assert sorted(p.name for p in folder.iterdir()) == ["hpc_ckpt_2.ckpt"]
    assert torch.load(folder / "hpc_ckpt_2.ckpt", weights_only=True)["global_step"] == 3
    assert (tmp_path / "scontrol_calls").read_text() == "requeue 5151\n"


@pytest.mark.slow
def test_a_job_that_slurm_cannot_requeue_says_why_and_trains_on_to_its_artifact(tmp_path):
    args, folder, artifact = STAGES["ti"]
    stage = tmp_path / "artifacts" / folder
    env = _slurm_task(tmp_path, scontrol_says="scontrol: error: Requested operation is presently disabled")
    process = subprocess.Popen(_command(tmp_path, *args), cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not (stage / "checkpoints/last.ckpt").is_file():
        time.sleep(0.1)
    process.send_signal(signal.SIGUSR1)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-2000:]
    assert re.search(r"SLURM's requeue signal came at step \d+, and the job was not requeued: scontrol requeue 5151 "
                     r"failed \(scontrol: error: Requested operation is presently disabled\); training goes on until "
                     rf"the job ends \(the same command resumes from {stage}/checkpoints/hpc_ckpt_1.ckpt\)", output), \
        output[-2000:]
    assert json.loads((stage / "result.json").read_text())["metrics"]["steps"] == 12
    assert (stage / artifact).is_file()


@pytest.mark.slow
def test_slurms_requeue_signal_stops_every_ddp_task_at_one_step_end_while_one_renders_a_grid(tmp_path):
    port = meeting_port()
    # rank 0 renders a grid after every step, so the signal mostly lands while the other rank waits at the next
    # step: Lightning's handler, which saved from inside the signal handler, hung both there until SLURM's kill
    command = [*_command(tmp_path, *DDP_ON_CPUS, "stage.max_steps=6", "stage.checkpoint_every=2",
                         "stage.validation_every=1", "stage.validation_steps=10"), f"hydra.run.dir={tmp_path}/job"]
    stage = tmp_path / "artifacts/synthetic/Sc/default/ti"

    def start() -> list[subprocess.Popen]:
        return [subprocess.Popen(command, cwd=REPO, env=_slurm_task(tmp_path, rank, 2, port), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]

    tasks = start()
    deadline = time.time() + 300
    while time.time() < deadline and tasks[0].poll() is None and not (stage / "checkpoints/last.ckpt").is_file():
        time.sleep(0.1)
    for task in tasks:  # SLURM signals every task of the job
        task.send_signal(signal.SIGUSR1)
    outputs = [stdout for stdout, _ in outputs_of_all(tasks, timeout=120)]
    assert [task.returncode for task in tasks] == [2, 2], outputs[0][-3000:] + outputs[1][-3000:]
    said = [line for output in outputs for line in output.splitlines() if line.startswith("error: ")]
    assert len(said) == 1 and re.fullmatch(r"error: stage=ti stopped at step \d+ on SLURM's requeue signal; the "
                                           r"requeued job resumes from there", said[0]), outputs[0][-3000:]
    assert "max_epochs=1" not in outputs[0], "Lightning's one epoch of steps is not why it stopped"
    assert (tmp_path / "scontrol_calls").read_text() == "requeue 5151\n", "the first task requeues the job, once"
    assert sorted(p.name for p in (stage / "checkpoints").glob("hpc_ckpt_*")) == ["hpc_ckpt_1.ckpt"]
    resumed = start()
    outputs = [stdout for stdout, _ in outputs_of_all(resumed, timeout=300)]
    assert [task.returncode for task in resumed] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert f"resuming from {stage / 'checkpoints/hpc_ckpt_1.ckpt'}" in outputs[0]
    metrics = json.loads((stage / "result.json").read_text())["metrics"]
    assert metrics["steps"] == 6 and metrics["world_size"] == 2
    assert len((stage / "loss.csv").read_text().splitlines()) == 1 + 6, "every step's loss, those before the stop too"


def test_a_run_resumes_from_the_checkpoint_furthest_into_training_whatever_its_files_times(make_cfg, tmp_path, caplog):
    from stablesdg.training import CHECKPOINT_DIR, resume_checkpoint

    cfg = make_cfg("stage=ti", "category=Pa")
    out = tmp_path / "ti"
    assert resume_checkpoint(out, cfg) is None  # claims the folder for this config
    folder = out / CHECKPOINT_DIR
    # the file times of a copy (cp -r), which say nothing of the steps: the checkpoint of step 30 is the oldest file
    for age, (name, step) in enumerate([("last.ckpt", 20), ("hpc_ckpt_1.ckpt", 10), ("hpc_ckpt_2.ckpt", 30)]):
        torch.save({"global_step": step, "state_dict": {"w": torch.zeros(2)}}, folder / name)
        os.utime(folder / name, ns=(10**18 - age * 10**9, 10**18 - age * 10**9))
    assert resume_checkpoint(out, cfg) == folder / "hpc_ckpt_2.ckpt", "saved on SLURM's signal at step 30"
    (folder / "hpc_ckpt_2.ckpt").write_bytes((folder / "hpc_ckpt_2.ckpt").read_bytes()[:300])  # cut short
    with caplog.at_level(logging.INFO, logger="stablesdg.training"):
        assert resume_checkpoint(out, cfg) == folder / "last.ckpt", "the furthest that can be read"
    assert (f"{folder / 'hpc_ckpt_2.ckpt'} cannot be read (File is not a zip file), so the run cannot resume from it: "
            "discarding it") in caplog.messages
    assert not (folder / "hpc_ckpt_2.ckpt").exists()
    assert sorted(path.name for path in folder.iterdir() if path.suffix == ".ckpt") == ["hpc_ckpt_1.ckpt", "last.ckpt"]
