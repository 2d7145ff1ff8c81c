"""Which GPU a run computes on: the one ``trainer.devices`` names, and a GPU of its own for each job of a multirun
on one machine (six categories on four GPUs must not all train on the first).

No GPU is needed: the GPUs a machine shows are stood in for, and the trainer is built as the dict of its arguments."""

from __future__ import annotations

import logging

import pytest
import torch
from filelock import FileLock

from conftest import compose_config
from stablesdg import gpus
from stablesdg.errors import UserError
from stablesdg.gpus import (gpu_freed_at_end, gpu_per_job, pinned_gpu, require_one_process_outside_training,
                            use_this_process_gpu)
from stablesdg.training import build_trainer

AS_DICT = "trainer._target_=builtins.dict"


@pytest.mark.parametrize(("devices", "expected"), [
    ([2], 2), ("3,", 3), (" 1 ,", 1), ([0, 1], None), ("0,1", None), (1, None), ("1", None), (-1, None), ("auto", None),
])
def test_a_gpu_is_named_by_a_list_or_a_trailing_comma_as_lightning_reads_it(devices, expected):
    assert pinned_gpu(devices) == expected


@pytest.mark.parametrize(("overrides", "gpu_count", "expected"), [
    (["trainer=gpu"], 4, True),
    (["trainer=gpu"], 1, False),                         # one shown (SLURM, CUDA_VISIBLE_DEVICES): it is the job's
    (["trainer=ddp"], 4, False),                         # DDP: each process takes its own
    (["trainer=gpu", "trainer.devices=[2]"], 4, False),  # named
    (["trainer=cpu"], 4, False),
])
def test_multirun_jobs_take_a_gpu_each_with_one_device_on_a_machine_of_several(overrides, gpu_count, expected):
    assert gpu_per_job(compose_config(overrides).trainer, gpu_count) is expected


@pytest.fixture
def four_gpus(monkeypatch, tmp_path):
    """``as_job(n)``: this process as job ``n`` of a multirun (sweep folder ``tmp_path``) on a machine showing four
    GPUs; ``as_job(None)`` a single run. Returns the devices torch's current device was set to."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)

    def as_job(n):
        monkeypatch.setattr(gpus, "multirun_job", lambda: None if n is None else (n, tmp_path))
        return chosen

    yield as_job
    gpus.release_gpu()


def held_by_another_job(tmp_path, index: int) -> FileLock:
    lock = FileLock(tmp_path / ".gpus" / f"gpu{index}.lock")
    lock.acquire(timeout=0)
    return lock


def test_a_multirun_job_trains_and_computes_on_its_turns_gpu_and_frees_it_at_its_end(four_gpus, tmp_path):
    chosen = four_gpus(5)
    cfg = compose_config(["trainer=gpu", AS_DICT])
    with gpu_freed_at_end():
        assert build_trainer(cfg, max_steps=3)["devices"] == [1]
        use_this_process_gpu(cfg)
        assert build_trainer(cfg)["devices"] == [1]  # a pipeline's later step: the same GPU
    assert chosen == [1]
    held_by_another_job(tmp_path, 1).release()  # free again for the launcher's next job


def test_a_job_whose_gpu_another_job_holds_takes_the_next_free_one_or_shares_when_all_are_held(four_gpus, tmp_path,
                                                                                                caplog):
    chosen = four_gpus(5)
    cfg = compose_config(["trainer=gpu", AS_DICT])
    (tmp_path / ".gpus").mkdir()
    others = [held_by_another_job(tmp_path, 1)]
    with gpu_freed_at_end():
        use_this_process_gpu(cfg)
    assert chosen == [2]
    others += [held_by_another_job(tmp_path, k) for k in (0, 2, 3)]
    with caplog.at_level(logging.WARNING, logger="stablesdg.gpus"), gpu_freed_at_end():
        use_this_process_gpu(cfg)
    assert chosen == [2, 1]
    assert "multirun job 5 shares GPU 1: the other jobs of its multirun hold all 4 GPUs" in caplog.text


def test_a_single_run_keeps_lightnings_choice_and_a_named_gpu_is_used_outside_the_trainer_too(four_gpus):
    chosen = four_gpus(None)
    cfg = compose_config(["trainer=gpu", AS_DICT])
    assert build_trainer(cfg)["devices"] == 1
    use_this_process_gpu(cfg)
    assert chosen == []
    named = compose_config(["trainer=gpu", AS_DICT, "trainer.devices=[3]"])
    assert list(build_trainer(named)["devices"]) == [3]
    use_this_process_gpu(named)
    assert chosen == [3]


def test_a_stage_lightning_does_not_train_warns_that_it_uses_one_of_several_devices(caplog):
    with caplog.at_level(logging.WARNING, logger="stablesdg.gpus"):
        require_one_process_outside_training(compose_config(["stage=ti", "trainer=ddp"]), 2)
        require_one_process_outside_training(compose_config(["stage=generate", "trainer=gpu"]), 1)
        assert caplog.text == ""
        require_one_process_outside_training(compose_config(["stage=generate", "trainer=ddp", "trainer.devices=4"]), 4)
    assert "stage=generate runs in one process on one device: trainer.devices=4 (4 devices) splits the steps of the " \
           "training stages (ti, lora, full, dcgan, ddpm, classify) only" in caplog.text
    with pytest.raises(UserError, match="stage=pipeline runs its steps in one process"):
        require_one_process_outside_training(compose_config(["stage=pipeline", "trainer=ddp"]), 2)


def test_a_visible_gpu_that_trainer_cpu_leaves_unused_is_named_once_with_the_setting_that_uses_it(monkeypatch, tmp_path,
                                                                                                  caplog):
    from conftest import run_cli
    from stablesdg.gpus import note_unused_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H200")
    with caplog.at_level(logging.WARNING, logger="stablesdg.gpus"):
        for overrides in (["stage=generate", "trainer=gpu"], ["stage=export"], ["stage=inspect"]):
            note_unused_gpu(compose_config(overrides))
        assert caplog.text == ""
        note_unused_gpu(compose_config(["stage=generate"]))
    assert caplog.messages == ["a GPU is visible (NVIDIA H200), but trainer.accelerator=cpu runs stage=generate on the "
                               "CPU; add trainer=gpu (or hide the GPU, CUDA_VISIBLE_DEVICES=, to keep it on the CPU)"]
    done = run_cli(tmp_path, "stage=pipeline", "category=Pa", "pipeline.steps=[adapt]", "pipeline.dry_run=true",
                   "logger=none")
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).count("a GPU is visible (NVIDIA H200)") == 1


def test_a_pipeline_says_once_that_it_leaves_a_gpu_unused_not_in_each_step(monkeypatch, tmp_path):
    from conftest import run_cli
    from stablesdg import train

    checked = []
    monkeypatch.setattr(train, "note_unused_gpu", lambda cfg: checked.append(cfg.stage.name))
    done = run_cli(tmp_path, "stage=pipeline", "category=Pa", "pipeline.steps=[adapt]", "pipeline.adapt=[ti]",
                   'pipeline.adaptation=["stage.max_steps=1","stage.validation_every=0"]', "logger=none")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "artifacts/synthetic/Pa/default/ti/result.json").is_file()
    assert checked == ["pipeline"]


def stand_in_gpu(monkeypatch, name: str, capability: tuple[int, int],
                 arch_list: tuple[str, ...] = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")) -> None:
    """One visible GPU ``name`` of compute ``capability``, under a torch built for ``arch_list`` (CUDA 13's, torch
    2.14's default build, by default)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
    monkeypatch.setattr(torch.version, "cuda", "13.0")


@pytest.mark.parametrize(("capability", "arch_list", "runs"), [
    ((9, 0), ("sm_80", "sm_90"), True), ((8, 6), ("sm_80",), True), ((8, 0), ("sm_86",), False),
    ((7, 0), ("sm_75", "sm_80"), False), ((7, 0), ("sm_60", "compute_60"), True), ((12, 0), ("sm_90", "sm_100"), False),
    ((9, 0), ("sm_90a",), True), ((10, 0), ("sm_100f",), True), ((9, 0), ("compute_100",), False),
])
def test_a_gpu_runs_kernels_of_its_major_version_up_to_its_own_or_ptx_up_to_its_own(capability, arch_list, runs):
    assert gpus._runs_code_for(capability, list(arch_list)) is runs


def test_a_gpu_this_torch_has_no_code_for_is_refused_in_one_line_before_any_work(monkeypatch, tmp_path):
    from conftest import run_cli

    stand_in_gpu(monkeypatch, "Tesla V100-SXM2-32GB", (7, 0))  # the paper's GPU; CUDA 13 builds start at 7.5
    with pytest.raises(UserError) as refused:
        gpus.require_gpus_this_torch_runs(compose_config(["stage=ti", "trainer=gpu"]))
    assert str(refused.value) == (
        f"this torch ({torch.__version__}) has no CUDA code for GPU 0, Tesla V100-SXM2-32GB (compute capability 7.0): "
        "it was built for sm_75 sm_80 sm_86 sm_90 sm_100 sm_120; install a torch build for this GPU "
        "(https://pytorch.org/get-started/locally/), hide it (CUDA_VISIBLE_DEVICES), or run on the CPU (trainer=cpu)")
    for overrides in (["stage=ti"], ["stage=inspect", "trainer=gpu"], ["stage=export", "trainer=gpu"]):
        gpus.require_gpus_this_torch_runs(compose_config(overrides))  # on the CPU, or a stage that computes nothing
    done = run_cli(tmp_path, "stage=ti", "category=Pa", "trainer=gpu", "logger=none")
    assert (done.returncode, done.stderr) == (2, f"error: {refused.value}\n")
    assert not (tmp_path / "artifacts/synthetic/Pa").exists()


@pytest.mark.parametrize(("name", "capability", "precision", "warned"), [
    ("Tesla T4", (7, 5), "bf16-mixed", True), ("Tesla T4", (7, 5), "32-true", False),
    ("Tesla T4", (7, 5), "16-mixed", False), ("NVIDIA A100-SXM4-80GB", (8, 0), "bf16-mixed", False),
])
def test_bfloat16_on_a_gpu_without_bfloat16_arithmetic_is_named_with_the_precisions_it_has(monkeypatch, caplog, name,
                                                                                           capability, precision,
                                                                                           warned):
    stand_in_gpu(monkeypatch, name, capability)
    with caplog.at_level(logging.WARNING, logger="stablesdg.gpus"):
        gpus.require_gpus_this_torch_runs(compose_config(["stage=lora", "trainer=gpu", f"trainer.precision={precision}"]))
    expected = [f"trainer.precision=bf16-mixed on GPU 0, {name} (compute capability 7.5), which has no bfloat16 "
                "arithmetic: torch computes bf16 in float32 there, slower than float16; set trainer.precision=16-mixed "
                "(float16) or 32-true"]
    assert caplog.messages == (expected if warned else [])
