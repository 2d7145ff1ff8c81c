"""What a training run prints: Lightning's Rich progress bar reading its metrics only every log step, progress as
log lines where the output goes to a file, Lightning's notices that say nothing about the run silenced, and its
"max_steps reached" in the stage's steps."""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from stablesdg.once import first_time

log = logging.getLogger(__name__)


class ProgressLines(L.Callback):
    """Progress as log lines, for runs whose output goes to a file (SLURM, nohup), where no progress bar shows.

    Logs at every ``1/parts`` of the run (``step k/n``, elapsed time and an estimate of the time left) and, at the
    end of each epoch that ran a validation, the epoch's scalar metrics (training and validation). Lightning
    validates before the training epoch ends, when its epoch metrics (``train/acc``) are not yet computed: a line
    written then would show the previous epoch's.
    """

    def __init__(self, stage: str, parts: int = 10, optimizer_steps: int = 1) -> None:
        self.stage, self.parts, self.optimizer_steps = stage, parts, optimizer_steps
        self._started = self._first_done = self._next = None
        self._validated = False

    def progress(self, trainer: L.Trainer, batch_idx: int) -> tuple[int, int]:
        """(steps done, steps in all): the stage's steps when ``max_steps`` bounds the run (each of
        ``optimizer_steps`` optimiser steps, as Lightning counts them), else batches over all epochs."""
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.global_step // self.optimizer_steps, trainer.max_steps // self.optimizer_steps
        per_epoch = int(trainer.num_training_batches)
        return trainer.current_epoch * per_epoch + batch_idx + 1, int(trainer.max_epochs) * per_epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        done, total = self.progress(trainer, batch_idx)
        if self._started is None:
            self._started, self._first_done = time.monotonic(), done - 1
            self._next = done
        if done < self._next or not trainer.is_global_zero:
            return
        self._next = (math.floor(done * self.parts / total) + 1) * total / self.parts
        elapsed = time.monotonic() - self._started
        left = elapsed / max(done - self._first_done, 1) * (total - done)
        log.info("stage=%s: step %d/%d (%d%%), %s elapsed, about %s left", self.stage, done, total,
                 100 * done // total, timedelta(seconds=round(elapsed)), timedelta(seconds=round(left)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        validated, self._validated = self._validated, False
        if not validated or not trainer.is_global_zero:
            return
        scalars = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        if scalars:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(scalars.items()))
            log.info("stage=%s: epoch %d/%d: %s", self.stage, trainer.current_epoch + 1, trainer.max_epochs, shown)


_DEVICE_NOTICES = ("GPU available:", "TPU available:", "HPU available:")


class _DropLightningNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(_DEVICE_NOTICES):  # the same devices for every stage of a pipeline or multirun
            return first_time(record.name, record.getMessage())
        # a stage counted in steps trains one epoch of them, which Lightning names as the reason it stopped where
        # trainer.max_time stopped it early (the stage's own line says where and why)
        return not (message.startswith("\N{ELECTRIC LIGHT BULB} Tip:")
                    or message.startswith("`Trainer.fit` stopped: `max_epochs=1` reached."))


def quiet_trainer_notices() -> None:
    """Silence Lightning's notices that say nothing about the run: its product tip, its "max_epochs=1 reached" where
    trainer.max_time stopped a stage counted in steps, a torch deprecation inside Lightning, the "checkpoint directory
    is not empty" warning (ours holds the config stamp by design), the one that modules are in eval mode (the frozen
    ones are, by design) and the one that a manually optimised module's checkpoints hold its state after the step
    (the GAN's resume from exactly that), that a GPU is not used, which ``stablesdg.gpus.note_unused_gpu`` says in
    the terms of our settings, and that DDP may evaluate an image twice, which ``stablesdg.stages.classify`` says
    where it does. Its lines naming the devices (GPU, TPU available) are said once per process, at the first stage
    that trains. Where the root logger has handlers (Hydra's console and log file), Lightning's own console handler
    goes, which printed each of its messages twice."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # manual optimisation (the GAN): a checkpoint holds the state after the step's updates, which is what resuming needs
    warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization and every_n_train_steps")
    # said in our settings' terms (stablesdg.gpus.note_unused_gpu)
    warnings.filterwarnings("ignore", message=r"GPU available but not used")
    # said only where it applies, with the images it counts twice (stablesdg.stages.classify.note_uneven_evaluation)
    warnings.filterwarnings("ignore", message=r"Using `DistributedSampler` with the dataloaders")
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in [h for h in lightning_logger.handlers if type(h) is logging.StreamHandler]:
            lightning_logger.removeHandler(handler)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningNotices) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLightningNotices())


class _MaxStepsInStageSteps(logging.Filter):
    def __init__(self, optimizer_steps: int) -> None:
        super().__init__()
        self.optimizer_steps = optimizer_steps

    def filter(self, record: logging.LogRecord) -> bool:
        reached = re.fullmatch(r"`Trainer.fit` stopped: `max_steps=(\d+)` reached.", str(record.msg))
        if reached:
            record.msg = f"`Trainer.fit` stopped: `max_steps={int(reached[1]) // self.optimizer_steps}` reached."
        return True


@contextlib.contextmanager
def max_steps_notice_in_stage_steps(optimizer_steps: int) -> Iterator[None]:
    """While the block runs, Lightning's "`Trainer.fit` stopped: `max_steps=N` reached." counts the stage's steps,
    each ``optimizer_steps`` of Lightning's (a GAN's generator and discriminator updates), as ``stage.max_steps``
    does, rather than Lightning's own (twice the GAN's)."""
    if optimizer_steps == 1:
        yield
        return
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    in_stage_steps = _MaxStepsInStageSteps(optimizer_steps)
    rank_zero.addFilter(in_stage_steps)
    try:
        yield
    finally:
        rank_zero.removeFilter(in_stage_steps)


class MetricsEveryLogStep(RichProgressBar):
    """Lightning's Rich progress bar, reading the logged metrics only every ``every`` training steps, and showing the
    training metrics (``train/...``) itself.

    Reading a metric that lives on the GPU waits for the GPU to finish (a host synchronisation), which leaves the GPU
    idle while the next step is queued. The stock bar reads its metrics after every step, and Lightning turns every
    metric logged with ``prog_bar=True`` into a Python number after every step whether a bar shows it or not. So our
    training modules log their per-step metrics without ``prog_bar``, and this bar reads them from
    ``trainer.callback_metrics`` when it refreshes. The logger's version (``v_num``) shows as the integer it is."""

    def __init__(self, every: int):
        super().__init__()
        self.every = max(1, int(every))
        self._shown: dict[str, Any] = {}

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if not trainer.training or trainer.global_step % self.every == 0 or not self._shown:
            training = {name: float(value) for name, value in trainer.callback_metrics.items()
                        if name.startswith("train/") and value.numel() == 1}
            standard = super().get_metrics(trainer, pl_module)
            if isinstance(standard.get("v_num"), int):  # the bar formats numbers as floats: "v_num: 2.000"
                standard["v_num"] = str(standard["v_num"])
            self._shown = {**standard, **training}
        return self._shown


def stdout_is_terminal() -> bool:
    """Whether standard output, where Rich draws Lightning's progress bar, is a terminal."""
    return sys.stdout.isatty()
