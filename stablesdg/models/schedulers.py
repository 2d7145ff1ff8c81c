"""``HostTimestepsDDIMScheduler``: diffusers' DDIM whose ``step`` reads no GPU value on the host."""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler


class HostTimestepsDDIMScheduler(DDIMScheduler):
    """``DDIMScheduler`` that takes each step's timestep from a host copy of its schedule.

    Pipelines keep ``scheduler.timesteps`` on the GPU and pass each entry to ``step``, where DDIM indexes its table
    with it and compares it with 0: reads of a GPU value, each of which waits for the GPU to finish its queued work
    (about six per denoising step). A pipeline calls ``step`` once per entry of ``timesteps[begin_index:]``, in
    order (img2img sets ``begin_index`` through ``set_begin_index``, which plain DDIM lacks), so a counter finds the
    same timestep as a Python int and every number stays the same bit for bit. A call past the end of the schedule
    uses the timestep it was given."""

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        super().set_timesteps(num_inference_steps, device=device)
        self._host_timesteps: list[int] = self.timesteps.tolist()  # one read per pipeline call, not per step
        self._host_index = 0

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the host schedule at ``begin_index`` (img2img skips the first ``(1 - strength)`` of the steps)."""
        self._host_index = int(begin_index)

    def step(self, model_output, timestep, sample, *args, **kwargs):
        index = getattr(self, "_host_index", None)
        if index is not None and index < len(self._host_timesteps):
            timestep = self._host_timesteps[index]
            self._host_index = index + 1
        return super().step(model_output, timestep, sample, *args, **kwargs)
