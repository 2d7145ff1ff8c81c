"""Shared fixtures: composed configs, the NEU data location, small image folders. No test touches the network."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path
from unittest import mock

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch.utils._python_dispatch import TorchDispatchMode

from stablesdg.schema import register_schema

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "conf"
SWEEP_DIR = REPO / "multirun_sweeps"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
register_schema()  # as the entry point does

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # Under ``pytest -n N`` the workers share the cores: each gets its share of threads, and so do the
    # commands it starts (they inherit OMP_NUM_THREADS), so no two runs a test compares differ in it.
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


# Where a command writes by default (paths.artifacts, paths.logs), from the repository or from tests/. A test that
# leaves one of them behind has written where a user's first command then reads (a quickstart refused the split a
# test had left there), so the run fails.
DEFAULT_OUTPUTS = [folder / name for folder in (REPO, REPO / "tests") for name in ("artifacts", "logs")]


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_OUTPUTS_BEFORE] = {path for path in DEFAULT_OUTPUTS if path.exists()}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controlling process checks once, at the end
        return
    left = [path for path in DEFAULT_OUTPUTS if path.exists() and path not in session.config.stash[_OUTPUTS_BEFORE]]
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.ensure_newline()
        reporter.write_line(f"FAILED: tests wrote into {', '.join(map(str, left))} (the default paths.artifacts or "
                            "paths.logs); give each test's command paths under its tmp_path", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_OUTPUTS_BEFORE = pytest.StashKey[set]()


# Reads of tensor values on the host. On a GPU each waits until the device has finished all queued work; the same
# operators reach the dispatcher on every device, so a CPU run shows them (tests/test_host_reads.py).
VALUE_READS = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select", "_unique2", "unique_dim",
               "unique_consecutive", "repeat_interleave", "bincount"}
HOST_DATA = "lift_fresh"  # torch.tensor(data): made on the device, a blocking copy from the host, which waits
INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}


def _caller() -> str:
    """The innermost frame of the stack outside torch itself: who asked for the read."""
    frames = [f for f in traceback.extract_stack()[:-3] if "/torch/" not in f.filename]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


class HostReads(TorchDispatchMode):
    """Records every operator dispatched inside that reads tensor values on the host, with who called it; with
    ``host_data``, also every tensor built from host data."""

    def __init__(self, host_data: bool = True):
        super().__init__()
        self.reads: list[str] = []
        self.host_data = host_data

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        masked = name in INDEXING and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ())
        if name in VALUE_READS or masked or (self.host_data and name == HOST_DATA):
            self.reads.append(f"aten.{name} from {_caller()}")
        return func(*args, **(kwargs or {}))


def neu_root() -> Path:
    """Where the real NEU-DET data lives: $STABLESDG_NEU_ROOT, default ../shared/data/NEU-DET from the repo."""
    path = Path(os.environ.get("STABLESDG_NEU_ROOT", "../shared/data/NEU-DET"))
    return path if path.is_absolute() else (REPO / path).resolve()


@pytest.fixture(scope="session")
def neu_path() -> Path:
    path = neu_root()
    if not (path / "IMAGES").is_dir():
        pytest.skip(f"NEU-DET data not found at {path} (set STABLESDG_NEU_ROOT)")
    return path


def compose_config(overrides: list[str] | None = None, with_sweeps: bool = False, return_hydra: bool = False) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` exactly as the CLI would (optionally with multirun_sweeps/)."""
    overrides = list(overrides or [])
    if with_sweeps:
        overrides.append(f"hydra.searchpath=[file://{SWEEP_DIR}]")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=return_hydra)


@pytest.fixture(autouse=True)
def _warnings_said_afresh():
    """Each test starts as a new process would: no warning of ``once.warn_once`` said yet."""
    from stablesdg import once

    once._said.clear()


@pytest.fixture
def progress_lines(caplog):
    """``progress_lines()``: the lines the progress bars logged (under pytest no terminal shows a bar) since the
    last call, each cut before its timings: ``["reading data: 100%|##########| 20/20"]``."""
    caplog.set_level(logging.INFO, logger="stablesdg.progress")
    read = 0

    def since_last_call() -> list[str]:
        nonlocal read
        records = [r for r in caplog.records if r.name == "stablesdg.progress"]
        lines, read = [r.getMessage().split(" [")[0] for r in records[read:]], len(records)
        return lines

    return since_last_call


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(*overrides)``: a config whose artifacts and logs go to ``tmp_path``."""

    def _make(*overrides: str) -> DictConfig:
        return compose_config([f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs", *overrides])

    return _make


def meeting_port() -> int:
    """A free TCP port below the kernel's ephemeral range, for the processes of a DDP test to meet on (MASTER_PORT).

    A port from ``bind(0)`` is itself ephemeral: between its release and rank 0's bind, another test's DDP processes,
    whose gloo sockets and outgoing connections take ephemeral ports, may take it, and rank 1 then waits on a port
    rank 0 never opened."""
    import random
    import socket

    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) \
        if Path("/proc/sys/net/ipv4/ip_local_port_range").is_file() else 32768
    for port in random.SystemRandom().sample(range(20000, lowest_ephemeral), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between 20000 and {lowest_ephemeral}")


def outputs_of_all(tasks: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    """The (stdout, stderr) of each of ``tasks`` (DDP processes started together) once all have ended. One that
    fails ends the others a minute later (as ``srun --kill-on-bad-exit`` would), so the test says its error: they
    would otherwise wait for it until DDP's 30-minute timeout. Raises ``subprocess.TimeoutExpired`` after
    ``timeout`` seconds, having killed them all."""
    import threading
    import time

    said: list[list[list[str]]] = [[[], []] for _ in tasks]  # what each task wrote to its stdout and its stderr

    def read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    readers = [threading.Thread(target=read, args=(stream, into), daemon=True)
               for task, streams in zip(tasks, said) for stream, into in zip((task.stdout, task.stderr), streams)
               if stream is not None]
    for reader in readers:
        reader.start()
    deadline, failed_at = time.monotonic() + timeout, None
    while any(task.poll() is None for task in tasks):
        now = time.monotonic()
        if failed_at is None and any(task.poll() not in (None, 0) for task in tasks):
            failed_at = now
        if now > deadline or (failed_at is not None and now > failed_at + 60):
            for task in tasks:
                task.kill()
        time.sleep(0.2)
    for reader in readers:  # a killed task's own children may hold its pipes open: what came until then
        reader.join(timeout=10)
    for task in tasks:
        task.wait()
        for stream in (task.stdout, task.stderr):
            if stream is not None:
                stream.close()
    outputs = [("".join(out), "".join(err)) for out, err in said]
    if time.monotonic() > deadline:
        raise subprocess.TimeoutExpired(tasks[0].args, timeout, "".join(out + err for out, err in outputs))
    return outputs


def run_cli(tmp_path: Path, *overrides: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``python -m stablesdg.train`` with ``overrides``, run by Hydra inside this process (no interpreter start-up) as
    in a new one: no ``once.warn_once`` warning said yet.

    For tests whose subject is what a command does, not the process boundary (tests/test_cli.py runs real
    subprocesses). Returns the exit code and what the command printed, like ``subprocess.run``.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from stablesdg import once, train

    once._said.clear()  # as in a new process
    argv = ["stablesdg.train", *flags, f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs", *overrides]
    stdout, stderr = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # Hydra's job logging replaces them
    code = 0
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            train.main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            HydraConfig.instance().cfg = None
            GlobalHydra.instance().clear()
            root.handlers[:] = handlers
            root.setLevel(level)
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())
