"""No training step waits for the GPU: between logging intervals, no training loop reads a tensor's value on the host.

On a GPU, reading a value (``.item()``, ``float(t)``, ``bool(t)``), computing a shape from values (``nonzero``,
boolean masks, ``unique``) or building a tensor from host data (``torch.tensor``) makes the host wait until the
device has finished all queued work, so the next step cannot be queued meanwhile. Those reads reach the
dispatcher as the same operators on every device, so a CPU run shows them (``conftest.HostReads``). A CPU run also
shows reads of tensors that a GPU run keeps on the host (an optimiser's step counter, an augmentation's random
parameters); the stages below avoid those too.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

import stablesdg.stages.adapt as adapt_stage
import stablesdg.stages.baselines as baselines_stage
import stablesdg.stages.classify as classify_stage
from conftest import HostReads, compose_config
from stablesdg.training_output import MetricsEveryLogStep

FIRST_COUNTED, COUNTED = 4, 3  # batches 4-6: past the first step's set-up, and no logging interval among them


class CountHostReads(L.Callback):
    """``HostReads`` over ``COUNTED`` whole training batches (step, optimiser, callbacks, Lightning's bookkeeping)."""

    def __init__(self, host_data: bool = True):
        self.mode, self.batches, self.counted = HostReads(host_data), 0, 0
        self.seen: list = []  # each batch as the training step receives it

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append(batch)
        self.batches += 1
        if self.batches == FIRST_COUNTED:
            self.mode.__enter__()
        elif self.batches == FIRST_COUNTED + COUNTED:
            self.mode.__exit__(None, None, None)
            self.counted = COUNTED


def _run_counted(tmp_path, monkeypatch, stage_module, run, *overrides: str, host_data: bool = True) -> CountHostReads:
    counter = CountHostReads(host_data)
    run_fit = stage_module.run_fit

    def run_fit_counted(trainer, *args, **kwargs):
        trainer.callbacks.append(counter)
        return run_fit(trainer, *args, **kwargs)

    monkeypatch.setattr(stage_module, "run_fit", run_fit_counted)
    cfg = compose_config([f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs", "logger=none",
                          "trainer.log_every_n_steps=1000", *overrides])
    run(cfg, tmp_path / "out")
    return counter


# model.resolution=32: which operators a step dispatches does not depend on the image size; at 32 px a step costs a
# quarter of the work
ADAPTATION = ["category=Pa", "dataset.synthetic.per_class=10", "stage.max_steps=9", "stage.batch_size=2",
              "stage.validation_every=0", "stage.checkpoint_every=1000", "model.resolution=32"]


@pytest.mark.parametrize("overrides", [
    ["stage=ti"],
    ["stage=ti", "trainer.precision=bf16-mixed"],
    ["stage=lora", "stage.use_ti=false"],
    ["stage=lora", "stage.use_ti=false", "trainer.precision=bf16-mixed"],  # adapters in bf16, Adam over fp32 masters
    ["stage=full", "stage.use_ti=false"],
    ["stage=lora", "stage.use_ti=false", "stage.gradient_checkpointing=true"],  # the UNet's blocks recomputed
], ids=["ti", "ti-bf16", "lora", "lora-bf16", "full", "lora-checkpointing"])
def test_adaptation_steps_read_no_tensor_value_on_the_host(tmp_path, monkeypatch, overrides):
    run = {"ti": adapt_stage.adapt_ti, "lora": adapt_stage.adapt_lora, "full": adapt_stage.adapt_full}[overrides[0][6:]]
    counter = _run_counted(tmp_path, monkeypatch, adapt_stage, run, *ADAPTATION, *overrides)
    assert counter.counted == COUNTED
    assert counter.mode.reads == []
    # each step draws its own batch on the device; the loader only paces it, with nothing to copy there
    assert [(type(b), b) for b in counter.seen] == [(int, step) for step in range(9)]


@pytest.mark.parametrize("run, overrides", [
    (baselines_stage.run_ddpm, ["stage=ddpm", "stage.widths=[16,32]", "stage.layers_per_block=1", "stage.resolution=32"]),
    (baselines_stage.run_dcgan, ["stage=dcgan", "stage.width=8"]),
], ids=["ddpm", "dcgan"])
def test_baseline_steps_read_no_tensor_value_on_the_host(tmp_path, monkeypatch, run, overrides):
    counter = _run_counted(tmp_path, monkeypatch, baselines_stage, run, *overrides, "category=Pa",
                           "dataset.synthetic.per_class=10", "stage.max_steps=9", "stage.batch_size=2")
    assert counter.counted == COUNTED
    assert counter.mode.reads == []
    assert [(type(b), b) for b in counter.seen] == [(int, step) for step in range(9)]


def test_classifier_steps_read_no_tensor_value_on_the_host(tmp_path, monkeypatch):
    # with its augmentation (kornia's random rotations and flips of the batch). Its loader builds each batch on the
    # host from the image files, as every loader must, so tensors built from host data are not counted.
    counter = _run_counted(tmp_path, monkeypatch, classify_stage, lambda cfg, out: classify_stage.run(cfg, out),
                           "stage=classify", "classifier=squeezenet", "dataset.synthetic.per_class=12",
                           "stage.max_epochs=1", "stage.batch_size=2", host_data=False)
    assert counter.counted == COUNTED
    assert counter.mode.reads == []


def test_the_counter_sees_a_loss_read_on_the_host(tmp_path, monkeypatch):
    """What Lightning did before: a metric logged with ``prog_bar=True`` is turned into a number after every step."""
    log = L.LightningModule.log
    monkeypatch.setattr(L.LightningModule, "log", lambda self, name, value, **k: log(self, name, value, **{**k, "prog_bar": True}))
    counter = _run_counted(tmp_path, monkeypatch, adapt_stage, adapt_stage.adapt_ti, *ADAPTATION, "stage=ti")
    assert len(counter.mode.reads) == COUNTED
    assert all(r.startswith("aten._local_scalar_dense from ") and "lightning" in r for r in counter.mode.reads)


def test_the_progress_bar_shows_the_loss_of_every_log_interval(tmp_path, monkeypatch):
    from stablesdg import training

    monkeypatch.setattr(training, "stdout_is_terminal", lambda: True)  # the bar shows only in a terminal
    shown = []
    get_metrics = MetricsEveryLogStep.get_metrics
    monkeypatch.setattr(MetricsEveryLogStep, "get_metrics", lambda self, trainer, module: shown.append(
        (trainer.training, trainer.global_step, get_metrics(self, trainer, module))) or shown[-1][2])
    cfg = compose_config([f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs", "logger=none",
                          "trainer.log_every_n_steps=5", *ADAPTATION, "stage=ti", "stage.max_steps=12"])
    adapt_stage.adapt_ti(cfg, tmp_path / "out")
    losses = dict(line.split(",") for line in (tmp_path / "out" / "loss.csv").read_text().splitlines()[1:])
    in_training = list({step: metrics["train/loss"] for training, step, metrics in shown if training}.items())
    assert [step for step, _ in in_training] == list(range(1, 13))
    changed = [step for (step, value), (_, before) in zip(in_training[1:], in_training) if value != before]
    assert changed == [5, 10], "refreshed every 5 steps, after the first"
    for step in (1, 5, 10):
        assert dict(in_training)[step] == pytest.approx(float(losses[str(step)]), rel=1e-6)


def test_the_progress_bar_shows_the_logger_version_as_an_integer(tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.loggers import CSVLogger

    trainer = SimpleNamespace(training=True, global_step=0, callback_metrics={"train/loss": torch.tensor(0.5)},
                              progress_bar_metrics={}, loggers=[CSVLogger(tmp_path, version=2)])
    assert MetricsEveryLogStep(every=5).get_metrics(trainer, None) == {"v_num": "2", "train/loss": 0.5}
