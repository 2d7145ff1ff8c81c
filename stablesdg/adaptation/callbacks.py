"""Lightning callbacks of the adaptation stages: validation image grids and the loss history."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import lightning as L
import torch
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

from stablesdg.atomic_files import save_png_atomic, write_bytes_atomic
from stablesdg.training import sigterm_received


@torch.no_grad()
def render_images(module, prompt: str, num_images: int, seed: int, num_inference_steps: int) -> list:
    """Text-to-image samples of ``prompt`` from the module's current weights, image ``i`` seeded ``seed + i``."""
    from stablesdg.models.schedulers import HostTimestepsDDIMScheduler

    components = module.components
    pipe = components.pipeline(scheduler=HostTimestepsDDIMScheduler.from_config(components.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator(device=module.device).manual_seed(seed + i) for i in range(num_images)]
    return pipe(prompt, num_inference_steps=num_inference_steps, generator=generators, num_images_per_prompt=num_images,
                height=components.resolution, width=components.resolution).images


class ValidationImages(L.Callback):
    """Every ``every_n_steps`` steps and at the end: a grid of fixed-seed samples, to PNG and the logger, computed in
    the training steps' precision."""

    def __init__(self, out_dir: Path, every_n_steps: int, num_images: int, seed: int, num_inference_steps: int):
        self.out_dir = Path(out_dir)
        self.every_n_steps = int(every_n_steps)
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.num_inference_steps = int(num_inference_steps)

    def _render(self, trainer: L.Trainer, module) -> None:
        if not trainer.is_global_zero or self.num_images < 1:
            return
        step = trainer.global_step
        with trainer.precision_plugin.forward_context():  # as training computes (autocast under mixed precision)
            images = render_images(module, module.prompt, self.num_images, self.seed, self.num_inference_steps)
        grid = to_pil_image(make_grid(torch.stack([pil_to_tensor(i) for i in images]), nrow=min(4, len(images))))
        save_png_atomic(self.out_dir / f"step_{step:06d}.png", grid)
        if hasattr(trainer.logger, "log_image"):
            trainer.logger.log_image(key="validation", images=[grid], step=step)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._render(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        # after a SIGTERM, the artifact is saved without this grid's seconds (a cluster kills soon after)
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps != 0 and not sigterm_received(trainer):
            self._render(trainer, module)


class LossHistory(L.Callback):
    """Keeps every step's loss (no host sync per step) and writes ``loss.csv`` when asked.

    Its history is part of each checkpoint, so a resumed run's ``loss.csv`` and loss metrics are the uninterrupted
    run's.
    """

    def __init__(self):
        self.steps: list[int] = []
        self.resumed_losses: list[float] = []  # the steps before a resume, restored from the checkpoint
        self.losses: list[torch.Tensor] = []   # this process's steps, on the training device

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.steps.append(trainer.global_step)
        self.losses.append(loss.detach())

    def values(self) -> list[float]:
        """The recorded losses as floats, those restored from a checkpoint first (one host transfer)."""
        return self.resumed_losses + (torch.stack(self.losses).float().cpu().tolist() if self.losses else [])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"steps": torch.tensor(self.steps, dtype=torch.long), "losses": torch.tensor(self.values())}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.steps, self.resumed_losses, self.losses = state_dict["steps"].tolist(), state_dict["losses"].tolist(), []

    def write_csv(self, path: Path) -> None:
        """``step,loss`` rows, one per optimiser step since the run began (before a resume too)."""
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["step", "loss"])
        writer.writerows(zip(self.steps, self.values()))
        write_bytes_atomic(path, text.getvalue().encode("utf-8"))
