"""StableSDG installed as a wheel (``pip install .``, ``pip install git+URL``), not from the repository in place: it runs
from any folder with the repository's configs, experiments and sweeps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONFIG_DIR, REPO, SWEEP_DIR

SOURCES = ("stablesdg", "conf", "experiments", "multirun_sweeps")  # what the wheel is built from, with its links


def yaml_files(folder: Path) -> dict[str, bytes]:
    """Each YAML file under ``folder`` (through its links, as Hydra reads them) by its path there, with its bytes."""
    return {str(Path(root, name).relative_to(folder)): Path(root, name).read_bytes()
            for root, _, names in os.walk(folder, followlinks=True) for name in names if name.endswith(".yaml")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A folder that ``pip install --target`` filled from a copy of the repository's sources (no network, no
    dependencies: they are this environment's)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in SOURCES:
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True, timeout=300)
    return site


def run_installed(site: Path, cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environment.update({"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"})
    cwd.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, *arguments], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=300)


def test_an_installed_wheel_holds_every_config_of_the_repository_as_a_plain_copy(installed, tmp_path):
    done = run_installed(installed, tmp_path, "-c", "import stablesdg.train as t; print(t.__file__); print(t.CONFIG_DIR)")
    assert done.returncode == 0, done.stderr
    module, config_dir = map(Path, done.stdout.split())
    assert module == installed / "stablesdg" / "train.py", "the installed copy, not the repository's"
    assert config_dir == installed / "stablesdg" / "conf" and not config_dir.is_symlink()
    assert yaml_files(config_dir) == yaml_files(CONFIG_DIR)  # experiments included: conf/experiment links to them
    assert yaml_files(installed / "stablesdg" / "multirun_sweeps") == yaml_files(SWEEP_DIR)


def test_an_installed_wheel_runs_a_stage_an_experiment_and_the_report_from_any_folder(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    done = run_installed(installed, elsewhere, "-m", "stablesdg.train", "stage.build_model=false", "logger=none")
    assert done.returncode == 0, done.stderr
    record = json.loads((elsewhere / "artifacts/synthetic/all/default/inspect/result.json").read_text())
    assert record["metrics"]["dataset"]["split_sizes"] == {"train": 128, "val": 16, "test": 16}
    composed = run_installed(installed, elsewhere, "-m", "stablesdg.train", "+experiment=table4_grid", "--cfg", "job")
    assert composed.returncode == 0, composed.stderr
    assert "name: neu" in composed.stdout and "category: Pa" in composed.stdout
    reported = run_installed(installed, elsewhere, "-m", "stablesdg.report", "--dataset", "synthetic")
    assert reported.returncode == 0, reported.stderr  # the paper's tables, read from the installed package's data
    assert "### Table V: FID per NEU category (ours on dataset synthetic)" in (
        elsewhere / "artifacts/report/report.md").read_text()


def test_an_installed_wheel_names_the_sweeps_it_holds_where_the_folder_has_no_multirun_sweeps(installed, tmp_path):
    shipped = installed / "stablesdg" / "multirun_sweeps"
    done = run_installed(installed, tmp_path, "-m", "stablesdg.train", "-m", "+sweep=seeds", "logger=none")
    assert (done.returncode, done.stderr) == (2, "error: +sweep=seeds: the sweep configs are in multirun_sweeps/, read "
                                                 "by a multirun that names the folder: python -m stablesdg.train -m "
                                                 f"--config-dir {shipped} +sweep=seeds ...\n")
    swept = run_installed(installed, tmp_path, "-m", "stablesdg.train", "-m", "--config-dir", str(shipped),
                          "+sweep=seeds", "stage.build_model=false", "logger=none", "paths.logs=logs")
    assert swept.returncode == 0, swept.stderr
    seeds = {path.parent.parent.name: json.loads(path.read_text())["config"]["seed"]
             for path in (tmp_path / "artifacts/synthetic/all").glob("*/inspect/result.json")}
    assert seeds == {"seed0": 0, "seed1": 1, "seed2": 2}, "one job per seed of the shipped sweep config"


def test_make_clean_removes_what_install_made_and_keeps_the_results(tmp_path):
    for folder in (".venv/bin", "stablesdg.egg-info", "artifacts/neu/Pa/default/ti", "logs/runs"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "artifacts/neu/Pa/default/ti/result.json").write_text("{}")
    done = subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), "clean"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "logs"]
    assert (tmp_path / "artifacts/neu/Pa/default/ti/result.json").read_text() == "{}"
