"""diffusers' schedulers by name; DDIM, PNDM and DDPM in versions whose ``step`` reads no GPU value on the host."""

from __future__ import annotations

import functools
from typing import Any

import diffusers
from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler

from stablesdg.choices import SCHEDULERS, require_scheduler
from stablesdg.errors import UserError


class HostTimesteps:
    """Mixin for a diffusers scheduler that indexes its tables with the timestep: ``step`` takes each step's
    timestep from a host copy of the schedule.

    Pipelines keep ``scheduler.timesteps`` on the GPU and pass each entry to ``step``, where DDIM, PNDM and DDPM
    index their tables with it and compare it with 0: reads of a GPU value, each of which waits for the GPU to
    finish its queued work (about six per denoising step for DDIM). A pipeline calls ``step`` once per entry of
    ``timesteps[begin_index:]``, in order (img2img sets ``begin_index`` through ``set_begin_index``, which these
    schedulers lack), so a counter finds the same timestep as a Python int and every number stays the same bit for
    bit. A call past the end of the schedule uses the timestep it was given."""

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        self._host_timesteps: list[int] = self.timesteps.tolist()  # one read per pipeline call, not per step
        self._host_index = 0

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the host schedule at ``begin_index`` (img2img skips the first ``(1 - strength)`` of the steps)."""
        self._host_index = int(begin_index)

    def _next_host_timestep(self, timestep):
        index = getattr(self, "_host_index", None)
        if index is None or index >= len(self._host_timesteps):
            return timestep
        self._host_index = index + 1
        return self._host_timesteps[index]


def _with_host_timestep(step):
    """The scheduler's ``step``, taking the timestep from the host schedule, with the original's signature:
    pipelines pass ``eta`` and ``generator`` only to a ``step`` whose signature names them."""

    @functools.wraps(step)
    def host_step(self, model_output, timestep, sample, *args, **kwargs):
        return step(self, model_output, self._next_host_timestep(timestep), sample, *args, **kwargs)

    return host_step


class HostTimestepsDDIMScheduler(HostTimesteps, DDIMScheduler):
    """``DDIMScheduler`` with ``HostTimesteps``."""

    step = _with_host_timestep(DDIMScheduler.step)


class HostTimestepsPNDMScheduler(HostTimesteps, PNDMScheduler):
    """``PNDMScheduler`` with ``HostTimesteps``."""

    step = _with_host_timestep(PNDMScheduler.step)


class HostTimestepsDDPMScheduler(HostTimesteps, DDPMScheduler):
    """``DDPMScheduler`` with ``HostTimesteps``; the previous timestep also comes from the host schedule, where
    diffusers finds it with ``nonzero`` on the GPU schedule."""

    step = _with_host_timestep(DDPMScheduler.step)

    def previous_timestep(self, timestep):
        schedule = getattr(self, "_host_timesteps", None)
        if schedule and isinstance(timestep, int) and timestep in schedule:
            position = schedule.index(timestep)  # the first match, as diffusers' nonzero()[0][0]
            return schedule[position + 1] if position + 1 < len(schedule) else -1
        return super().previous_timestep(timestep)


def require_steps_within_schedule(steps: int, scheduler: Any, trained: str) -> None:
    """A one-line ``UserError`` when ``steps`` denoising steps are more than the ``num_train_timesteps`` of
    ``scheduler`` (``trained`` names the model: "the DDPM in <folder>"); diffusers refuses them only inside the
    first pipeline call, with a stack trace."""
    limit = int(scheduler.config.num_train_timesteps)
    if steps > limit:
        raise UserError(f"stage.num_inference_steps={steps} is more than the {limit} timesteps {trained} was trained "
                        f"with; use at most {limit}")


def make_scheduler(name: str, config: Any):
    """The diffusers scheduler ``name`` (ddim, pndm, ddpm, euler, dpmsolver++) built from ``config``."""
    require_scheduler(name)
    cls, extra = SCHEDULERS[name]
    return (globals().get(cls) or getattr(diffusers, cls)).from_config(config, **extra)
