"""A run that ran out of GPU or host memory, as the one-line error that names the settings that need less."""

from __future__ import annotations

import re

from omegaconf import DictConfig

from stablesdg.errors import UserError, exception_chain

FULL_PRECISIONS = {"32", "32-true", "64", "64-true"}


def memory_exhausted(exc: BaseException | None) -> tuple[str, str] | None:
    """``("GPU" | "host", what torch said of the allocation)`` where ``exc``, or an exception behind it, is torch
    running out of GPU memory (``torch.OutOfMemoryError``) or host memory (the CPU allocator's ``RuntimeError``,
    Python's ``MemoryError``); else None, also where a ``UserError`` comes first (a pipeline's step said it). torch's
    advice on fragmentation and its links are left out."""
    for exc in exception_chain(exc):
        if isinstance(exc, UserError):
            return None
        text = " ".join(str(exc).split())
        if type(exc).__name__ == "OutOfMemoryError" and type(exc).__module__.startswith("torch"):
            sentences = re.split(r"(?<=\.) ", text)
            kept = next((i for i, s in enumerate(sentences) if s.rstrip(".").endswith("is free")), 1)
            return "GPU", " ".join(sentences[:kept + 1]).rstrip(".")
        if isinstance(exc, RuntimeError) and "can't allocate memory" in text:
            return "host", re.sub(r"^.*?(can't allocate memory.*?bytes).*$", r"\1", text)
        if isinstance(exc, MemoryError):
            return "host", text or "MemoryError"
    return None


def out_of_memory_error(cfg: DictConfig, exc: BaseException) -> UserError | None:
    """For a run of ``cfg`` that ``exc`` ended by exhausting memory, a one-line ``UserError``: what ran out, torch's
    account of it, and the settings of ``cfg`` that would need less (on a GPU, an adaptation stage's
    ``stage.gradient_checkpointing=true``; a smaller ``stage.batch_size``; on a GPU, ``trainer.precision=bf16-mixed``
    in place of full precision; on the host, ``stage.preload=false``). None for any other error."""
    exhausted = memory_exhausted(exc)
    if exhausted is None:
        return None
    where, said = exhausted
    stage, trainer = cfg.stage, cfg.trainer
    hints = []
    if where == "GPU" and stage.get("gradient_checkpointing") is False:
        hints.append("stage.gradient_checkpointing=true (the same weights, for one more UNet forward pass per step)")
    batch_size = stage.get("batch_size")
    if isinstance(batch_size, int) and batch_size > 1:
        hints.append(f"a smaller stage.batch_size (now {batch_size})")
    if where == "GPU":
        precision = str(trainer.get("precision", "32-true"))
        if precision in FULL_PRECISIONS:
            hints.append(f"trainer.precision=bf16-mixed (now {precision})")
        hints.append("a GPU that no other process holds memory on (nvidia-smi lists them)")
    else:
        if stage.get("preload"):
            hints.append("stage.preload=false (images decoded at each epoch, not held in memory)")
        hints.append("more memory for the job (fewer jobs at once on the machine, a larger SLURM --mem)")
    return UserError(f"stage={stage.name} ran out of {where} memory ({said}); try {', or '.join(hints)}")
