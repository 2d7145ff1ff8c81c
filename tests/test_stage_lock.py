"""One run at a time writes a stage's folder, and a DDP job's later processes tell their own job's claim from
another run's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from filelock import FileLock, Timeout

from conftest import REPO, meeting_port, outputs_of_all
from stablesdg import stage_lock
from stablesdg.errors import UserError
from stablesdg.stage_lock import LOCK_FILE, OWNER_FILE, stage_claimed

REFUSED = "{folder} is being written by another run (it holds .lock there); let that run finish or stop it, then run " \
          "this command again"


def test_a_stage_folder_is_written_by_one_run_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_lock, "CLAIM_WAIT_S", 0.1)
    folder = tmp_path / "neu" / "Pa" / "default" / "ti"
    holder = FileLock(str(folder / LOCK_FILE), timeout=0)  # another run's (its own open file, as a process's)
    with stage_claimed(folder):
        (folder / "embeds.safetensors").write_bytes(b"x")
        with pytest.raises(Timeout):  # held while the body runs
            holder.acquire()
    holder.acquire()  # and free after it
    with pytest.raises(UserError) as refused:
        with stage_claimed(folder):
            raise AssertionError("a held folder's run never starts")
    assert str(refused.value) == REFUSED.format(folder=folder)
    holder.release()
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "embeds.safetensors"]  # the holder's
    with stage_claimed(folder):
        pass
    assert sorted(p.name for p in folder.iterdir()) == ["embeds.safetensors"], "a finished run leaves no lock file"


def test_a_run_refused_before_writing_leaves_no_folder_it_made(tmp_path):
    (tmp_path / "neu").mkdir()
    with pytest.raises(UserError):
        with stage_claimed(tmp_path / "neu" / "Pa" / "default" / "ti"):
            raise UserError("bad input")
    assert list(tmp_path.rglob("*")) == [tmp_path / "neu"]
    with stage_claimed(tmp_path / "neu" / "Pa" / "default" / "ti"):
        (tmp_path / "neu" / "Pa" / "default" / "lora").mkdir()  # a sibling folder stays, and so does its parent
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == \
        ["neu", "neu/Pa", "neu/Pa/default", "neu/Pa/default/lora"]


@pytest.mark.parametrize("job", [{"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0"},
                                 {"TORCHELASTIC_RUN_ID": "r1", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}, {}])
def test_a_ddp_jobs_later_process_writes_with_its_first_and_is_refused_where_another_run_holds_the_folder(
        tmp_path, monkeypatch, job):
    monkeypatch.setattr(stage_lock, "OWNER_WAIT_S", 0.5)
    for name in ("SLURM_JOB_ID", "SLURM_STEP_ID", "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in job.items():
        monkeypatch.setenv(name, value)
    folder = tmp_path / "ti"
    with stage_claimed(folder):  # the first process's claim: its record names this job
        owner = json.loads((folder / OWNER_FILE).read_text())
        assert owner == {"host": socket.gethostname(), "pid": os.getpid(), "job": stage_lock.this_job()}
        if job:  # a later process of the same job: the same job, another process
            (folder / OWNER_FILE).write_text(json.dumps({**owner, "pid": 4321}))
        else:  # Lightning starts the later processes itself: the first is their parent
            (folder / OWNER_FILE).write_text(json.dumps({**owner, "pid": os.getppid(), "job": None}))
        with stage_claimed(folder, rank=1):
            (folder / "embeds.safetensors").write_bytes(b"x")
        other = {"kind": "slurm", "id": "78", "part": "0"}
        (folder / OWNER_FILE).write_text(json.dumps({**owner, "pid": 4321, "job": other}))  # another job's
        with pytest.raises(UserError) as refused:
            with stage_claimed(folder, rank=1):
                raise AssertionError("a later process of another job never starts")
        assert str(refused.value) == REFUSED.format(folder=folder).replace(
            ".lock there", f".lock there: process 4321 on {socket.gethostname()} of SLURM job 78"), "whose it is"
        (folder / OWNER_FILE).unlink()  # a claim whose record is not there: not this job's
        with pytest.raises(UserError):
            with stage_claimed(folder, rank=1):
                raise AssertionError("never starts")
    with stage_claimed(folder, rank=1):  # no run holds it: the first process claims it, or is refused itself
        pass
    assert sorted(p.name for p in folder.iterdir()) == ["embeds.safetensors"], "a later process leaves no lock file"


def test_the_run_holding_a_folder_is_named_by_its_process_host_and_job(tmp_path):
    folder = tmp_path / "ti"
    folder.mkdir()
    assert stage_lock.holder(folder) is None, "no record"
    for job, words in [(None, "process 12 on gpu07"),
                       ({"kind": "slurm", "id": "4242", "part": "1"}, "process 12 on gpu07 of SLURM job 4242"),
                       ({"kind": "torchrun", "id": "r1", "part": "node1:29500"},
                        "process 12 on gpu07 of torchrun run r1")]:
        (folder / OWNER_FILE).write_text(json.dumps({"host": "gpu07", "pid": 12, "job": job}))
        assert stage_lock.holder(folder) == words
    (folder / OWNER_FILE).write_text("{not json")
    assert stage_lock.holder(folder) is None, "a record cut short names no one"


@pytest.mark.slow
def test_a_ddp_job_that_srun_starts_on_a_folder_another_run_holds_ends_in_every_process(tmp_path):
    folder = tmp_path / "artifacts/synthetic/Pa/default/ti"
    folder.mkdir(parents=True)
    holder = FileLock(str(folder / LOCK_FILE), timeout=0)
    holder.acquire()
    command = [sys.executable, "-m", "stablesdg.train", "stage=ti", "trainer=ddp", "trainer.accelerator=cpu",
               "trainer.devices=2", "trainer.precision=32-true", "stage.max_steps=4", "category=Pa", "logger=none",
               "dataset.synthetic.per_class=10", f"paths.artifacts={tmp_path}/artifacts", f"hydra.run.dir={tmp_path}/job"]
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "localhost", "MASTER_PORT": str(meeting_port())}
    tasks = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)})
             for rank in (0, 1)]
    # the second used to wait for the first at DDP's rendezvous, for 30 minutes
    (_, first_err), (second, second_err) = outputs_of_all(tasks, timeout=300)
    assert [task.returncode for task in tasks] == [2, 2], (first_err + second_err)[-3000:]
    assert first_err.strip().splitlines()[-1] == "error: " + REFUSED.format(folder=folder)
    assert second == "" and "Traceback" not in second_err, "the second task says nothing on the console"
    assert sorted(p.name for p in folder.iterdir()) == [".lock"], "the holder's alone"
