"""The entry point as users run it: real subprocesses of ``python -m stablesdg.train``."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, compose_config, run_cli


def train(tmp_path: Path, *overrides: str, env: dict | None = None, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "stablesdg.train", *flags, f"paths.artifacts={tmp_path}/artifacts",
               f"paths.logs={tmp_path}/logs", *overrides]
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environment.update({"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **(env or {})})
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)


def test_default_config_runs_offline_and_writes_result(tmp_path):
    done = train(tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "artifacts" / "synthetic" / "all" / "default" / "inspect"
    record = json.loads((out / "result.json").read_text())
    assert record["metrics"]["dataset"]["split_sizes"] == {"train": 128, "val": 16, "test": 16}
    assert record["metrics"]["model"]["name"] == "tiny"
    with Image.open(out / "samples.png") as grid:  # 8 images of each of the 4 classes, 64 px, after the labels
        assert grid.height == 4 * 66 + 2 and grid.width > 8 * 66 + 2
    assert "Sc (scratches)" in done.stdout and f"result: {tmp_path}/artifacts" in done.stdout
    assert list((tmp_path / "logs" / "wandb").glob("offline-run-*")), "the default W&B logger runs offline"


def test_a_training_run_prints_each_lightning_message_once_and_no_notice_about_frozen_modules(tmp_path):
    # the grid at the end with 2 denoising steps, not 25: its pipeline's notices count too
    done = train(tmp_path, "stage=ti", "category=Pa", "stage.max_steps=3", "logger=none", "dataset.synthetic.per_class=10",
                 "stage.validation_steps=2")
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    for message in ("GPU available: False, used: False", "`Trainer.fit` stopped: `max_steps=3` reached."):
        assert output.count(message) == 1, output  # through Hydra's handlers, so also in the run's log file
    assert "in eval mode" not in output and "Tip:" not in output
    # in a file, progress is a log line per tenth of the run; Rich would leave its bar's last frame, wrapped
    assert "stage=ti: step 3/3 (100%)" in done.stdout and "\N{BOX DRAWINGS HEAVY HORIZONTAL}" not in output
    # and tqdm's bars are a logged line, not a line of carriage returns
    assert "VAE latents of the Pa images and their mirror images, cached for later runs: 100%|##########| 16/16 [" in done.stdout
    assert "\r" not in output
    assert "v_num" not in output


def test_a_store_and_logs_named_from_home_are_made_under_home(tmp_path, monkeypatch):
    # '"paths.artifacts=~/store"' quoted, or ~/store in a config file: no shell expands the ~
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    done = run_cli(tmp_path, "stage=inspect", 'paths.artifacts="~/store"', 'paths.logs="~/logs"', "logger=csv")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"result: {tmp_path}/home/store/synthetic/all/default/inspect/result.json" in done.stdout
    assert (tmp_path / "home/store/synthetic/splits").is_dir() and (tmp_path / "home/logs/runs").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["home"], "no folder named ~ where the command ran"


def test_inspect_on_neu_prints_the_split_and_writes_result(tmp_path, neu_path):
    done = train(tmp_path, "stage=inspect", "dataset=neu", f"dataset.root={neu_path}", "category=patches", "logger=csv")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "artifacts/neu/Pa/default/inspect/result.json").read_text())
    assert record["category"] == "Pa" and record["config"]["dataset"]["root"] == str(neu_path)
    assert record["metrics"]["dataset"]["split_sizes"] == {"train": 1440, "val": 180, "test": 180}
    assert "  Pa (patches)                 240         30         30" in done.stdout
    assert "\nimages delivered as 1 × 200 × 200 (grayscale)\n" in done.stdout  # NEU's RGB-saved files are grey
    assert record["metrics"]["dataset"]["image_shape"] == [1, 200, 200]
    assert record["metrics"]["dataset"]["colour_example"] is None
    assert (tmp_path / "artifacts/neu/splits/split-seed0-0.8-0.1-0.1.json").is_file()
    assert list((tmp_path / "logs" / "csv").rglob("metrics.csv"))


def test_inspect_says_which_splits_the_fractions_leave_empty_and_writes_no_grid_without_training_images(tmp_path):
    done = train(tmp_path, "logger=none", "stage.build_model=false", "dataset.split.fractions=[0,0.5,0.5]")
    assert done.returncode == 0, done.stderr
    assert "  the train split is empty (dataset.split.fractions): stage=classify needs val and test images, " \
           "adaptation train images; give each a share, e.g. dataset.split.fractions=[0.8,0.1,0.1]\n" in done.stdout
    assert "no training images, so no sample grid" in done.stdout
    out = tmp_path / "artifacts" / "synthetic" / "all" / "default" / "inspect"
    assert json.loads((out / "result.json").read_text())["metrics"]["dataset"]["split_sizes"] == \
        {"train": 0, "val": 80, "test": 80}
    assert not (out / "samples.png").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["category=Xy"], "error: unknown category 'Xy'; valid categories: Cr (crazing), Pa (patches), PS (pitted_surface), Sc (scratches)"),
        (["dataset=neu", "dataset.root=/no/such/NEU"], "error: dataset root '/no/such/NEU' does not exist or is not a folder; set dataset.root=<folder>"),
        (["model=sd15", "model.path=null"], "error: model=sd15 needs weights: set model.path to a local diffusers folder"),
        (["stage=classify", "stage.preload=no"], "error: stage.preload=no: stage.preload is a switch, set it to true or false"),
        (["stage=ti", "stage.lr=abc"], "error: stage.lr=abc: stage.lr is a number, got 'abc'"),
        (["stage=generate", "category=Sc", "stage.guidance_scale=abc"],  # a number whose default is null
         "error: stage.guidance_scale=abc: stage.guidance_scale is a number, got 'abc'"),
        (["dataset=folder"], "error: dataset.root has no value (??? in its config); set it: dataset.root=<folder>"),
        (["stage=classify", "stage.mode=bogus"],  # before it looks for a generated set that mode would need
         "error: stage.mode must be one of ('none', 'substitute', 'expand'), got 'bogus'"),
        (["seed=-1", "stage.build_model=false"], "error: seed=-1: seed must be an integer from 0 to 4294967295, got -1"),
        (["seed=1.5"], "error: seed=1.5: seed must be an integer from 0 to 4294967295, got 1.5"),  # Hydra: 5 lines, exit 1
        (["logger=wandb", "logger.mode=Offline"],  # wandb refused it at the first logged step, with a stack trace
         "error: logger.mode (WANDB_MODE gives its default) must be online, offline or disabled (W&B's modes), "
         "got 'Offline'"),
        (["logger=wandb", "logger.project=[1]", "stage.build_model=false"],  # pydantic's trace from wandb.init
         "error: W&B refused a logger setting: project: Input should be a valid string, got [1]"),
        (["stage=classify", "+trainer.accumulate_grad_batches=0"],  # Lightning divides by it mid-epoch
         "error: trainer.accumulate_grad_batches must be a positive integer, got 0"),
        (["stage=ti", "category=Pa", "+trainer.fast_dev_run=true"],  # it stopped at step 1: "run it again to resume"
         "error: trainer.fast_dev_run=true: Lightning's quick check runs a few batches, saves no checkpoint and logs "
         "nothing, so no stage could finish under it; drop it, and set stage.max_steps=2 (ti, lora, full, dcgan, ddpm) "
         "or stage.max_epochs=1 (classify) for a quick run"),
        (["stage=ddpm", "category=Pa", "+trainer.limit_train_batches=1"],  # an integer: one batch, not all of them
         "error: stage=ddpm draws a batch of its own for each of its stage.max_steps steps, and "
         "trainer.limit_train_batches=1 would stop it short of them: drop it, and set stage.max_steps for a shorter run"),
        (["stage=classify", "+trainer.limit_val_batches=0"],  # Lightning: no best checkpoint to test, a stack trace
         "error: trainer.limit_val_batches=0: stage=classify validates every epoch to keep its best one, which this "
         "leaves it none of; drop it"),
        (["stage=classify", "+trainer.limit_test_batches=0.0"],  # an IndexError after training
         "error: trainer.limit_test_batches=0.0: stage=classify reports its accuracy on the test images, which this "
         "leaves it none of; drop it"),
        (["stage=classify", "stage.max_epochs=3", "+trainer.check_val_every_n_epoch=5"],
         "error: trainer.check_val_every_n_epoch=5 would validate none of stage.max_epochs=3 epochs, and "
         "stage=classify keeps its best epoch on validation; lower it, or raise stage.max_epochs"),
        (["stage=classify", "+trainer.gradient_clip_val=nan"],  # Lightning's stack trace at the first step
         "error: trainer.gradient_clip_val must be a finite number >= 0 (0 or null: no clipping), got nan"),
        (["stage=ti", "category=Pa", "trainer.precision=16-mixed"],  # Lightning: bf16-mixed instead, in its own words
         "error: trainer.precision=16-mixed: the CPU has no float16 mixed precision, and Lightning would train in "
         "bf16-mixed instead; set trainer.precision=bf16-mixed (or 32-true)"),
        (["stage.grid_per_class=0", "stage.build_model=false"], "error: stage.grid_per_class must be a positive integer, got 0"),
        (["paths.artifacts=/proc/stablesdg", "stage.build_model=false"],
         "error: cannot write or read /proc/stablesdg: No such file or directory (check paths.artifacts"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, overrides, message):
    done = train(tmp_path, "logger=none", *overrides)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(message), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "artifacts").rglob("result.json"))


@pytest.mark.parametrize("flags", [(), ("-m",)])
def test_a_list_of_overrides_left_unquoted_is_one_line_with_the_word_that_reads_it(tmp_path, flags):
    done = train(tmp_path, "stage=pipeline", "pipeline.ti=[stage.max_steps=500, stage.lr=1e-3]", flags=flags)
    assert done.returncode == 2  # Hydra: three lines, a link and exit code 1
    assert done.stderr.strip() == ("error: pipeline.ti=[stage.max_steps=500, stage.lr=1e-3]: each override in a list "
                                   "is quoted, and the whole word too, for the shell: "
                                   "'pipeline.ti=[\"stage.max_steps=500\",\"stage.lr=1e-3\"]'")
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("flags", [(), ("-m",)])
def test_a_log_folder_that_cannot_be_made_is_one_line_before_the_job_starts(tmp_path, flags):
    (tmp_path / "a-file").write_text("not a folder")
    done = run_cli(tmp_path, "logger=none", f"paths.logs={tmp_path}/a-file", flags=flags)
    assert (done.returncode, done.stderr) == (2, f"error: paths.logs={tmp_path}/a-file is a file, not a folder\n")
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("key", ["paths.artifacts", "paths.logs"])
def test_a_store_or_log_folder_inside_the_dataset_folder_is_refused_before_anything_is_written_there(tmp_path, key):
    data = tmp_path / "data"
    for name in ("dent", "rust"):
        (data / name).mkdir(parents=True)
        for n in range(3):
            Image.new("L", (12, 12), 10 * n + len(name)).save(data / name / f"{n}.png")
    done = run_cli(tmp_path, "logger=none", "dataset=folder", f"dataset.root={data}", f"{key}={data}/out")
    assert (done.returncode, done.stderr) == (2, f"error: {key}={data}/out is inside dataset.root={data}: what is "
                                                 "written there would be read as part of the dataset (its images, or "
                                                 "another class); name a folder outside it\n")
    assert sorted(p.name for p in data.iterdir()) == ["dent", "rust"], "no run folder, no split, no sample grid"


def test_a_slurm_sweep_where_slurm_is_not_installed_is_one_line_before_any_job(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no srun (the in-process run needs no other command)
    done = run_cli(tmp_path, "+sweep=strength_guidance_slurm", "category=Pa", "hydra.launcher.partition=gpu",
                   flags=("-m", "--config-dir", str(REPO / "multirun_sweeps")))
    assert (done.returncode, done.stderr) == (2, (
        "error: hydra/launcher=submitit_slurm submits each job to SLURM, and SLURM's commands (srun) are not on PATH "
        "here: run the command on a login node of the cluster (after `module load slurm` where it needs one), or "
        "+sweep=strength_guidance runs the same jobs here\n"))
    assert not (tmp_path / "artifacts").exists() and not list((tmp_path / "logs").rglob(".submitit"))


def test_the_slurm_check_lets_a_sweep_go_where_srun_is_on_the_path(tmp_path, monkeypatch):
    from stablesdg.slurm_check import SlurmCheck

    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", str(srun.parent))
    cfg = compose_config(["hydra/launcher=submitit_slurm"], return_hydra=True)
    assert SlurmCheck().on_multirun_start(cfg) is None  # returns: submitit goes on to submit the jobs


@pytest.mark.parametrize("flags", [(), ("-m",)])
@pytest.mark.parametrize("key, value, shown", [("paths.logs", "", "''"), ("paths.logs", "null", "null"),
                                               ("paths.artifacts", "", "''")])
def test_an_empty_store_or_log_folder_is_refused_not_taken_as_the_current_folder_or_the_root(
        tmp_path, monkeypatch, flags, key, value, shown):
    # `paths.logs=$LOGS` with LOGS unset made Hydra's run folder /runs/<date>/..., at the filesystem's root;
    # an empty paths.artifacts made the store the current folder
    monkeypatch.chdir(tmp_path)
    done = run_cli(tmp_path, "logger=none", "stage.build_model=false", f"{key}={value}", flags=flags)
    assert done.returncode == 2
    assert done.stderr == f"error: {key}={shown} names no folder; set {key}=<folder> " \
                          "(an unset shell variable leaves it empty)\n", done.stderr
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob("samples.png"))


@pytest.mark.parametrize("key", ["paths.artifacts", "paths.logs"])
@pytest.mark.parametrize("name, reason", [("a_file", "is a file, not a folder"),
                                          ("a_file/store", "cannot be made: {file} is a file, not a folder")])
def test_a_store_or_log_folder_naming_a_file_is_refused_in_one_line(tmp_path, monkeypatch, key, name, reason):
    # a store that was a file said its TI artifact "does not exist yet; make it with: ..." (a command that failed too)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    done = run_cli(tmp_path, "logger=none", "stage.build_model=false", f"{key}={tmp_path / name}")
    assert (done.returncode, done.stderr) == (
        2, f"error: {key}={tmp_path / name} {reason.format(file=tmp_path / 'a_file')}\n")
    assert not (tmp_path / "artifacts").exists() and (tmp_path / "a_file").read_text() == ""
    assert not list(tmp_path.rglob("result.json"))


def test_a_folder_setting_under_a_folder_it_may_not_look_into_is_left_to_the_write(tmp_path, monkeypatch):
    from stablesdg.errors import file_in_the_way

    closed, real_exists = tmp_path / "closed", Path.exists

    def exists(path, *args, **kwargs):
        if path == closed / "store":  # stat() of a path in a folder without search permission: EACCES
            raise PermissionError(13, "Permission denied", str(path))
        return real_exists(path, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    assert file_in_the_way(closed / "store") is None
    (tmp_path / "a_file").write_text("")
    assert file_in_the_way(tmp_path / "a_file" / "store") == f"cannot be made: {tmp_path / 'a_file'} is a file, not a folder"


def test_an_empty_log_folder_is_refused_also_when_hydra_shows_full_errors(tmp_path, monkeypatch):
    # Hydra turns a callback's exception into a warning: raising the error let the run write /runs/<date>/...
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.chdir(tmp_path)
    done = run_cli(tmp_path, "logger=none", "stage.build_model=false", "paths.logs=")
    assert (done.returncode, done.stderr) == (2, "error: paths.logs='' names no folder; set paths.logs=<folder> "
                                                 "(an unset shell variable leaves it empty)\n")
    assert not list(tmp_path.rglob("result.json"))


@pytest.mark.parametrize("stage, lr", [("ti", "0"), ("lora", "-0.5"), ("classify", "0"), ("dcgan", "-1"), ("ddpm", "0.0"),
                                       ("ti", "nan"), ("classify", "inf")])
def test_a_learning_rate_that_is_not_a_finite_number_above_zero_is_refused_in_one_line_before_any_work(tmp_path, stage, lr):
    overrides = {"classify": ["category=null"], "lora": ["category=Sc", "stage.use_ti=false"]}.get(stage, ["category=Sc"])
    done = run_cli(tmp_path, f"stage={stage}", *overrides, f"stage.lr={lr}", "logger=none")
    assert done.returncode == 2 and done.stderr.strip() == f"error: stage.lr must be a positive finite number, got {lr}"
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("overrides, refusal", [
    (["stage=ti", "category=Sc", "trainer.precision=fp8"], "Precision 'fp8' is invalid. Allowed precision values: "),
    # generation takes its dtype from trainer.precision: a misspelt one meant float32 without a word
    (["stage=generate", "category=Sc", "stage.adapter=base", "trainer.precision=bf16-mxed"],
     "Precision 'bf16-mxed' is invalid."),
])
def test_a_trainer_setting_lightning_refuses_is_one_line_before_any_data_is_read(tmp_path, overrides, refusal):
    done = train(tmp_path, "logger=none", *overrides)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: Lightning refused a trainer setting: {refusal}"), done.stderr
    assert not (tmp_path / "artifacts").exists(), "nothing written: no split, no cached latents"


@pytest.mark.parametrize("overrides, refusal", [
    # Lightning's own TypeError named the key but not the argument meant
    (["logger=none", "stage=classify", "+trainer.max_step=5"],
     "error: trainer.max_step: lightning.Trainer takes no argument max_step (did you mean trainer.max_steps?)"),
    (["logger=csv", "stage=ti", "category=Sc", "+logger.flush_logs_every=5"],
     "error: logger.flush_logs_every: lightning.pytorch.loggers.CSVLogger takes no argument flush_logs_every "
     "(did you mean logger.flush_logs_every_n_steps?)"),
])
def test_a_trainer_or_logger_argument_added_with_plus_that_its_class_lacks_is_one_line_before_any_data_is_read(
        tmp_path, overrides, refusal):
    done = train(tmp_path, *overrides)
    assert (done.returncode, done.stderr.strip()) == (2, refusal)
    assert not (tmp_path / "artifacts").exists(), "nothing written: no split, no cached latents"


@pytest.mark.parametrize("overrides, refusal", [
    (["stage=ti", "category=Sc", "model=sd15", "model.path={tmp}/sd15"], "model.path={tmp}/sd15 does not exist; "),
    (["stage=generate", "category=Sc", "stage.adapter=base", "model=sd15", "model.path={tmp}/v1-5.ckpt"],
     "model.path={tmp}/v1-5.ckpt: only .safetensors checkpoints are loaded"),
    (["stage=ti", "category=Sc", "model=sd15", "model.path={tmp}/v1-5.safetensors", "model.variant=fp16"],
     "model.variant=fp16 picks among a diffusers folder's weight files; model.path={tmp}/v1-5.safetensors is a "
     "single-file checkpoint: leave model.variant null"),
    (["stage=classify", "classifier=resnet", "classifier.weights={tmp}/resnet18.pth"],
     "classifier.weights={tmp}/resnet18.pth does not exist (ImageNet weights are never downloaded"),
    # after half a minute of drawing SD1.5-sized weights that could not be saved
    (["stage=ti", "category=Sc", "model=sd15_random", "model.weights_cache={tmp}/v1-5.ckpt/cache"],
     "model.weights_cache: cannot write {tmp}/v1-5.ckpt/cache (Not a directory)"),
    (["stage=external", "category=Sc", "stage.source={tmp}/stylegan3"],
     "stage.source={tmp}/stylegan3 is not a folder (of one sub-folder per class, or of the category's images)"),
    # stage.score=true: after the whole set was generated
    (["stage=generate", "category=Sc", "stage.adapter=base", "stage.score=true", "stage.features=inception",
      "stage.inception_weights={tmp}/inception.pth"], "the FID InceptionV3 weights are not at {tmp}/inception.pth; "),
    (["stage=inspect", "dataset=neu", "dataset.root={tmp}/NEU-DET"],
     "dataset root '{tmp}/NEU-DET' does not exist or is not a folder; set dataset.root=<folder>"),
    # a folder where the setting names a file
    (["stage=classify", "classifier=resnet", "classifier.weights={tmp}/weights"],
     "classifier.weights={tmp}/weights is a folder, not a file (ImageNet weights are never downloaded"),
    (["stage=generate", "category=Sc", "stage.adapter=base", "stage.tuned={tmp}/weights"],
     "stage.tuned={tmp}/weights is a folder, not a file (the sweep aggregation writes it)"),
    (["stage=generate", "category=Sc", "stage.adapter=base", "stage.score=true", "stage.features=inception",
      "stage.inception_weights={tmp}/weights"],
     "the FID InceptionV3 weights are not at {tmp}/weights (a folder: name the file in it); "),
])
def test_a_file_or_folder_a_setting_names_that_is_not_there_is_one_line_before_any_data_is_read(
        tmp_path, overrides, refusal):
    (tmp_path / "v1-5.ckpt").write_bytes(b"a pickle")
    (tmp_path / "v1-5.safetensors").write_bytes(b"")
    (tmp_path / "weights").mkdir()
    done = run_cli(tmp_path, "logger=none", *(o.format(tmp=tmp_path) for o in overrides))
    assert done.returncode == 2 and done.stderr.startswith(f"error: {refusal.format(tmp=tmp_path)}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "artifacts").exists(), "nothing written: no split, no preloaded images"


def test_wandb_online_without_an_api_key_or_without_the_network_is_one_line(tmp_path):
    nobody = {"HOME": str(tmp_path / "home"), "WANDB_CONFIG_DIR": str(tmp_path / "home"), "WANDB_API_KEY": ""}
    done = train(tmp_path, "logger=wandb", "logger.mode=online", "stage=ti", "category=Pa", env=nobody)
    assert done.returncode == 2 and done.stderr == (
        "error: logger.mode=online needs a W&B API key and none is set: set WANDB_API_KEY or run `wandb login`, or log "
        "offline (logger.mode=offline) and upload later with `wandb sync`\n"), done.stderr[-3000:]
    assert not (tmp_path / "artifacts").exists(), "refused before any work (wandb stopped at the first logged step)"

    unreachable = {**nobody, "WANDB_API_KEY": "a" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_INIT_TIMEOUT": "5"}
    done = train(tmp_path, "logger=wandb", "logger.mode=online", "stage.build_model=false", env=unreachable)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert "Loaded credentials" not in done.stderr, "the key check says nothing"
    assert len(said) == 1 and said[0].startswith("error: W&B: ") and said[0].endswith(
        "; log offline (logger.mode=offline; the report: WANDB_MODE=offline) and upload later with `wandb sync`")


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])  # ddp ran bf16 on the CPUs: 184 s for 2 TI steps, not 30
def test_a_gpu_trainer_with_no_visible_gpu_is_one_line_before_any_work(tmp_path, trainer):
    done = train(tmp_path, "logger=none", f"trainer={trainer}", "stage=ti", "category=Sc",
                 env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr == ("error: trainer.accelerator=gpu needs a CUDA GPU and this machine shows none; use trainer=cpu "
                           "(or trainer.accelerator=cpu trainer.precision=32-true)\n")
    assert not (tmp_path / "artifacts").exists(), "nothing written: no split, no cached latents"


# one setting each stage's own checks refuse (stage.checks in its config)
REFUSED_BY_EACH_STAGE = {
    "inspect": (["stage.grid_per_class=0"], "error: stage.grid_per_class must be a positive integer, got 0"),
    "ti": (["category=Pa", "stage.lr=-1"], "error: stage.lr must be a positive finite number, got -1"),
    "lora": (["category=Pa", "stage.rank=0"], "error: stage.rank must be a positive integer, got 0"),
    "full": (["category=Pa", "stage.prompt=plain"], "error: stage.prompt='plain' has no {} for the placeholder"),
    "generate": (["category=Pa", "stage.strength=2"], "error: stage.strength must be in (0, 1], got 2.0"),
    "fid": (["category=Pa", "stage.features=vgg"], "error: unknown stage.features='vgg'; choose from inception, "),
    "classify": (["classifier.arch=lenet"], "error: unknown classifier 'lenet'; choose from alexnet, vgg, "),
    "dcgan": (["category=Pa", "stage.resolution=32"], "error: stage.resolution must be 64 or 128 for DCGAN, got 32"),
    "ddpm": (["category=Pa", "stage.widths=[32,48]"], "error: stage.widths=[32, 48]: each must be a multiple of 32"),
    "sample": (["category=Pa", "stage.generator=gan"], "error: stage.generator must be one of ('dcgan', 'ddpm', 'ddim')"),
    "external": (["category=Pa", "stage.source=/x", "stage.batch_size=0"],
                 "error: stage.batch_size must be a positive integer, got 0"),
    "export": (["stage.out=/x", "stage.alpha=0"], "error: stage.alpha must be null (every training image) or in (0, 1], "
                                                  "got 0"),
    "pipeline": (["pipeline.steps=[]"], "error: pipeline.steps is empty, so nothing would run"),
}


def test_every_stage_names_a_setting_its_checks_refuse_in_the_probe_below():
    assert sorted(REFUSED_BY_EACH_STAGE) == sorted(p.stem for p in (REPO / "conf" / "stage").glob("*.yaml"))


@pytest.mark.parametrize("overrides, message", [
    (["category=Xy"], "error: unknown category 'Xy'"),
    (["dataset=folder"], "error: dataset.root has no value (??? in its config); set it: dataset.root=<folder>"),
    (["stage=external", "category=Pa"], "error: stage.source has no value (??? in its config); set it: stage.source=<folder>"),
    (["stage=ti"], "error: stage=ti adapts one category: add category=<Cr, Pa, PS, Sc>"),
    (["stage=classify", "category=Pa"], "error: stage=classify trains on every class of the dataset; drop category=Pa"),
    (["stage=ti", "category=Pa", "logger=wandb", "logger.mode=Offline"], "error: logger.mode (WANDB_MODE gives its"),
    (["stage=ti", "category=Pa", "+trainer.accumulate_grad_batches=2"],
     "error: stage=ti trains on one batch per optimiser step and does not accumulate gradients"),
    (["stage=classify", "+trainer.gradient_clip_val=nan"], "error: trainer.gradient_clip_val must be a finite number"),
    # the stage passes its own: Lightning would have trained stage.max_epochs epochs without a word
    (["stage=classify", "+trainer.max_epochs=1"], "error: trainer.max_epochs is set by each stage from its own "
     "settings, so trainer.max_epochs=1 would do nothing: drop it; set stage.max_epochs (classify) or stage.max_steps"),
    (["stage=ti", "category=Pa", "+trainer.logger=false"], "error: trainer.logger is set by each stage from its own "
     "settings, so trainer.logger=False would do nothing: drop it; choose logger=wandb, logger=csv or logger=none"),
    # its SLURM requeue checkpoints went where any later run under SLURM restored them, whatever it trained
    (["stage=ti", "category=Pa", "+trainer.default_root_dir=/scratch/lightning"], "error: trainer.default_root_dir is "
     "set by each stage from its own settings, so trainer.default_root_dir=/scratch/lightning would do nothing: drop "
     "it; each training stage keeps Lightning's own files (a SLURM requeue's hpc_ckpt_<n>.ckpt) in its checkpoints "
     "folder, where only a rerun of the same stage and settings resumes from them"),
    (["stage=lora", "category=Pa", "model.resolution=60"], "error: model.resolution must be a positive multiple of 8 "),
    # what Hydra's own error for `stage.max_step=2` suggests: nothing reads it, and 30,000 steps would have run
    (["stage=ddpm", "category=Pa", "+stage.max_step=2"], "error: +stage.max_step=2: stage=ddpm has no setting "
     "stage.max_step, so nothing would read it (did you mean stage.max_steps?)"),
    # a + on what the config has: Hydra's own three to five lines
    (["stage=ti", "category=Pa", "+seed=3"], "error: +seed=3: the config has seed already, and + adds only what it "
     "lacks: write seed=3"),
    (["+stage=ti", "category=Pa"], "error: +stage=ti: the config has stage already, and + adds only what it lacks: "
     "write stage=ti"),
    (["stage=ti", "category=Pa", "++model=tiny"], "error: ++model=tiny: ++ sets or adds a setting, not a config group: "
     "write model=tiny"),
    # a group the run reads, deleted: a stack trace before
    (["stage=ti", "category=Pa", "~model"], "error: ~model: the run reads model, a config group, which cannot be "
     "deleted; choose one instead: model=<sd15, sd15_random, tiny>"),
    # misspelt keys: Hydra's own seven lines would advise the + above
    (["stage=ddpm", "category=Pa", "stage.max_step=2"],
     "error: stage.max_step=2: stage=ddpm has no setting stage.max_step (did you mean stage.max_steps?)"),
    (["stage=ti", "category=Pa", "trainer.max_steps=5"], "error: trainer.max_steps is set by each stage from its own "
     "settings, so trainer.max_steps=5 would do nothing: drop it; set stage.max_steps (ti, lora, full, dcgan, ddpm)"),
    (["stag=ti"], "error: stag=ti: there is no setting or config group stag (did you mean stage?)"),
    # a root without dataset=neu: the default synthetic set would have trained on procedural textures
    (["stage=ti", "category=Pa", "dataset.root=/data/NEU-DET"], "error: dataset.root=/data/NEU-DET would not be read: "
     "dataset=synthetic makes its images (dataset.synthetic) and reads no folder; to read /data/NEU-DET, choose its "
     "dataset (dataset=neu, dataset=ccbsd or dataset=folder), or set dataset.root=null"),
    (["generation.categories.Pa.strength=0.4"], "error: generation.categories.Pa.strength=0.4: generation.categories "
     "holds keys of your own, added with +: +generation.categories.Pa.strength=0.4"),
    (["dataset=nue"], "error: dataset=nue: there is no dataset 'nue'; choose from ccbsd, folder, neu, synthetic "
     "(did you mean dataset=neu?)"),
    (["+experiment=table_4_grid"], "error: +experiment=table_4_grid: there is no experiment 'table_4_grid'; choose "
     "from fig6_lora_rank, fig9_substitution, neu_setup, quickstart, table2_ablation, table3_prompts, table4_grid, "
     "table5_fid, table6_accuracy, table7_fid_ccbsd, table8_accuracy_ccbsd (did you mean +experiment=table4_grid?)"),
    (["stage=generate", "category=Pa", "model.compile=fast"], "error: model.compile='fast' is not one of true, false, "),
    # a finished stage it reads, missing: the command that makes it
    (["stage=generate", "category=patches"], "error: stage.adapter=lora needs the lora artifact of synthetic/Pa/default, "
     "which does not exist yet"),
    (["stage=lora", "category=Pa", "variant=v2"], "error: stage=lora (or set stage.use_ti=false) needs the ti artifact of "
     "synthetic/Pa/v2, which does not exist yet"),
    (["stage=sample", "category=Pa", "stage.generator=ddim"], "error: stage=sample stage.generator=ddim needs the ddpm "
     "artifact of synthetic/Pa/default, which does not exist yet"),
    (["stage=fid", "category=Pa"], "error: stage.generated='default' is neither a folder nor a generated set in "),
    *[(["stage=fid", "category=Pa", f"stage.generated={value}"],  # it named `variant` (''), or looked for 'None'
       f"error: stage.generated={shown} names no generated set; set it to the variant name of one (stage=generate "
       "variant=<name> makes it) or to a folder") for value, shown in (("", "''"), ("null", "null"))],
    (["stage=classify", "stage.mode=expand", "stage.generated=v2"],
     "error: stage.generated='v2' is neither a folder nor a generated set in "),
    # a setting deleted that the run reads: a stack trace, or Hydra's three lines, before
    (["stage=generate", "category=Pa", "~stage.strength"], "error: ~stage.strength: the run reads stage.strength, which "
     "cannot be deleted; set it instead: stage.strength=<value>"),
    *[([f"stage={stage}", *overrides], message) for stage, (overrides, message) in REFUSED_BY_EACH_STAGE.items()],
])
def test_a_bad_setting_or_category_or_one_left_unset_is_reported_before_torch_and_lightning_load(tmp_path, overrides, message):
    probe = ("import runpy, sys\n"
             f"sys.argv = ['stablesdg.train', *{overrides!r}, 'paths.artifacts={tmp_path}/artifacts', "
             f"'paths.logs={tmp_path}/logs']\n"
             "try:\n    runpy.run_module('stablesdg.train', run_name='__main__')\n"
             "except SystemExit as stop:\n    print(stop.code, 'torch' in sys.modules, 'lightning' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False", "False"], done.stderr
    assert done.stderr.strip().startswith(message)


@pytest.mark.parametrize("entry, overrides, said", [
    ("command line", ["stage.strength=1.5"], "error: stage.strength must be in (0, 1], got 1.5"),
    # a multirun's job as Hydra's sweeper writes it: model.channels_last=False
    ("command line", ["-m", "seed=0,1", "model.channels_last=false", "stage.strength=1.5"],
     "error: stage.strength must be in (0, 1], got 1.5"),
    ("main()", ["stage.strength=1.5"], "error: stage.strength must be in (0, 1], got 1.5"),
    ("main()", ["+stage.strenght=0.5"], "error: +stage.strenght=0.5: stage=generate has no setting stage.strenght, so "
                                        "nothing would read it (did you mean stage.strength?)"),
])
def test_a_command_line_checked_before_hydra_composes_it_is_not_checked_again_in_its_run(tmp_path, entry, overrides,
                                                                                         said):
    # each check lists the config groups and composes the config, half a second a command; main() called from Python
    # (as a launcher's process calls it) has had no check before, and makes its own
    run = ("runpy.run_module('stablesdg.train', run_name='__main__')" if entry == "command line" else
           "import stablesdg.train; stablesdg.train.main()")
    flags, overrides = [word for word in overrides if word == "-m"], [word for word in overrides if word != "-m"]
    probe = ("import runpy, sys, stablesdg.schema as schema\n"
             "listed = []\n"
             "listing = schema.config_groups\n"
             "schema.config_groups = lambda: listed.append(1) or listing()\n"
             f"sys.argv = ['stablesdg.train', *{flags!r}, 'stage=generate', 'category=Pa', *{overrides!r}, "
             f"'paths.artifacts={tmp_path}/artifacts', 'paths.logs={tmp_path}/logs']\n"
             f"try:\n    {run}\n"
             "except SystemExit as stop:\n    print(stop.code, len(listed))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1].split() == ["2", "1"], done.stderr  # after a multirun's list of its jobs
    assert done.stderr.strip() == said


def test_a_hub_id_the_hub_cannot_give_is_one_line_before_torch_loads_not_after_minutes_of_retries(tmp_path):
    hub_id = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    probe = ("import runpy, sys, huggingface_hub\n"
             "def no_network(repo_id, *args, **kwargs):\n"
             "    raise OSError('[Errno -2] Name or service not known')\n"
             "huggingface_hub.model_info = no_network\n"
             f"sys.argv = ['stablesdg.train', 'stage=ti', 'category=Pa', 'model=sd15', 'model.path={hub_id}', "
             f"'paths.artifacts={tmp_path}/artifacts', 'paths.logs={tmp_path}/logs']\n"
             "try:\n    runpy.run_module('stablesdg.train', run_name='__main__')\n"
             "except SystemExit as stop:\n    print(stop.code, 'torch' in sys.modules)\n")
    online = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "HYDRA_FULL_ERROR")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, env=online)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert done.stderr.strip().startswith(f"error: model.path={hub_id} (no folder {REPO / hub_id}, so a hub id): cannot "
                                          "reach the Hugging Face hub ([Errno -2] "
                                          f"Name or service not known); download the model where there is a network "
                                          f"(hf download {hub_id}) and set HF_HUB_OFFLINE=1")
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("flags, status", [([], 2), (["--help"], 0)])
def test_the_package_run_as_a_command_names_the_two_commands_each_of_which_runs(flags, status):
    done = subprocess.run([sys.executable, "-m", "stablesdg", *flags], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    said, other = (done.stdout, done.stderr) if status == 0 else (done.stderr, done.stdout)
    assert done.returncode == status and other == ""
    named = re.findall(r"python -m (stablesdg\.\w+)", said)
    assert named == ["stablesdg.train", "stablesdg.report"]
    for module in named:  # each is a command that answers --help
        assert subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                              timeout=120).returncode == 0


@pytest.mark.parametrize("command", [["stablesdg"], ["stablesdg.train"], ["stablesdg.train", "stage=ti"],
                                     ["stablesdg.report"]])
def test_version_names_stablesdg_and_the_libraries_that_shape_its_results(command):
    # Hydra's own --version would print "Hydra 1.3.x" alone
    from importlib import metadata

    done = subprocess.run([sys.executable, "-m", command[0], "--version", *command[1:]], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0] == f"stablesdg {metadata.version('stablesdg')}"
    for name in ("torch", "diffusers", "transformers", "peft", "lightning", "hydra-core"):
        assert f"  {name} {metadata.version(name)}" in lines, name
    assert f"  python {sys.version.split()[0]}" in lines


def test_an_unknown_stage_and_help_list_only_the_options_a_user_can_choose(tmp_path):
    done = train(tmp_path, "stage=tl")
    assert done.returncode == 2 and done.stderr.startswith("error: stage=tl: there is no stage 'tl'; choose from ")
    assert len(done.stderr.splitlines()) == 1, done.stderr  # Hydra's own message: a dozen lines and its search path
    listed = done.stderr.split("choose from ")[1].strip().split(", ")
    assert listed == sorted(p.stem for p in (REPO / "conf" / "stage").glob("*.yaml"))
    assert {"ti", "lora", "generate", "fid", "classify"} <= set(listed) and not any(s.startswith("_") for s in listed)
    help_text = train(tmp_path, flags=("--help",)).stdout
    groups = help_text.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert "stage: classify, dcgan, ddpm, export, external, fid, full, generate, inspect, lora, pipeline, sample, ti" in groups
    assert "_" not in "".join(line.split(":")[0] for line in groups.splitlines())
    assert "Usage: python -m stablesdg.train stage=<stage> dataset=<dataset> category=<abbr> model=<model>" in help_text
    described = help_text.split("== Stages (stage=) ==")[1].split("== Configuration groups ==")[0].strip().splitlines()
    assert sorted(line.split()[0] for line in described) == listed  # each stage once, with a description
    assert all(len(line.split()) > 3 for line in described)


def test_full_error_shows_the_trace(tmp_path):
    done = train(tmp_path, "logger=none", "category=Xy", env={"HYDRA_FULL_ERROR": "1"})
    assert done.returncode != 0 and "Traceback" in done.stderr and "UserError" in done.stderr


@pytest.mark.parametrize("overrides, flags, refusal", [
    # Hydra's own seven lines, with the advice to add the key with +, which nothing would read
    (["stage.build_model=false", "stage.grid_per_clas=1,2"], ("-m",),
     "stage.grid_per_clas=1: stage=inspect has no setting stage.grid_per_clas (did you mean stage.grid_per_class?)"),
    (["stage.build_model=false", "stage.grid_per_class=1,abc"], ("-m",),  # the second job's value
     "stage.grid_per_class=abc: stage.grid_per_class is a number, got 'abc'"),
    (["+sweep=sedes"], ("-m", "--config-dir", "multirun_sweeps"), "+sweep=sedes: there is no sweep 'sedes'; choose from "
     "seeds, strength_guidance, strength_guidance_optuna, strength_guidance_slurm, table1_search (did you mean "
     "+sweep=seeds?)"),
    (["+sweep=seeds", "stage.build_modle=false"], ("-m", "--config-dir=multirun_sweeps"),
     "stage.build_modle=false: stage=inspect has no setting stage.build_modle (did you mean stage.build_model?)"),
    # Hydra's own keys: a SLURM partition misspelt
    (["hydra/launcher=submitit_slurm", "hydra.launcher.partiton=gpu", "seed=0,1"], ("-m",),
     "hydra.launcher.partiton=gpu: hydra.launcher (hydra/launcher=submitit_slurm) has no setting partiton (did you "
     "mean hydra.launcher.partition?)"),
    (["hydra.launcher.n_jobs=2", "seed=0,1"], ("-m",),  # the basic launcher's config holds _target_ alone
     "hydra.launcher.n_jobs=2: hydra.launcher (hydra/launcher=basic) has no setting n_jobs (hydra/launcher=joblib has it)"),
    # an option Hydra's own group lacks: its own six lines
    (["hydra/launcher=jobib", "seed=0,1"], ("-m",), "hydra/launcher=jobib: there is no hydra/launcher 'jobib'; choose "
     "from basic, joblib, submitit_local, submitit_slurm (did you mean hydra/launcher=joblib?)"),
    # sweeps Hydra's basic sweeper stops on with a stack trace, or that hold no job
    (["seed=interval(0,1)"], ("-m",), "seed=interval(0,1): Hydra's basic sweeper runs each value given (seed=<v1>,<v2> "
     "or 'seed=range(<start>,<stop>,<step>)'); an interval is a search space, which hydra/sweeper=optuna draws values "
     "from (--config-dir multirun_sweeps +sweep=strength_guidance_optuna sets one up)"),
    (["seed=range(5,2)"], ("-m",), "seed=range(5,2): this sweep holds no value, so the multirun would run no job"),
    # counts that joblib and Optuna stop on with a stack trace
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=0", "seed=0,1"], ("-m",), "hydra.launcher.n_jobs=0: joblib runs "
     "n_jobs jobs at once: a positive count, or -1 for one per CPU core"),
    (["hydra/sweeper=optuna", "hydra.sweeper.n_trials=0", "seed=range(0,2)"], ("-m",), "hydra.sweeper.n_trials=0: "
     "Optuna's sweeper runs n_trials jobs in all: a positive count"),
    # a value Hydra's typed config cannot hold: its own six lines
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=abc", "seed=0,1"], ("-m",),
     "hydra.launcher.n_jobs=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    (["hydra.job.chdir=maybe"], (), "hydra.job.chdir=maybe: Value 'maybe' is not a valid bool (type str)"),
    # sweeps Hydra would refuse in five lines, or run as one job without a word
    (["stage.build_model=false", "seed=0,1"], (), "seed=0,1: several values run a job each only in a multirun: add -m "
     "(python -m stablesdg.train -m ...); one value that holds them is a list, seed=[0,1], or quoted text, \"seed='0,1'\""),
    (["+sweep=seeds"], ("--config-dir", "multirun_sweeps"), "+sweep=seeds: a sweep config's values run a job each only in "
     "a multirun: add -m (python -m stablesdg.train -m --config-dir multirun_sweeps +sweep=seeds ...)"),
    (["+sweep=seeds"], ("-m",), "+sweep=seeds: the sweep configs are in multirun_sweeps/, read by a multirun that "
     "names the folder: python -m stablesdg.train -m --config-dir multirun_sweeps +sweep=seeds ..."),
    (["+sweep=strength_guidance", "category=Pa", "hydra.sweeper.params.stage.strength=0.3,0.5"],
     ("-m", "--config-dir", "multirun_sweeps"), "hydra.sweeper.params.stage.strength=0.3,0.5: to sweep other values of "
     "stage.strength, give them as stage.strength=0.3,0.5; on the command line they replace those of the sweep config"),
    (["hydra.launcher.n_jobs=1,2", "seed=0,1"], ("-m",),
     "hydra.launcher.n_jobs=1,2: Hydra's own settings take one value each; a multirun sweeps the job's settings"),
    (["hydra.job.env_set.OMP_NUM_THREADS=4"], (), "hydra.job.env_set.OMP_NUM_THREADS=4: hydra.job.env_set holds keys "
     "of your own, added with +: +hydra.job.env_set.OMP_NUM_THREADS=4"),
    (["+sweep=seeds"], ("-m", "--config-dir", "sweeps"),
     "--config-dir sweeps is not a folder (the sweep configs: --config-dir multirun_sweeps)"),
    # a later job's category, which a run checks only when it starts, after the jobs before it
    (["stage.build_model=false", "category=Pa,In"], ("-m",), "category=In: unknown category 'In'; valid categories: "
     "Cr (crazing), Pa (patches), PS (pitted_surface), Sc (scratches)"),
    (["stage.build_model=false", "category=Pa,Cr,patches", "seed=0,1"], ("-m",), "category=Pa and category=patches "
     "name the same class, Pa: its jobs would write one folder, the later replacing the earlier's artifacts; give each "
     "class once"),
    # the values a sweep config sweeps: Hydra's six lines once its jobs start, or hours on, when the job of
    # Table I's sixth category starts on a dataset without it
    (["+sweep=table1_search"], ("-m", "--config-dir", "multirun_sweeps"), "+sweep=table1_search sweeps category=In: "
     "unknown category 'In'; valid categories: Cr (crazing), Pa (patches), PS (pitted_surface), Sc (scratches)"),
    (["+sweep=strength_guidance", "+experiment=quickstart", "category=Pa"], ("-m", "--config-dir", "multirun_sweeps"),
     "+sweep=strength_guidance sweeps stage.strength=0.3: stage=pipeline has no setting stage.strength "
     "(stage=generate has it)"),  # the experiment, named after the sweep, chose its own stage
])
def test_a_typo_in_any_job_of_a_multirun_or_in_a_hydra_key_is_one_line_before_any_job_runs(tmp_path, overrides, flags, refusal):
    done = train(tmp_path, "logger=none", *overrides, flags=flags)
    assert (done.returncode, done.stderr) == (2, f"error: {refusal}\n")
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("flags, overrides, refusal", [
    ((), ["stage=ti", "category=Pa", "stage.prompt=${nosuch}"], "stage.prompt=${nosuch}: Interpolation key 'nosuch' "
     "not found"),
    # Hydra's sweeper writes the job's word as stage.prompt=$\{nosuch\}, and composes the interpolation all the same
    (("-m",), ["stage=ti", "category=Pa", "stage.prompt=${nosuch}", "seed=0,1"], "stage.prompt=${nosuch}: "
     "Interpolation key 'nosuch' not found"),
    ((), ["paths.artifacts=${oc.env:STABLESDG_UNSET_VARIABLE}"], "paths.artifacts=${oc.env:STABLESDG_UNSET_VARIABLE}: "
     "Environment variable 'STABLESDG_UNSET_VARIABLE' not found"),
    ((), ["stage=pipeline", 'pipeline.ti=["stage.lr=${nope}"]'], 'pipeline.ti=["stage.lr=${nope}"]: Interpolation key '
     "'nope' not found"),
])
def test_a_value_whose_interpolation_cannot_be_resolved_is_one_line_before_the_stage_starts(tmp_path, flags, overrides,
                                                                                           refusal):
    done = train(tmp_path, "logger=none", *overrides, flags=flags)  # a stack trace from where it was first read before
    assert done.returncode == 2 and done.stderr.splitlines()[-1] == f"error: {refusal}", done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "artifacts").exists()


def test_a_job_read_as_written_keeps_its_interpolations_to_the_run_and_resolves_them_there(tmp_path):
    done = train(tmp_path, "logger=none", "stage=inspect", "stage.build_model=false", "category=Pa",
                 "variant=run_${category}_s${seed}", "seed=0,1", flags=("-m",))
    assert done.returncode == 0, done.stderr
    made = sorted(p.name for p in (tmp_path / "artifacts" / "synthetic" / "Pa").iterdir())
    assert made == ["run_Pa_s0", "run_Pa_s1"]


def test_two_names_of_one_class_in_a_multirun_pass_where_the_variant_reads_the_name():
    from stablesdg.command_line import require_one_name_per_class
    from stablesdg.errors import UserError

    named: dict[str, str] = {}
    for word, category in (("category=Pa", "Pa"), ("category=Cr", "Cr"), ("category=patches", "Pa")):
        require_one_name_per_class([word, "variant=run_${category}"], category, named)  # run_Pa/, run_patches/
    named.clear()
    require_one_name_per_class(["category=Pa", "seed=0"], "Pa", named)
    require_one_name_per_class(["category=Pa", "seed=1"], "Pa", named)  # the same name again: the same job's class
    with pytest.raises(UserError, match="^category=Pa and category=pa name the same class, Pa: "):
        require_one_name_per_class(["category=pa", "seed=0"], "Pa", named)


@pytest.mark.parametrize("argv, said", [
    (["--stage", "ti", "category=Pa"], "--stage ti: {} stage=ti"),
    (["category=Pa", "--stage=ti"], "--stage=ti: {} stage=ti"),
    (["-seed", "3"], "-seed 3: {} seed=3"),
    (["-m", "--stage.max_steps=1,2"], "--stage.max_steps=1,2: {} stage.max_steps=1,2"),
    (["--dataset.root", "/my data"], "--dataset.root /my data: {} 'dataset.root=/my data'"),
    (["--category", "--seed=1"], "--category: {} category=<value>"),  # an option follows: no value to take
    (["--experiment", "table2_ablation"], "--experiment table2_ablation: {} +experiment=table2_ablation"),  # added
    (["--method=dcgan"], "--method=dcgan: {} method=dcgan"),  # in the defaults list: set, not added
])
def test_a_setting_written_as_an_option_is_one_line_with_the_word_to_write(argv, said):
    from stablesdg.command_line import require_settings_not_options
    from stablesdg.errors import UserError
    from stablesdg.train import CONFIG_DIR

    with pytest.raises(UserError) as refused:
        require_settings_not_options(argv, CONFIG_DIR)
    assert str(refused.value) == said.format("python -m stablesdg.train takes settings as key=value words, not "
                                             "options; here:")


@pytest.mark.parametrize("argv", [
    ["--cfg", "job", "stage=ti"], ["-m", "seed=0,1"], ["--config-dir", "multirun_sweeps", "+sweep=seeds"],
    ["-cd", "stage"], ["-cd=stage"], ["--config-dir=stage"], ["-p", "stage", "--cfg", "job"], ["--help"], ["-h"],
    ["--hydra-help"], ["--info", "defaults"], ["-i"], ["--resolve", "-c", "all"], ["-sc", "install=bash"],
    ["--run", "seed=1"], ["-cn", "config"], ["stage=ti", "seed=3"], ["stage=ti", "seed=3", "-m"]])
def test_hydras_own_flags_and_settings_are_not_taken_for_settings_written_as_options_or_unknown_options(argv):
    from stablesdg.command_line import hydra_arguments, require_settings_not_options
    from stablesdg.train import CONFIG_DIR

    require_settings_not_options(argv, CONFIG_DIR)
    assert hydra_arguments(argv).overrides == [word for word in argv if "=" in word and not word.startswith("-")]


@pytest.mark.parametrize("argv, parsed", [
    (["stage=ti", "seed=3"], (["stage=ti", "seed=3"], False, None)),
    (["-m", "seed=0,1"], (["seed=0,1"], True, None)),
    (["--mult", "seed=0,1"], (["seed=0,1"], True, None)),  # Hydra's parser takes an option's unambiguous prefix
    (["-cd=multirun_sweeps", "+sweep=seeds", "--multirun"], (["+sweep=seeds"], True, "multirun_sweeps")),
    (["--config-dir", "multirun_sweeps", "--run", "seed=1"], (["seed=1"], False, "multirun_sweeps")),
    # a config printed is composed from the overrides as a run's is: they are checked alike
    (["--cfg", "job", "seed=1"], (["seed=1"], False, None)), (["-p", "stage", "-c", "job"], ([], False, None)),
    (["--info", "config", "stag=ti"], (["stag=ti"], False, None)),
    # help, and another primary config, are Hydra's
    (["--help"], None), (["--hydra-help"], None), (["-cn", "config", "seed=1"], None),
])
def test_a_command_line_is_read_as_hydra_reads_it_and_one_with_help_or_another_primary_config_is_left_to_hydra(
        argv, parsed):
    from stablesdg.command_line import parse_command_line

    assert parse_command_line(argv) == parsed


@pytest.mark.parametrize("argv, said", [
    (["--badflag", "stage=ti"], "--badflag: not an option of python -m stablesdg.train; settings are key=value words "
                                "(--help lists the options)"),
    (["-m", "seed=0,1", "-x=3"], "-x=3: not an option of python -m stablesdg.train; settings are key=value words "
                                 "(--help lists the options)"),
    (["--cfg", "jobs"], "argument --cfg/-c: invalid choice: 'jobs' (choose from 'job', 'hydra', 'all') "
                        "(--help lists the options)"),
    (["--config-dir"], "argument --config-dir/-cd: expected one argument (--help lists the options)"),
    # two of Hydra's modes: its own refusal is a ValueError's stack trace
    (["-m", "--cfg", "job", "seed=0,1"], "--multirun and --cfg: a command takes one of --run, --multirun (-m), --cfg, "
                                         "--info and --shell-completion (--help lists the options)"),
    (["--info", "--cfg", "job"], "--cfg and --info: a command takes one of --run, --multirun (-m), --cfg, --info and "
                                 "--shell-completion (--help lists the options)"),
    (["stage=ti", "-m", "seed=0,1", "category=Pa"], "seed=0,1: the key=value words of a command come together, "
                                                    "before Hydra's flags or after them, not on both sides; here: "
                                                    "python -m stablesdg.train -m stage=ti seed=0,1 category=Pa"),
    (["stage=ti", "--cfg", "job", "dataset.root=/my data"], "dataset.root=/my data: the key=value words of a command "
                                                            "come together, before Hydra's flags or after them, not "
                                                            "on both sides; here: python -m stablesdg.train --cfg job "
                                                            "stage=ti 'dataset.root=/my data'"),
])
def test_an_option_hydra_cannot_read_or_settings_on_both_sides_of_its_flags_are_one_line(argv, said):
    from stablesdg.command_line import hydra_arguments
    from stablesdg.errors import UserError

    with pytest.raises(UserError) as refused:
        hydra_arguments(argv)
    assert str(refused.value) == said


@pytest.mark.parametrize("argv, said", [
    (("--stage", "ti", "category=Pa"), "--stage ti: python -m stablesdg.train takes settings as key=value words, not "
                                       "options; here: stage=ti"),
    (("--badflag", "stage=ti"), "--badflag: not an option of python -m stablesdg.train; settings are key=value "
                                "words (--help lists the options)"),
    (("seed=0,1", "-m", "--cfg", "job"), "--multirun and --cfg: a command takes one of --run, --multirun (-m), --cfg, "
                                         "--info and --shell-completion (--help lists the options)"),
    (("stag=ti", "--cfg", "job"), "stag=ti: there is no setting or config group stag (did you mean stage?)"),
])
def test_a_setting_written_as_an_option_or_an_unknown_option_is_refused_before_hydra_reads_the_command(
        tmp_path, argv, said):
    done = train(tmp_path, *argv)  # Hydra: its usage, some fifteen lines, then "unrecognized arguments"
    assert (done.returncode, done.stderr) == (2, f"error: {said}\n")
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "logs").exists()


def test_a_multirun_with_a_job_hydra_could_not_compose_stops_in_one_line_before_any_job_runs(tmp_path):
    done = train(tmp_path, "logger=none", "seed=0,abc", "stage.build_model=false", flags=("-m",))
    assert (done.returncode, done.stderr) == (2, "error: seed=0,abc: seed must be an integer from 0 to 4294967295, "
                                                 "got abc\n")  # Hydra: job 0 ran, then five lines and exit code 1
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_experiment_and_sweep_through_the_cli(tmp_path, neu_path):
    done = train(tmp_path, "+experiment=neu_setup", f"dataset.root={neu_path}")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "artifacts/neu/all/default/inspect/result.json").read_text())
    assert record["metrics"]["model"] is None and record["metrics"]["dataset"]["num_images"] == 1800

    done = train(tmp_path, "+sweep=seeds", "logger=none", "stage.build_model=false",
                 flags=("-m", "--config-dir", "multirun_sweeps"))
    assert done.returncode == 0, done.stderr
    for seed in (0, 1, 2):
        record = json.loads((tmp_path / f"artifacts/synthetic/all/seed{seed}/inspect/result.json").read_text())
        assert record["config"]["seed"] == seed and record["variant"] == f"seed{seed}"


def test_each_job_of_a_multirun_in_one_process_logs_a_wandb_run_of_its_own_named_after_its_folder(tmp_path):
    done = train(tmp_path, "+sweep=seeds", "stage=inspect", "stage.build_model=false", "logger=wandb",
                 flags=("-m", "--config-dir", "multirun_sweeps"))
    assert done.returncode == 0, done.stderr
    runs = sorted((tmp_path / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 3, "Lightning's WandbLogger would log every job into the first job's run"
    names = {seed: [run for run in runs if f"synthetic-all-seed{seed}-inspect".encode() in run.read_bytes()]
             for seed in (0, 1, 2)}
    assert all(len(found) == 1 for found in names.values()), names
    assert "wandb run already in progress" not in done.stdout + done.stderr
    assert "\x1b[" not in done.stdout + done.stderr, "W&B's closing lines, left to the interpreter's exit, were coloured"
    assert done.stdout.rstrip().endswith(f"result: {tmp_path}/artifacts/synthetic/all/seed2/inspect/result.json")


@pytest.mark.slow
def test_the_optuna_search_tries_points_of_a_readable_grid_and_keeps_its_best(tmp_path):
    done = train(tmp_path, "+sweep=strength_guidance_optuna", "hydra.sweeper.n_trials=4", "stage.adapter=base",
                 "stage.num_images=4", "stage.num_inference_steps=4", "stage.features=pixels", "logger=none",
                 "category=Pa", "dataset.synthetic.per_class=10", flags=("-m", "--config-dir", "multirun_sweeps"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "setup plugin" not in done.stdout + done.stderr, "alembic's import-time notices (through optuna) are hidden"
    assert "\x1b[" not in done.stdout + done.stderr, "no terminal colour codes in output that goes to a file"
    assert re.search(r"^\[[\d :,-]+\]\[HYDRA\] A new study created in memory", done.stderr + done.stdout, re.M)
    strengths = {f"{0.3 + 0.05 * k:.2f}".rstrip("0") for k in range(9)}  # 0.3, 0.35, ..., 0.7
    guidances = {f"{3.0 + 0.5 * k:.1f}" for k in range(9)}  # 3.0, 3.5, ..., 7.0
    fids = {}
    for result in (tmp_path / "artifacts/synthetic/Pa/default").glob("sweep_*/result.json"):
        strength, guidance = re.fullmatch(r"sweep_s([\d.]+)_g([\d.]+)", result.parent.name).groups()
        assert strength in strengths and guidance in guidances, result.parent.name  # not sweep_s0.5195254015709299_...
        fids[(float(strength), float(guidance))] = json.loads(result.read_text())["metrics"]["fid"]
    assert 1 <= len(fids) <= 4
    import yaml

    tuned = yaml.safe_load((tmp_path / "artifacts/synthetic/sweeps/default/tuned_generation.yaml").read_text())["Pa"]
    best = min(fids, key=fids.get)
    assert (tuned["strength"], tuned["guidance_scale"], tuned["fid"]) == (*best, fids[best])


@pytest.mark.slow
def test_make_quickstart_runs_the_whole_pipeline_and_ends_with_the_report(tmp_path):
    # two of the synthetic set's four classes, the tiny model at 32 px and 5 epochs of SqueezeNet: every stage still
    # runs, in about a fifth of the quickstart's own time
    args = (f"paths.logs={tmp_path}/logs pipeline.adapt_steps=10 pipeline.images=16 model.resolution=32 "
            "~dataset.classes +dataset.classes={Pa:patches,Sc:scratches} pipeline.classify.overrides='[\"stage.max_epochs=5\"]'")
    done = subprocess.run(["make", "-s", "quickstart", f"ARTIFACTS={tmp_path}/artifacts", f"QUICKSTART_ARGS={args}",
                           f"PY={sys.executable}"], cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "artifacts" / "synthetic"
    assert (root / "all/default/inspect/samples.png").is_file()
    fids = {}
    assert sorted(p.name for p in root.iterdir()) == ["Pa", "Sc", "all", "splits", "sweeps"]
    for category in ("Pa", "Sc"):
        folder = root / category / "default"
        assert {p.name for p in folder.iterdir()} == {"ti", "lora", "sweep_s0.4_g5", "sweep_s0.6_g5", "generate", "fid"}
        assert (folder / "ti/learned_embeds.safetensors").is_file()
        assert (folder / "lora/pytorch_lora_weights.safetensors").is_file()
        assert (folder / "ti/validation/step_000010.png").is_file(), "a validation grid at the end"
        assert len((folder / "lora/loss.csv").read_text().splitlines()) == 11
        assert len(list((folder / "generate/images").glob("*.png"))) == 16
        fid = json.loads((folder / "fid/result.json").read_text())["metrics"]
        assert fid["n_fake"] == 16 and fid["features"] == "pixels" and fid["fid"] > 0
        fids[category] = fid["fid"]
    logged = "".join(p.read_text() for p in (tmp_path / "logs" / "csv").rglob("metrics.csv"))
    assert "train/loss" in logged, "the loss curve goes to the logger"
    # each step logs a run of its own, named after the folder it made
    steps = ("ti", "lora", "sweep_s0.4_g5", "sweep_s0.6_g5", "generate", "fid")
    assert {p.name for p in (tmp_path / "logs" / "csv").iterdir()} == {
        *(f"synthetic-{category}-default-{step}" for category in ("Pa", "Sc") for step in steps),
        "synthetic-all-default-inspect", "synthetic-all-default-classify_squeezenet_a0.4_none_seed0",
        "synthetic-all-default-classify_squeezenet_a0.4_expand_seed0"}
    expand = json.loads((root / "all/default/classify_squeezenet_a0.4_expand_seed0/result.json").read_text())["metrics"]
    real = json.loads((root / "all/default/classify_squeezenet_a0.4_none_seed0/result.json").read_text())["metrics"]
    assert expand["train_images"] == {"real": real["train_images"]["real"], "generated": 2 * 16}
    assert real["train_images"]["generated"] == 0
    # 16 distinct training images of each class's 32 start its set; its α = 0.4 subset holds 13 of them
    assert real["generated_made_beyond_alpha"] == 0 and expand["generated_made_beyond_alpha"] >= 2 * 3
    report = tmp_path / "artifacts" / "report"
    assert f"report: {report / 'report.md'}" in done.stdout
    assert "reads the pipeline's settings" not in done.stdout + done.stderr, "stage=inspect is given none of them"
    # per class: ti, lora, two sweep points and the generated set
    assert "note: Made with random-weight stand-ins for SD1.5 (model=tiny: 10 runs)" in done.stdout
    with open(report / "table5_fid.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["row"] == "StableSDG")
    assert {c: float(row[f"{c} ours"]) for c in fids} == pytest.approx(fids)
    assert row["Cr ours"] == row["PS ours"] == row["In ours"] == ""
    with open(report / "table6_accuracy.csv", newline="") as handle:
        rows = {r["row"]: r for r in csv.DictReader(handle)}
    assert float(rows["StableSDG"]["SqueezeNet ours"]) == pytest.approx(100 * expand["test_accuracy"])
    assert float(rows["None (real only)"]["SqueezeNet ours"]) == pytest.approx(100 * real["test_accuracy"])
    assert {p.name for p in (report / "grids").iterdir()} == {f"synthetic_{c}.png" for c in fids}


def test_a_truncated_ti_artifact_stops_lora_with_one_line(tmp_path):
    import torch
    from safetensors.torch import save_file

    from stablesdg import artifacts

    ti = tmp_path / "artifacts/synthetic/Sc/default/ti"
    ti.mkdir(parents=True)
    save_file({"<unknown>": torch.zeros(3, 32)}, str(ti / "learned_embeds.safetensors"))
    artifacts.write_result(ti, stage="ti", dataset="synthetic", category="Sc", variant="default", metrics={"token": "<unknown>"},
                           config={}, wall_time_s=0.0)
    (ti / "learned_embeds.safetensors").write_bytes((ti / "learned_embeds.safetensors").read_bytes()[:100])
    done = train(tmp_path, "stage=lora", "category=Sc", "logger=none", "stage.max_steps=2", "dataset.image_size=48")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    # the command keeps this one's own settings (its store, its dataset), not its stage's
    remake = (f"python -m stablesdg.train stage=ti paths.artifacts={tmp_path}/artifacts paths.logs={tmp_path}/logs "
              "logger=none dataset.image_size=48 category=Sc variant=default")
    assert done.stderr.strip().splitlines() == [
        f"error: {ti / 'learned_embeds.safetensors'} was changed or truncated after it was written (its SHA-256 differs "
        f"from result.json); remake it with: {remake}"]
    assert not (tmp_path / "artifacts/synthetic/Sc/default/lora/result.json").exists()
    remade = subprocess.run([sys.executable, *shlex.split(remake)[1:], "stage.max_steps=1", "stage.validation_every=0"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert remade.returncode == 0, remade.stderr
    assert json.loads((ti / "result.json").read_text())["config"]["dataset"]["image_size"] == 48


def test_make_install_refuses_with_one_line_when_the_disk_cannot_hold_a_new_venv(tmp_path):
    venv = tmp_path / "envs" / "venv"
    done = subprocess.run(["make", "-s", "install", f"VENV={venv}", "MIN_FREE_GB=1000000"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"error: a new {venv} needs about 1000000 GB free on its disk" in done.stderr.splitlines()[0]
    assert not (tmp_path / "envs").exists(), "nothing is created before the check"
    enough = subprocess.run(["make", "-s", "check-disk", f"VENV={venv}", "MIN_FREE_GB=0"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (enough.returncode, enough.stdout, enough.stderr) == (0, "", "")


def test_a_multirun_whose_jobs_would_write_one_folder_stops_before_the_second_overwrites_the_first(tmp_path):
    done = run_cli(tmp_path, "stage=inspect", "stage.build_model=false", "stage.grid_per_class=2,3", "logger=none",
                   flags=("-m",))
    folder = tmp_path / "artifacts/synthetic/all/default/inspect"
    assert done.returncode == 2
    # each job's overrides as Hydra writes them (False, not false)
    job = f"paths.artifacts={tmp_path}/artifacts paths.logs={tmp_path}/logs stage=inspect stage.build_model=False"
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: the jobs '{job} stage.grid_per_class=2 logger=none' and '{job} stage.grid_per_class=3 logger=none' "
        f"of this multirun both write {folder}, so the later would overwrite the earlier's artifacts; name each job's "
        "variant after what it sweeps: add 'variant=grid_per_class${stage.grid_per_class}' to the command")
    assert json.loads((folder / "result.json").read_text())["config"]["stage"]["grid_per_class"] == 2, "the first stays"
    suggested = run_cli(tmp_path, "stage=inspect", "stage.build_model=false", "stage.grid_per_class=2,3", "logger=none",
                        "variant=grid_per_class${stage.grid_per_class}", flags=("-m",))
    assert suggested.returncode == 0, suggested.stderr[-2000:]
    for count in (2, 3):
        record = json.loads((folder.parents[1] / f"grid_per_class{count}/inspect/result.json").read_text())
        assert record["config"]["stage"]["grid_per_class"] == count


def test_a_requeued_multirun_job_may_write_its_own_folder_again(tmp_path):
    from stablesdg.errors import UserError
    from stablesdg.train import claim_in_multirun

    claim_in_multirun(tmp_path / "a", tmp_path / "sweep", ["stage=ti", "stage.lr=0.1"])
    claim_in_multirun(tmp_path / "a", tmp_path / "sweep", ["stage=ti", "stage.lr=0.1"])  # the same job again
    claim_in_multirun(tmp_path / "b", tmp_path / "sweep", ["stage=ti", "stage.lr=0.2"])  # another folder
    with pytest.raises(UserError, match=r"add 'variant=lr\$\{stage.lr\}' to the command"):
        claim_in_multirun(tmp_path / "a", tmp_path / "sweep", ["stage=ti", "stage.lr=0.2"])


def test_a_job_refused_in_a_joblib_multirun_leaves_the_jobs_beside_it_to_finish(tmp_path):
    # joblib's pool stopped every job beside one that exited: six categories in training, for one bad setting
    done = train(tmp_path, "stage=inspect", "stage.build_model=false", "stage.grid_per_class=0,8",
                 "variant=g${stage.grid_per_class}", "logger=none", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 flags=("-m",))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    refusal = "error: stage.grid_per_class must be a positive integer, got 0"
    lines = done.stderr.splitlines()
    # said when the job is refused, and again after its overrides once every job has ended
    assert [line for line in lines if line.startswith("error: ")] == [refusal, refusal], done.stderr
    summary = lines.index(refusal, lines.index(refusal) + 1) - 1
    assert lines[summary].startswith("Error executing job with overrides: [") and "'stage.grid_per_class=0'" in lines[summary]
    assert (tmp_path / "artifacts/synthetic/all/g8/inspect/result.json").is_file(), "the job beside it finished"


def test_a_job_refused_under_the_submitit_launcher_is_one_line_with_its_overrides_and_the_others_finish(tmp_path):
    # hydra/launcher=submitit_local: SLURM's launcher with local processes, so the path a cluster takes
    done = train(tmp_path, "stage=inspect", "stage.build_model=false", "stage.grid_per_class=0,8",
                 "variant=g${stage.grid_per_class}", "logger=none", "hydra/launcher=submitit_local", flags=("-m",))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert said[0].startswith("Error executing job with overrides: [") and "'stage.grid_per_class=0'" in said[0]
    assert said[1:] == ["error: stage.grid_per_class must be a positive integer, got 0",
                        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."]
    job_logs = [log.read_text() for log in (tmp_path / "logs").rglob(".submitit/*/*_log.err")]
    assert sum(said[1] in text for text in job_logs) == 1, "the refused job's own log says why"
    assert (tmp_path / "artifacts/synthetic/all/g8/inspect/result.json").is_file(), "the job after it ran"


@pytest.mark.parametrize("overrides, uses", [
    (["stage=ti"], True), (["stage=generate"], True), (["stage=fid"], False), (["stage=classify"], False),
    (["stage=pipeline"], True), (["stage=pipeline", "method=dcgan"], False),
    (["stage=pipeline", "pipeline.steps=[fid,classify]"], False),
    (["stage=pipeline", "method=ddim", "pipeline.adapt=[ti]"], True),  # TI trained, though DDIM samples the DDPM
])
def test_a_run_uses_the_diffusion_model_where_a_stage_or_pipeline_step_adapts_it_or_generates_with_it(overrides, uses):
    from stablesdg.run_notes import uses_diffusion_model

    assert uses_diffusion_model(compose_config(overrides)) is uses


def test_a_random_weight_stand_in_for_sd15_on_real_images_is_named_once_not_on_the_synthetic_demo(tmp_path):
    for name in ("crazing", "patches"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for k in range(3):
            Image.new("L", (32, 32), 40 * k).save(tmp_path / "data" / name / f"{k}.png")
    stand_in = "model=tiny is a random-weight stand-in for SD1.5: what it learns from and makes of mine shows"
    dry_run = ["stage=pipeline", "pipeline.steps=[adapt]", "pipeline.dry_run=true", "logger=none"]
    on_real = [*dry_run, "dataset=folder", f"dataset.root={tmp_path}/data", "dataset.name=mine"]
    done = run_cli(tmp_path, *on_real)
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).count(stand_in) == 1
    for quiet in ([*on_real, "method=dcgan"], dry_run):  # no diffusion model; the synthetic demo
        done = run_cli(tmp_path, *quiet)
        assert done.returncode == 0 and "stand-in" not in done.stdout + done.stderr, done.stderr
    multirun = ["stage=generate", "category=patches", "stage.adapter=base", "stage.num_images=1",
                "stage.num_inference_steps=2", "seed=0,1", "variant=seed${seed}", *on_real[-3:], "logger=none"]
    done = run_cli(tmp_path, *multirun, flags=("-m",))
    assert done.returncode == 0, done.stderr
    assert all((tmp_path / f"artifacts/mine/patches/seed{seed}/generate/result.json").is_file() for seed in (0, 1))
    assert (done.stdout + done.stderr).count(stand_in) == 1, "a multirun's jobs say it once"


def test_pipeline_settings_given_to_another_stage_are_named_as_unread_and_the_stage_runs(tmp_path):
    from omegaconf import OmegaConf

    from stablesdg.unread_settings import unread_pipeline_settings

    assert unread_pipeline_settings(["stage=ti", "pipeline.adapt_steps=10", 'pipeline.ti=["stage.lr=1"]', "seed=1",
                                     "pipeline=default"], OmegaConf.create({"name": "ti"})) == [
        "pipeline.adapt_steps=10", 'pipeline.ti=["stage.lr=1"]']
    assert unread_pipeline_settings(["pipeline.adapt_steps=10"], OmegaConf.create({"name": "pipeline"})) == []
    done = run_cli(tmp_path, "+experiment=quickstart", "stage=ti", "category=Pa", "pipeline.adapt_steps=10",
                   "stage.max_steps=1", "stage.validation_every=0", "logger=none")
    assert done.returncode == 0, done.stderr
    assert ("pipeline.adapt_steps=10: only stage=pipeline reads the pipeline's settings, and this command runs "
            "stage=ti, which leaves them unread (its own: python -m stablesdg.train stage=ti --cfg job --package "
            "stage)") in done.stdout + done.stderr
    assert (tmp_path / "artifacts/synthetic/Pa/default/ti/result.json").is_file()


def test_generated_images_named_for_a_classifier_on_real_images_only_are_named_as_unread_and_it_trains(tmp_path):
    from omegaconf import OmegaConf

    from stablesdg.unread_settings import unread_composition_settings

    given = ["stage=classify", "stage.generated=v2", "+stage.extra_per_class=50", "seed=1"]
    classify = {mode: OmegaConf.create({"name": "classify", "mode": mode}) for mode in ("none", "expand", "substitute")}
    assert unread_composition_settings(given, classify["none"]) == ["stage.generated=v2", "+stage.extra_per_class=50"]
    assert unread_composition_settings(given, classify["expand"]) == []
    assert unread_composition_settings(given, classify["substitute"]) == ["+stage.extra_per_class=50"]
    assert unread_composition_settings(given, OmegaConf.create({"name": "fid"})) == []
    done = run_cli(tmp_path, "stage=classify", "stage.generated=v2", "stage.max_epochs=1", "logger=none")
    assert done.returncode == 0, done.stderr
    assert ("stage.generated=v2: stage.mode=none trains on real images only and leaves it unread; stage.mode=expand "
            "(or substitute) trains on the generated images too") in done.stdout + done.stderr
    record = json.loads((tmp_path / "artifacts/synthetic/all/default/classify_squeezenet_a1.0_none_seed0/result.json")
                        .read_text())
    assert [counts["generated"] for counts in record["metrics"]["composition"].values()] == [0, 0, 0, 0]


LOOP_SETTINGS = ["+trainer.limit_val_batches=3", "+trainer.check_val_every_n_epoch=2", "+trainer.val_check_interval=5"]
RUN_SETTINGS = ["+trainer.max_time=00:00:10:00", "trainer.log_every_n_steps=3", "trainer.deterministic=false"]


@pytest.mark.parametrize("stage, unread", [("ti", LOOP_SETTINGS), ("dcgan", LOOP_SETTINGS), ("classify", []),
                                           ("generate", LOOP_SETTINGS + RUN_SETTINGS),
                                           ("export", LOOP_SETTINGS + RUN_SETTINGS), ("pipeline", [])])
def test_trainer_settings_the_stage_leaves_unread_are_named(stage, unread):
    from stablesdg.unread_settings import unread_trainer_settings

    command = [f"stage={stage}", "trainer=cpu", "trainer.accelerator=cpu", "trainer.precision=bf16-mixed",
               "trainer.devices=1", *LOOP_SETTINGS, *RUN_SETTINGS]
    assert unread_trainer_settings(command, compose_config(command).stage) == unread


def test_a_validation_setting_given_to_textual_inversion_is_named_as_unread_and_it_trains(tmp_path):
    done = run_cli(tmp_path, "stage=ti", "category=Pa", "stage.max_steps=2", "stage.validation_every=0",
                   "+trainer.limit_val_batches=3", "logger=none")
    assert done.returncode == 0, done.stderr
    assert ("+trainer.limit_val_batches=3: stage=ti trains for stage.max_steps steps with no validation or test loop "
            "(its validation grids come every stage.validation_every steps), which leaves it unread; only "
            "stage=classify validates and tests") in done.stdout + done.stderr
    assert json.loads((tmp_path / "artifacts/synthetic/Pa/default/ti/result.json").read_text())["metrics"]["steps"] == 2


@pytest.mark.parametrize("prior_images, given, note", [
    ("null", ["stage.num_prior_images=200", "stage.prior_prompt=steel"],
     "stage.num_prior_images=200 stage.prior_prompt=steel: prior preservation is off (stage.prior_images is null), "
     "which leaves them unread; stage.prior_images=auto makes class images, or give a folder of them"),
    ("/data/steel", ["stage.prior_steps=20", "stage.prior_loss_weight=0.5"],
     "stage.prior_steps=20: stage.prior_images=/data/steel gives the class images, so the settings that make them are "
     "unread (stage.prior_images=auto makes them)"),
    ("auto", ["stage.num_prior_images=200", "stage.prior_steps=20"], None),
])
def test_prior_preservation_settings_that_stage_prior_images_leaves_unread_are_named(prior_images, given, note):
    from stablesdg.unread_settings import unread_setting_notes

    command = ["stage=full", f"stage.prior_images={prior_images}", *given]
    assert unread_setting_notes(command, compose_config(command).stage) == ([note] if note else [])


@pytest.mark.parametrize("stage, use_ti, unread", [("lora", "true", True), ("full", "true", True),
                                                  ("lora", "false", False), ("ti", None, False)])
def test_a_placeholder_given_where_the_ti_embedding_brings_its_own_is_named_as_unread(stage, use_ti, unread):
    from stablesdg.unread_settings import unread_setting_notes

    command = [f"stage={stage}", "stage.placeholder=defect", *([f"stage.use_ti={use_ti}"] if use_ti else [])]
    note = (f"stage.placeholder=defect: stage={stage} trains on the category's TI embedding (stage.use_ti=true), whose "
            "placeholder the prompt holds, and leaves it unread; the placeholder is stage=ti's stage.placeholder (or "
            "stage.use_ti=false trains on this one as a plain word)")
    assert unread_setting_notes(command, compose_config(command).stage) == ([note] if unread else [])
