"""Shared fixtures: composed configs, the NEU data location, small image folders. No test touches the network."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

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


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(*overrides)``: a config whose artifacts and logs go to ``tmp_path``."""

    def _make(*overrides: str) -> DictConfig:
        return compose_config([f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs", *overrides])

    return _make


def run_cli(tmp_path: Path, *overrides: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``python -m stablesdg.train`` with ``overrides``, run by Hydra inside this process (no interpreter start-up).

    For tests whose subject is what a command does, not the process boundary (tests/test_cli.py runs real
    subprocesses). Returns the exit code and what the command printed, like ``subprocess.run``.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from stablesdg import train

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
