"""One run at a time writes a stage's folder: the lock its run holds there (``LOCK_FILE``), and which job holds it
(``OWNER_FILE``). A DDP job's first process claims the folder for the job; the others, which SLURM's srun or torchrun
start beside it, look whose claim it is: where another run's, they stop with the first one's error, not wait for it
at DDP's rendezvous until its 30-minute timeout (on the GPUs the job holds)."""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from stablesdg.atomic_files import read_json, write_json_atomic
from stablesdg.errors import UserError

LOCK_FILE = ".lock"  # held by the run writing a stage's folder
OWNER_FILE = ".lock.owner"  # the holder's host, process id and job (this_job), beside its lock
CLAIM_WAIT_S = 2.0  # how long a run tries for a folder's lock: another process may be looking whether it is held
OWNER_WAIT_S = 10.0  # how long a DDP job's later process waits to learn whose claim a folder's lock is


JOB_KINDS = {"slurm": "SLURM job", "torchrun": "torchrun run"}  # this_job's kinds, as a message names them


def this_job() -> dict[str, str] | None:
    """What the processes of one distributed job, and only they, share from the start: SLURM's job and step ids, or
    torchrun's run id and rendezvous address (``{"kind": "slurm", "id": "4242", "part": "0"}``); None outside such
    a job."""
    env = os.environ
    if env.get("SLURM_JOB_ID"):
        return {"kind": "slurm", "id": env["SLURM_JOB_ID"], "part": env.get("SLURM_STEP_ID", "")}
    if env.get("TORCHELASTIC_RUN_ID"):
        return {"kind": "torchrun", "id": env["TORCHELASTIC_RUN_ID"],
                "part": f"{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"}
    return None


def _refusal(directory: Path) -> UserError:
    held_by = holder(directory)
    return UserError(f"{directory} is being written by another run (it holds {LOCK_FILE} there"
                     f"{': ' + held_by if held_by else ''}); let that run finish or stop it, then run this command "
                     "again")


def holder(directory: str | os.PathLike) -> str | None:
    """Which run holds ``directory``'s lock, by the record it wrote beside it (``OWNER_FILE``), in words: ``process
    1234 on node7 of SLURM job 4242``; None where there is no readable record."""
    owner = _owner(Path(directory))
    if not isinstance(owner.get("pid"), int) or not owner.get("host"):
        return None
    job = owner.get("job") if isinstance(owner.get("job"), dict) else {}
    of_job = f" of {JOB_KINDS[job['kind']]} {job.get('id')}" if job.get("kind") in JOB_KINDS else ""
    return f"process {owner['pid']} on {owner['host']}{of_job}"


def _owner(directory: Path) -> dict:
    try:
        owner = read_json(directory / OWNER_FILE)
    except (OSError, UserError):  # not written yet, or gone with its run
        return {}
    return owner if isinstance(owner, dict) else {}


@contextmanager
def stage_claimed(directory: str | os.PathLike, rank: int = 0) -> Iterator[None]:
    """Hold ``directory``'s lock file while the body runs, so one run at a time writes a stage's folder; a folder
    another run holds is a one-line ``UserError`` (two runs would mix their checkpoints, images and results).
    The lock goes when its process ends, however it ends; its files are removed when the body ends, and so are the
    folders made here that hold nothing afterwards (the run was refused before it wrote). A DDP process of ``rank``
    above 0 claims nothing, its first process does for the job, and it is refused the same way where another run
    holds the folder."""
    directory = Path(directory)
    if rank != 0:
        _require_not_held_by_another_job(directory)
        yield
        return
    from filelock import FileLock, Timeout

    made = [folder for folder in (directory, *directory.parents) if not folder.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / LOCK_FILE), timeout=CLAIM_WAIT_S)
    try:
        lock.acquire()
    except Timeout:
        raise _refusal(directory) from None
    try:
        write_json_atomic(directory / OWNER_FILE, {"host": socket.gethostname(), "pid": os.getpid(), "job": this_job()})
        yield
    finally:
        (directory / OWNER_FILE).unlink(missing_ok=True)
        (directory / LOCK_FILE).unlink(missing_ok=True)  # while still held: a run starting meanwhile is still refused
        lock.release()
        for folder in made:  # innermost first
            try:
                folder.rmdir()
            except OSError:  # not empty: something was written there
                break


def _require_not_held_by_another_job(directory: Path) -> None:
    """A ``UserError`` where a run other than this process's DDP job holds ``directory``'s lock: not its first
    process (by ``this_job``, or, for the processes Lightning starts itself, as its parent). The holder's record may
    lag its lock by a moment, or be a killed run's: it is read again for ``OWNER_WAIT_S``."""
    deadline = time.monotonic() + OWNER_WAIT_S
    while stage_being_written(directory) and not _held_by_this_job(directory):
        if time.monotonic() > deadline:
            raise _refusal(directory)
        time.sleep(0.2)


def _held_by_this_job(directory: Path) -> bool:
    owner = _owner(directory)
    job = this_job()
    return (job is not None and owner.get("job") == job) or \
        (owner.get("host") == socket.gethostname() and owner.get("pid") == os.getppid())


def stage_being_written(directory: str | os.PathLike) -> bool:
    """Whether a run holds ``directory``'s lock (``stage_claimed``) now; a lock file left by a killed run is not
    held. A lock file this user cannot open (a read-only store, another user's folder) counts as not held."""
    from filelock import FileLock, Timeout

    path = Path(directory) / LOCK_FILE
    if not path.is_file():
        return False
    probe = FileLock(str(path), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    probe.release()
    return False
