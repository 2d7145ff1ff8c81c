"""Which GPU a process computes on: the one ``trainer.devices`` names, or, for the jobs of a multirun that run side by
side on one machine (``hydra/launcher=joblib``), a GPU of its own per job, so that six categories on a machine with
four GPUs do not all train on the first.

A multirun job with ``trainer.devices=1`` on a machine that shows several GPUs holds one of them while it runs: the
first free one from its job number on (job n tries GPU n mod the count first), claimed by a lock file in the sweep's
folder (``.gpus/gpu<k>.lock``) and freed when the job ends. Where every GPU is held, it shares GPU n mod the count.

Lightning takes the trainer's GPU from the ``devices`` it is built with; the work outside its loop (latent caching,
generation, FID features) takes torch's current device. ``use_this_process_gpu`` sets that to the same GPU.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, ListConfig

from stablesdg.choices import DEVICE_STAGES, TRAINED_STAGES
from stablesdg.errors import UserError
from stablesdg.once import warn_once

log = logging.getLogger(__name__)

_GPU_ACCELERATORS = ("gpu", "cuda", "auto")
_job_gpu: dict[str, Any] = {"index": None, "lock": None}  # the GPU this process's multirun job holds


def pinned_gpu(devices: Any) -> int | None:
    """The one GPU index ``trainer.devices`` names, as Lightning reads it (``[2]``, ``"2,"``); None where it gives a
    count of devices (``1``, ``"1"``, ``-1``, ``"auto"``) or names several (DDP)."""
    if isinstance(devices, (list, tuple, ListConfig)):
        return int(devices[0]) if len(devices) == 1 else None
    if isinstance(devices, str) and "," in devices:
        indices = [part.strip() for part in devices.split(",") if part.strip()]
        return int(indices[0]) if len(indices) == 1 else None
    return None


def on_gpus(trainer: DictConfig) -> bool:
    """Whether ``trainer`` settings compute on a GPU where one is shown (``trainer.accelerator`` gpu, cuda or auto)."""
    return str(trainer.get("accelerator", "auto")) in _GPU_ACCELERATORS


def gpu_per_job(trainer: DictConfig, gpu_count: int) -> bool:
    """Whether multirun jobs with ``trainer`` settings each take a GPU of their own: ``trainer.devices=1`` on GPUs, on
    a machine that shows ``gpu_count`` > 1 (one shown, as a SLURM job or ``CUDA_VISIBLE_DEVICES`` gives, is the job's)."""
    return on_gpus(trainer) and gpu_count > 1 and str(trainer.get("devices", "auto")) == "1"


def multirun_job() -> tuple[int, Path] | None:
    """This job's number in its Hydra multirun (``hydra.job.num``) and the sweep's folder, or None outside a
    multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return (int(hydra_cfg.job.num), Path(hydra_cfg.sweep.dir)) if hydra_cfg.mode == RunMode.MULTIRUN else None


def claim_gpu(job_number: int, sweep_dir: Path, gpu_count: int) -> int:
    """Hold a GPU for multirun job ``job_number`` until ``release_gpu``: the first whose lock file under
    ``sweep_dir/.gpus`` no other job holds, from GPU ``job_number`` mod ``gpu_count`` on; where all are held, GPU
    ``job_number`` mod ``gpu_count``, shared. Says which in the log. A job that holds one already keeps it."""
    from filelock import FileLock, Timeout

    if _job_gpu["index"] is not None:
        return _job_gpu["index"]
    folder = sweep_dir / ".gpus"
    folder.mkdir(parents=True, exist_ok=True)
    for offset in range(gpu_count):
        index = (job_number + offset) % gpu_count
        lock = FileLock(folder / f"gpu{index}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        _job_gpu.update(index=index, lock=lock)
        log.info("multirun job %d computes on GPU %d of the %d this machine shows (trainer.devices=[<index>] names one)",
                 job_number, index, gpu_count)
        return index
    index = job_number % gpu_count
    _job_gpu.update(index=index, lock=None)
    log.warning("multirun job %d shares GPU %d: the other jobs of its multirun hold all %d GPUs this machine shows "
                "(hydra.launcher.n_jobs=%d runs one job per GPU)", job_number, index, gpu_count, gpu_count)
    return index


def release_gpu() -> None:
    """Free the GPU this process's multirun job holds (``claim_gpu``), if any, with the memory torch cached on it."""
    lock = _job_gpu["lock"]
    _job_gpu.update(index=None, lock=None)
    if lock is not None:
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        lock.release()


@contextmanager
def gpu_freed_at_end() -> Iterator[None]:
    """Around a multirun job: whatever GPU it claims is freed when it ends, however it ends (a process of the
    launcher's may run the next job)."""
    try:
        yield
    finally:
        release_gpu()


def this_process_gpu(cfg: DictConfig) -> int | None:
    """The GPU this process computes on, where it is not Lightning's own choice: the one ``trainer.devices`` names, or
    the one this multirun job holds (claimed at the first call, see ``claim_gpu``); None on a CPU, for a single run
    (the first GPU) and for DDP (each process its own)."""
    import torch

    if not on_gpus(cfg.trainer) or not torch.cuda.is_available():
        return None
    pinned = pinned_gpu(cfg.trainer.get("devices"))
    if pinned is not None:
        return pinned
    job = multirun_job()
    gpu_count = torch.cuda.device_count()
    if job is None or not gpu_per_job(cfg.trainer, gpu_count):
        return None
    return claim_gpu(job[0], job[1], gpu_count)


def use_this_process_gpu(cfg: DictConfig) -> None:
    """Make ``this_process_gpu`` torch's current device, so that the work outside Lightning's loop runs on the GPU its
    trainer trains on (``stablesdg.training.build_trainer`` gives the trainer the same one)."""
    index = this_process_gpu(cfg)
    if index is not None:
        import torch

        torch.cuda.set_device(index)


def note_unused_gpu(cfg: DictConfig) -> None:
    """Warn where a GPU is visible but the trainer settings (``trainer=cpu``, the default) keep a stage whose work runs
    on their device (``DEVICE_STAGES``) on the CPU, where SD1.5 runs many times slower; generation and scoring would
    say nothing of it, and Lightning's own warning for the trained stages names its API, not our setting."""
    if cfg.stage.name not in DEVICE_STAGES or on_gpus(cfg.trainer):
        return
    import torch

    if torch.cuda.is_available():
        warn_once(log, "a GPU is visible (%s), but trainer.accelerator=%s runs stage=%s on the CPU; add trainer=gpu "
                  "(or hide the GPU, CUDA_VISIBLE_DEVICES=, to keep it on the CPU)", torch.cuda.get_device_name(),
                  cfg.trainer.get("accelerator"), cfg.stage.name)


def _runs_code_for(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch built for the CUDA architectures ``arch_list`` (``torch.cuda.get_arch_list()``: ``sm_80``
    kernels, ``compute_90`` PTX) has code for a GPU of compute ``capability``: kernels of its major version and no
    later minor one, or PTX of no later version, which the driver compiles for it."""
    device = 10 * capability[0] + capability[1]
    for arch in arch_list:
        kind, _, version = arch.partition("_")
        code = int(version.rstrip("af")) if version.rstrip("af").isdigit() else None
        if code is None:
            continue
        if kind == "sm" and code // 10 == capability[0] and code <= device:
            return True
        if kind == "compute" and code <= device:
            return True
    return False


def require_gpus_this_torch_runs(cfg: DictConfig) -> None:
    """Where ``cfg``'s stage computes on the visible GPUs: a one-line ``UserError`` for a GPU this torch build has
    no CUDA code for (a V100, compute capability 7.0, under a CUDA 13 build of torch, which starts at 7.5), where
    the first kernel would otherwise fail with torch's "no kernel image is available" stack trace; and a warning
    where ``trainer.precision`` asks for bfloat16 on a GPU without bfloat16 arithmetic (before compute capability
    8.0: a T4, a V100), where torch computes bf16 in float32, slower than float16."""
    if cfg.stage.name not in DEVICE_STAGES or not on_gpus(cfg.trainer):
        return
    import torch

    if not torch.cuda.is_available() or torch.version.cuda is None:  # ROCm builds name no CUDA architectures
        return
    arch_list = list(torch.cuda.get_arch_list())
    for index in range(torch.cuda.device_count()):
        capability = tuple(torch.cuda.get_device_capability(index))
        name = f"GPU {index}, {torch.cuda.get_device_name(index)} (compute capability {capability[0]}.{capability[1]})"
        if arch_list and not _runs_code_for(capability, arch_list):
            raise UserError(f"this torch ({torch.__version__}) has no CUDA code for {name}: it was built for "
                            f"{' '.join(arch_list)}; install a torch build for this GPU "
                            "(https://pytorch.org/get-started/locally/), hide it (CUDA_VISIBLE_DEVICES), or run on "
                            "the CPU (trainer=cpu)")
        if str(cfg.trainer.get("precision")).startswith("bf16") and capability[0] < 8:
            warn_once(log, "trainer.precision=%s on %s, which has no bfloat16 arithmetic: torch computes bf16 in "
                      "float32 there, slower than float16; set trainer.precision=16-mixed (float16) or 32-true",
                      cfg.trainer.get("precision"), name)


def require_one_process_outside_training(cfg: DictConfig, num_devices: int) -> None:
    """Where the trainer settings ask for several devices (``num_devices``, as Lightning counts them: ``trainer=ddp``,
    ``trainer.devices=2``): a one-line ``UserError`` for ``stage=pipeline``, whose steps run in this one process (DDP
    would start the whole pipeline again in every process), and a warning for a stage Lightning does not train,
    which runs in one process on one device however many are named."""
    if num_devices <= 1 or cfg.stage.name in TRAINED_STAGES:
        return
    several = f"trainer.devices={cfg.trainer.get('devices')} ({num_devices} devices)"
    spread = "-m category=Cr,Pa,... hydra/launcher=joblib gives each job a GPU of its own"
    if cfg.stage.name == "pipeline":
        raise UserError(f"stage=pipeline runs its steps in one process, and {several} would start the whole pipeline "
                        f"in each; give it one device (trainer=gpu) and run categories side by side instead: {spread}")
    warn_once(log, "stage=%s runs in one process on one device: %s splits the steps of the training stages (%s) only. "
              "For several GPUs, run several jobs: %s", cfg.stage.name, several, ", ".join(TRAINED_STAGES), spread)
