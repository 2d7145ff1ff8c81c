"""What made a result, for telling results apart: the settings that shape it and their hash, the checksums of its
weight files, the identity of its input files, the versions of the code that ran and the machine it ran on.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from stablesdg.gpus import pinned_gpu

_VERSIONED_PACKAGES = (
    "stablesdg",
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "peft",
    "lightning",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "safetensors",
)


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages whose behaviour shapes the artifacts."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def versions_text() -> str:
    """What ``--version`` prints for each command: ``stablesdg <version>``, then Python's version and each package's of
    ``package_versions`` (those a ``result.json`` records), one per indented line."""
    versions = package_versions()
    own = versions.pop("stablesdg")
    return "\n".join([f"stablesdg {own}", *(f"  {name} {version}" for name, version in versions.items())])


def machine(gpu: Any = None) -> dict[str, Any]:
    """The machine a result was computed on, since the same settings and seed round floats otherwise on other hardware
    and over a training run the difference grows (a classifier's test accuracy moves by points): the CPU's model name,
    the instruction set torch chose its CPU kernels for (``torch.backends.cpu.get_cpu_capability``: ``AVX2``,
    ``AVX512``, ...), torch's CPU threads, and for a stage that computed on the GPU ``gpu`` (a ``torch.device``), its
    name and the CUDA version torch was built with; ``gpu`` and ``cuda`` are null for one that did not."""
    import torch

    on_gpu = gpu is not None and torch.device(gpu).type == "cuda"
    return {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(gpu) if on_gpu else None,
            "cuda": torch.version.cuda if on_gpu else None}


def cpu_name(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU's model name as Linux's ``cpuinfo`` file gives it (``AMD EPYC 9R14``), else as Python's ``platform``
    does (macOS, Windows), else the architecture (``aarch64``, whose ``cpuinfo`` names no model)."""
    try:
        with open(cpuinfo, encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The commit of the source tree this package runs from (suffix ``-dirty`` if modified), or None."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


_NO_EARLIER_VALUE = object()


def _generation_reads_its_own_variant(config: dict[str, Any]) -> Any:
    """``stage=generate`` read the adapters of its own variant before ``stage.model_variant`` existed."""
    stage = config.get("stage")
    return config.get("variant") if isinstance(stage, dict) and stage.get("name") == "generate" else _NO_EARLIER_VALUE


# Settings added after stores were first made, each with the value that does what the code did before it existed
# (or a function of the whole config giving it). A config holding one at that value hashes and compares as the config
# without it, so a store made before the setting existed stays up to date, resumes its unfinished work, and its sweep
# points and results compare with new ones.
LATER_SETTINGS: dict[tuple[str, ...], Any] = {
    ("dataset", "bit_depth"): None,
    ("dataset", "fit"): "crop",
    ("dataset", "split", "folders"): False,
    ("stage", "model_variant"): _generation_reads_its_own_variant,
}
# Settings that earlier stores recorded and no stage ever read, since removed from the configs: a config holding one,
# whatever its value, hashes and compares as the config without it.
REMOVED_SETTINGS: tuple[tuple[str, ...], ...] = (("dataset", "batch_size"), ("dataset", "num_workers"))


def without_later_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested ``config`` less each of ``LATER_SETTINGS`` that holds its earlier behaviour's value, and
    less ``REMOVED_SETTINGS``."""
    config = without_settings(config, REMOVED_SETTINGS)
    for (*parents, key), value in LATER_SETTINGS.items():
        holder = _holder(config, parents)
        earlier = value(config) if callable(value) else value
        if holder is not None and key in holder and holder[key] == earlier:
            del holder[key]
    return config


def without_settings(config: dict[str, Any], settings: Iterable[str | tuple[str, ...]]) -> dict[str, Any]:
    """A copy of the nested ``config`` less the ``settings``, each a dotted key (``classifier.weights``) or its
    parts (``("classifier", "weights")``)."""
    config = json.loads(json.dumps(config, default=str))
    for setting in settings:
        *parents, key = setting.split(".") if isinstance(setting, str) else setting
        holder = _holder(config, parents)
        if holder is not None:
            holder.pop(key, None)
    return config


def _holder(config: dict[str, Any], parents: list[str]) -> dict[str, Any] | None:
    """The nested dict of ``config`` at the keys ``parents``, or None where there is none."""
    holder: Any = config
    for parent in parents:
        holder = holder.get(parent) if isinstance(holder, dict) else None
    return holder if isinstance(holder, dict) else None


# A stage's settings of how its run goes about the work, not of what it makes: where its code lives (which a new version
# may move), whether it resumes, how often it saves checkpoints and whether it keeps them, how it loads images, which
# score it returns to a sweeper (stage.objective). Each gives the same artifacts either way (tests/test_classify.py for
# preloading; the resume tests for a run stopped anywhere).
STAGE_CODE = ("runner", "checks", "inputs")
RUN_MECHANICS = (*STAGE_CODE, "resume", "keep_checkpoints", "checkpoint_every", "preload", "num_workers", "objective")
# The model's settings of how it is built, not of what it is: where model=sd15_random keeps the weights it draws for a
# seed (the same weights wherever that is, or without it)
MODEL_MECHANICS = ("weights_cache",)

# Settings that say only where files go, how a run is logged or shown, or how much memory it computes the same numbers
# in: two configs that differ in nothing else make the same results, so moving the store, the logs or the dataset,
# logging to W&B instead of CSV, a generated set's grid.png of more images, or an adaptation rerun with gradient
# checkpointing after it ran out of GPU memory (which resumes from its checkpoint), reruns nothing; nor do the trainer's
# settings of its output and of time alone (how often it logs, its model summary and progress bar, its profiler, a time
# budget, trainer.max_time, which a cluster job adds: the steps stay the steps), nor whether a run on its own skips
# an up-to-date result (skip_up_to_date). (Which one GPU a run
# used does not count either, as multirun jobs that each take a GPU of their own keep trainer.devices=1.) Which images
# the dataset holds, wherever dataset.root finds them, is for its split file in the store to say: other images under
# the dataset's name are refused (DefectDataModule.setup; a pipeline checks them before its first step).
SETTINGS_NOT_SHAPING_RESULTS: tuple[tuple[str, ...], ...] = (
    ("paths",), ("logger",), ("skip_up_to_date",), ("trainer", "default_root_dir"), ("dataset", "split_dir"),
    ("dataset", "root"), ("stage", "grid_images"), ("stage", "gradient_checkpointing"),
    ("trainer", "log_every_n_steps"), ("trainer", "enable_model_summary"), ("trainer", "enable_progress_bar"),
    ("trainer", "profiler"), ("trainer", "max_time"),
)
# Lightning's short names of its precisions (lightning.Trainer's ``precision``), each training as the name it stands for
PRECISION_ALIASES = {"64": "64-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}


def recorded_config(cfg: DictConfig) -> dict[str, Any]:
    """Every setting of ``cfg``'s run, resolved, as its ``result.json`` records them (and its logger's run logs them):
    less Hydra's own and, for a stage other than ``pipeline``, the ``pipeline`` settings, which shape that stage only
    (a changed pipeline never invalidates a TI run)."""
    resolved = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]), resolve=True)
    if cfg.stage.name != "pipeline":
        resolved.pop("pipeline", None)
    return resolved


def settings_shaping_results(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested resolved ``config`` less ``SETTINGS_NOT_SHAPING_RESULTS``, with one GPU named by its
    index (``trainer.devices=[2]``) as one device, and a precision by its full name (``PRECISION_ALIASES``:
    ``trainer.precision=32`` as ``32-true``): what a result depends on."""
    config = without_settings(config, SETTINGS_NOT_SHAPING_RESULTS)
    trainer = config.get("trainer")
    if isinstance(trainer, dict) and pinned_gpu(trainer.get("devices")) is not None:
        trainer["devices"] = 1
    if isinstance(trainer, dict) and str(trainer.get("precision")) in PRECISION_ALIASES:
        trainer["precision"] = PRECISION_ALIASES[str(trainer["precision"])]
    return config


def config_hash(config: dict[str, Any]) -> str:
    """A stable SHA-256 of a resolved config (key order does not matter; ``LATER_SETTINGS`` at their earlier
    behaviour's values and ``REMOVED_SETTINGS`` do not count)."""
    return hashlib.sha256(json.dumps(without_later_defaults(config), sort_keys=True, default=str).encode("utf-8")
                          ).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_checksums(directory: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every ``.safetensors`` artifact under ``directory`` (not checkpoints), by relative path."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): file_sha256(p) for p in sorted(directory.rglob("*.safetensors"))
            if "checkpoints" not in p.relative_to(directory).parts}


def files_identity(files: Iterable[str | os.PathLike]) -> list[tuple[str, int, int]]:
    """Name, size and modification time (ns) of each file, in order: what identifies inputs that no stage recorded
    checksums for (generated images, an imported folder) without reading them."""
    return [(Path(f).name, state.st_size, state.st_mtime_ns) for f in files for state in [os.stat(f)]]
