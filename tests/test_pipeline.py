"""stage=pipeline: the stage chain with make's rule (skip what is up to date), run as users run it."""

from __future__ import annotations

import csv
import datetime
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import compose_config, run_cli
from stablesdg import artifacts, provenance
from stablesdg.compare import compared_settings
from stablesdg.errors import UserError
from stablesdg.pipeline_steps import dry_run_summary
from stablesdg.up_to_date import WOULD_RUN, changed_settings, why_not_up_to_date
from stablesdg.sweeps import scoring_settings
from stablesdg.train import run
from test_cli import train  # a real subprocess, for the joblib launcher

FAST_STEPS = [
    "logger=none",
    "model.resolution=32",  # a quarter of the default 64 px model's work per step
    'pipeline.adaptation=["stage.max_steps=3","stage.validation_every=0"]',
    'pipeline.sweep.overrides=["stage.num_images=2","stage.num_inference_steps=4","stage.features=pixels"]',
    'pipeline.generate=["stage.num_images=3","stage.num_inference_steps=4"]',
    'pipeline.fid=["stage.features=pixels"]',
]


def _statuses(tmp_path: Path, category: str = "Sc") -> dict[str, str]:
    record = json.loads((tmp_path / f"artifacts/synthetic/{category}/default/pipeline/result.json").read_text())
    return {step["step"]: step["status"] for step in record["metrics"]["steps"]}


def _planned(printed: str) -> dict[str, str]:
    """Each step a pipeline's dry run logged, with what it said of it: ``up to date`` or ``would run (why)``."""
    steps = re.findall(r"pipeline: (\S.*?) +(up to date(?= \()|would run \(.*\)(?=: ))", printed)
    return dict(steps)


def _results(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("result.json") if "pipeline" not in p.parts}


def test_up_to_date_needs_the_same_config_a_result_newer_than_its_inputs_and_inputs_as_it_read_them(tmp_path):
    store = str(tmp_path)
    read = artifacts.write_result(tmp_path / "d/Sc/v/ti", stage="ti", dataset="d", category="Sc", variant="v",
                                  metrics={}, config={}, wall_time_s=0.0)
    held = artifacts.output_fingerprint(read.parent)
    result = artifacts.write_result(tmp_path / "d/Sc/v/lora", stage="lora", dataset="d", category="Sc", variant="v",
                                    metrics={}, config={"a": 1}, wall_time_s=0.0, inputs={"d/Sc/v/ti": held})
    finished = json.loads(result.read_text())["finished_ns"]
    assert read.stat().st_mtime_ns - 10**9 < json.loads(read.read_text())["finished_ns"] <= finished, "when written"
    why = why_not_up_to_date
    assert why(result, {"a": 1}, newest_input=finished, store=store) is None
    assert why(result, {"a": 2}, newest_input=0, store=store) == "made with other settings: a=1 (now 2)"
    assert why(result, {"a": 1, "b": {"c": "x", "d": {"e": [1, 2]}}}, newest_input=0, store=store) == \
        "made with other settings: b.c=unset (now x), b.d.e=unset (now [1, 2])", "a group named by its settings"
    assert why(result, {"a": 1}, newest_input=finished + 1, store=store) == "older than a result it reads"
    assert why(result, {"a": 2}, newest_input=WOULD_RUN, store=store) == "it reads a step that runs first"
    read.unlink()
    assert why(result, {"a": 1}, newest_input=0, store=store) == "made from d/Sc/v/ti, remade or removed since"
    assert why(tmp_path / "missing.json", {"a": 1}, newest_input=0, store=store) == "not made yet"
    result.write_text("{not json")
    assert why(result, {"a": 1}, newest_input=0, store=store) == "its result.json is unreadable"


def test_a_dry_run_counts_the_steps_that_would_run_and_what_they_took_when_they_last_ran():
    up, never = {"status": "skipped"}, {"status": "would run", "last_wall_time_s": None}
    again = [{"status": "would run", "last_wall_time_s": seconds} for seconds in (59.6, 3600.0)]
    assert dry_run_summary([up, never, *again]) == ("dry run: 3 of 4 steps would run (1 up to date); 2 of them took "
                                                    "1:01:00 when they last ran (1 never ran); nothing ran (run "
                                                    "without pipeline.dry_run=true to run them)")
    assert dry_run_summary([up, never]).startswith("dry run: 1 of 2 steps would run (1 up to date); nothing ran")
    assert dry_run_summary([up, *again]).startswith("dry run: 2 of 3 steps would run (1 up to date); 2 of them took "
                                                    "1:01:00 when they last ran; nothing ran")


def test_a_stage_run_again_on_its_own_says_first_that_its_finished_result_was_up_to_date_or_what_it_replaces(tmp_path):
    args = ["stage=inspect", "stage.build_model=false", "logger=none"]
    folder = tmp_path / "artifacts/synthetic/all/default/inspect"

    def notices(done) -> list[str]:
        assert done.returncode == 0, done.stderr[-3000:]
        return re.findall(r"\[stablesdg.train\]\[INFO\] - (.*)", done.stdout)

    assert notices(run_cli(tmp_path, *args)) == [], "nothing was there"
    made = datetime.datetime.fromtimestamp((folder / "result.json").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    assert notices(run_cli(tmp_path, *args)) == [
        f"{folder} holds a finished run of these settings (made {made}); this run makes it again (stage=pipeline "
        "skips what is up to date, and so does skip_up_to_date=true)"]
    assert notices(run_cli(tmp_path, *args, "stage.grid_per_class=2")) == [
        f"{folder} holds a finished run made with other settings: stage.grid_per_class="
        f"{compose_config(['stage=inspect']).stage.grid_per_class} (now 2); this run makes a new result in its place "
        "(another variant=<name> keeps both)"]


def test_skip_up_to_date_skips_a_stage_run_on_its_own_whose_result_is_up_to_date_and_runs_one_that_is_not(tmp_path):
    # a multirun run again after an interruption: its finished jobs are skipped, the others run
    args = ["stage=inspect", "stage.build_model=false", "logger=none", "skip_up_to_date=true"]
    folders = [tmp_path / f"artifacts/synthetic/all/seed{seed}/inspect" for seed in (0, 1)]
    first = run_cli(tmp_path, *args, "seed=0", "variant=seed0")
    assert first.returncode == 0, first.stderr[-3000:]
    made = (folders[0] / "result.json").read_bytes()
    when = datetime.datetime.fromtimestamp(json.loads(made)["finished_ns"] / 1e9).strftime("%Y-%m-%d %H:%M")
    again = run_cli(tmp_path, *args, "seed=0,1", "variant=seed${seed}", flags=("-m",))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (folders[0] / "result.json").read_bytes() == made, "the finished job is not run again"
    assert (f"{folders[0]} holds a finished run of these settings (made {when}), up to date: skipped "
            "(skip_up_to_date=true)") in again.stdout
    assert (folders[1] / "result.json").is_file(), "the job it had not run runs"
    other = run_cli(tmp_path, *args, "seed=0", "variant=seed0", "stage.grid_per_class=2")
    assert other.returncode == 0, other.stderr[-3000:]
    assert (folders[0] / "result.json").read_bytes() != made, "a result of other settings is made anew"
    assert f"{folders[0]} holds a finished run made with other settings: stage.grid_per_class=" in other.stdout


def test_the_settings_a_result_was_made_with_are_named_with_their_old_and_new_values_up_to_three():
    made = {"stage": {"lr": 0.0001, "flip": True, "prompt": "a photo", "rank": 1}, "seed": 0}
    now = {"stage": {"lr": 0.0002, "flip": False, "prompt": "a photo", "rank": 4, "extra": None}, "seed": 1}
    assert changed_settings(made, {**made, "seed": 1}) == "seed=0 (now 1)"
    assert changed_settings(made, now) == ("seed=0 (now 1), stage.flip=true (now false), stage.lr=0.0001 (now 0.0002) "
                                           "and 1 more"), "sorted by key; a null that was unset is no change"
    assert changed_settings(made, {**made, "stage": {**made["stage"], "rank": 4, "extra": "x"}}) == \
        "stage.extra=unset (now x), stage.rank=1 (now 4)"


def test_a_result_is_up_to_date_wherever_its_files_and_logs_went_or_its_grid_or_its_memory_or_output_or_precisions_name_but_not_under_another_trainer(
        tmp_path):
    made = {"paths": {"artifacts": "/old/store", "logs": "/old/logs"}, "logger": {"save_dir": "/old/logs/csv"},
            "trainer": {"precision": "32-true", "devices": 1, "default_root_dir": "/old/logs/lightning"},
            "dataset": {"name": "d", "split_dir": "/old/store/d/splits"}, "stage": {"name": "ti"}, "seed": 0}
    result = artifacts.write_result(tmp_path / "d/Sc/v/ti", stage="ti", dataset="d", category="Sc", variant="v",
                                    metrics={}, config=made, wall_time_s=0.0)
    moved = {"paths": {"artifacts": str(tmp_path), "logs": "/new/logs"},
             "logger": {"project": "stablesdg", "save_dir": "/new/logs"},  # W&B in place of CSV
             "trainer": {"precision": "32-true", "devices": 1, "default_root_dir": "/new/logs/lightning"},
             "dataset": {"name": "d", "split_dir": f"{tmp_path}/d/splits"}, "stage": {"name": "ti"}, "seed": 0}
    assert why_not_up_to_date(result, moved, newest_input=0, store=str(tmp_path)) is None
    for gpu in ([2], "3,"):  # one GPU chosen by its index, as trainer.devices=1 trained it
        other_gpu = {**moved, "trainer": {**moved["trainer"], "devices": gpu}}
        assert why_not_up_to_date(result, other_gpu, newest_input=0, store=str(tmp_path)) is None, gpu
    for grid in ({"stage": {"name": "ti", "grid_images": 4}}, {"stage": {"name": "ti", "grid_images": 0}}):
        # a set's grid.png is a view of its images, drawn again by a rerun of its stage alone, never a pipeline's
        assert why_not_up_to_date(result, {**moved, **grid}, newest_input=0, store=str(tmp_path)) is None, grid
    for memory in (True, False):  # gradient checkpointing trains the same weights in less memory
        checkpointing = {"stage": {"name": "ti", "gradient_checkpointing": memory}}
        assert why_not_up_to_date(result, {**moved, **checkpointing}, newest_input=0, store=str(tmp_path)) is None
    for output in ({"log_every_n_steps": 50}, {"enable_model_summary": True}, {"enable_progress_bar": False},
                   {"profiler": "simple"}, {"max_time": "00:23:50:00"}):  # what it shows, and a cluster job's budget
        shown = {"trainer": {**moved["trainer"], **output}}
        assert why_not_up_to_date(result, {**moved, **shown}, newest_input=0, store=str(tmp_path)) is None, output
    for alias in (32, "32"):  # Lightning's short name of 32-true
        named = {"trainer": {**moved["trainer"], "precision": alias}}
        assert why_not_up_to_date(result, {**moved, **named}, newest_input=0, store=str(tmp_path)) is None, alias
    for changed in ({"trainer": {**moved["trainer"], "precision": "bf16-mixed"}},
                    {"trainer": {**moved["trainer"], "precision": "bf16"}}, {"seed": 1},
                    {"dataset": {**moved["dataset"], "name": "e"}}, {"trainer": {**moved["trainer"], "devices": 2}},
                    {"trainer": {**moved["trainer"], "devices": [0, 1]}}):
        assert why_not_up_to_date(result, {**moved, **changed}, newest_input=0, store=str(tmp_path)).startswith(
            "made with other settings: "), changed


def test_a_result_is_up_to_date_whatever_the_config_groups_its_stage_never_reads_hold(tmp_path):
    sd15 = {"name": "sd15", "path": "/models/sd15", "resolution": 512}
    base = {"model": {"name": "tiny", "seed": 0, "resolution": 64}, "classifier": {"name": "squeezenet"},
            "generation": {"fallback": {"strength": 0.5}}, "trainer": {"precision": "32-true"}, "seed": 0}
    other_model, other_classifier = {"model": sd15}, {"classifier": {"name": "vgg", "depth": 16}}
    other_table, other_trainer = {"generation": {"fallback": {"strength": 0.3}}}, {"trainer": {"precision": "bf16-mixed"}}
    cases = {  # a stage's settings: (changes it leaves unread, changes it reads)
        "classify": ([other_model, other_table], [other_classifier, other_trainer]),
        "fid": ([other_model, other_classifier, other_table], [other_trainer]),
        "sample": ([other_model, other_classifier, other_table], [other_trainer]),
        "external": ([other_model, other_classifier, other_table, other_trainer], []),  # copies a folder's images
        "ti": ([other_classifier, other_table], [other_model, other_trainer]),
        "generate": ([other_classifier], [other_model, other_table, other_trainer]),  # s and ω from the table
        "generate s=0.5 ω=5": ([other_classifier, other_table], [other_model, other_trainer]),  # a sweep's point
    }
    for case, (unread, read) in cases.items():
        name, *given = case.split()
        stage = {"name": name, "alpha": 0.4, **({"strength": 0.5, "guidance_scale": 5} if given else {})}
        made = {**base, "stage": stage}
        result = artifacts.write_result(tmp_path / f"d/Sc/v/{case}", stage=name, dataset="d", category="Sc",
                                        variant="v", metrics={}, config=made, wall_time_s=0.0)
        for change in unread:
            assert why_not_up_to_date(result, {**made, **change}, newest_input=0, store=str(tmp_path)) is None, \
                (case, change)
        for change in read:
            assert why_not_up_to_date(result, {**made, **change}, newest_input=0, store=str(tmp_path)).startswith(
                "made with other settings: "), (case, change)
        changed_stage = {**made, "stage": {**stage, "alpha": 0.6}}
        assert why_not_up_to_date(result, changed_stage, newest_input=0, store=str(tmp_path)) == \
            "made with other settings: stage.alpha=0.4 (now 0.6)"


def test_a_set_generated_without_scoring_is_up_to_date_whatever_its_fid_settings_and_a_scored_one_is_not(tmp_path):
    scoring = {"features": "random_inception", "inception_weights": None, "feature_seed": 0, "real_split": "train"}
    others = ({"features": "inception"}, {"inception_weights": "/w/pt_inception.pth"}, {"feature_seed": 1},
              {"real_split": "val"})
    for score in (False, True):
        made = {"stage": {"name": "generate", "score": score, "strength": 0.5, "guidance_scale": 5, **scoring},
                "seed": 0}
        result = artifacts.write_result(tmp_path / f"d/Sc/v/generate_{score}", stage="generate", dataset="d",
                                        category="Sc", variant="v", metrics={}, config=made, wall_time_s=0.0)
        for other in others:
            wanted = {**made, "stage": {**made["stage"], **other}}
            why = why_not_up_to_date(result, wanted, newest_input=0, store=str(tmp_path))
            assert (why is None) if not score else why.startswith("made with other settings: stage."), (score, other)
        unscored = {**made, "stage": {**made["stage"], "score": not score}}
        assert why_not_up_to_date(result, unscored, newest_input=0, store=str(tmp_path)) == \
            f"made with other settings: stage.score={str(score).lower()} (now {str(not score).lower()})"
    fid = {"stage": {"name": "fid", **scoring}, "seed": 0}
    result = artifacts.write_result(tmp_path / "d/Sc/v/fid", stage="fid", dataset="d", category="Sc", variant="v",
                                    metrics={}, config=fid, wall_time_s=0.0)
    assert why_not_up_to_date(result, {**fid, "stage": {**fid["stage"], "feature_seed": 1}}, newest_input=0,
                              store=str(tmp_path)) == "made with other settings: stage.feature_seed=0 (now 1)"


def test_a_result_is_up_to_date_whatever_the_settings_its_stage_leaves_unread_say(tmp_path):
    trainer = {"precision": "32-true", "max_epochs": None}
    cases = {  # a stage's settings: (changes it leaves unread, changes it reads)
        "classify": ({"name": "classify", "mode": "none", "generated": "default", "extra_per_class": 1000},
                     [{"stage": {"generated": "dcgan"}}, {"stage": {"extra_per_class": 64}}],
                     [{"stage": {"mode": "expand"}}, {"trainer": {"limit_val_batches": 0.5}}]),
        "ti": ({"name": "ti", "lr": 0.005}, [{"trainer": {"limit_val_batches": 0.5}}],
               [{"trainer": {"gradient_clip_val": 1.0}}]),
        "lora": ({"name": "lora", "use_ti": True, "placeholder": "<d>"}, [{"stage": {"placeholder": "<e>"}}],
                 [{"stage": {"use_ti": False}}]),
        "fid": ({"name": "fid", "features": "pixels"}, [{"trainer": {"max_epochs": 3}}],
                [{"trainer": {"precision": "bf16-mixed"}}]),
        "generate": ({"name": "generate", "strength": 0.5, "guidance_scale": 1, "negative_prompt": None},
                     [{"stage": {"negative_prompt": "blurry"}}],
                     [{"stage": {"guidance_scale": 1.5}}, {"stage": {"negative_prompt": "blurry", "guidance_scale": 2}}]),
    }
    for name, (stage, unread, read) in cases.items():
        made = {"stage": stage, "trainer": trainer, "seed": 0}
        result = artifacts.write_result(tmp_path / f"d/all/v/{name}", stage=name, dataset="d", category=None,
                                        variant="v", metrics={}, config=made, wall_time_s=0.0)
        for change in unread + read:
            wanted = {**made, **{group: {**made[group], **values} for group, values in change.items()}}
            why = why_not_up_to_date(result, wanted, newest_input=0, store=str(tmp_path))
            assert (why is None) if change in unread else why.startswith("made with other settings: "), (name, change)
    made = {"stage": cases["classify"][0], "trainer": trainer, "seed": 0}
    expanded = {**made, "stage": {**made["stage"], "mode": "expand", "extra_per_class": 64}}
    assert why_not_up_to_date(tmp_path / "d/all/v/classify/result.json", expanded, 0, str(tmp_path)) == \
        "made with other settings: stage.mode=none (now expand)", "what makes the others read"


def test_a_classifier_is_up_to_date_where_its_depth_is_left_null_for_the_depth_it_builds_and_not_for_another(tmp_path):
    made = {"stage": {"name": "classify", "mode": "none"}, "classifier": {"name": "resnet", "arch": "resnet", "depth": 18},
            "seed": 0}
    result = artifacts.write_result(tmp_path / "d/all/v/classify", stage="classify", dataset="d", category=None,
                                    variant="v", metrics={}, config=made, wall_time_s=0.0)

    def depth(value):
        return {**made, "classifier": {**made["classifier"], "depth": value}}

    assert why_not_up_to_date(result, depth(None), newest_input=0, store=str(tmp_path)) is None, "resnet18 either way"
    assert why_not_up_to_date(result, depth(34), 0, str(tmp_path)) == "made with other settings: classifier.depth=18 (now 34)"
    vgg = {**made, "classifier": {"name": "vgg", "arch": "vgg", "depth": None}}
    result = artifacts.write_result(tmp_path / "d/all/v/classify", stage="classify", dataset="d", category=None,
                                    variant="v", metrics={}, config=vgg, wall_time_s=0.0)
    assert why_not_up_to_date(result, {**vgg, "classifier": {**vgg["classifier"], "depth": 16}}, 0, str(tmp_path)) is None
    assert why_not_up_to_date(result, {**vgg, "classifier": {**vgg["classifier"], "depth": 19}}, 0, str(tmp_path)) == \
        "made with other settings: classifier.depth=16 (now 19)"


def test_a_result_is_up_to_date_where_only_its_stages_code_moved_or_how_it_resumes_saves_and_loads(tmp_path):
    made = {"stage": {"name": "fid", "runner": "stablesdg.stages.fid.run", "checks": "stablesdg.stages.checks.check_fid",
                      "inputs": "stablesdg.stages.checks.require_scoring_inputs", "max_images": 8}, "seed": 0}
    result = artifacts.write_result(tmp_path / "d/Sc/v/fid", stage="fid", dataset="d", category="Sc", variant="v",
                                    metrics={}, config=made, wall_time_s=0.0)
    moved = {**made, "stage": {**made["stage"], "checks": "stablesdg.stages.fid_checks.check_fid",
                               "inputs": "stablesdg.stages.inputs.require_scoring_inputs"}}
    assert why_not_up_to_date(result, moved, newest_input=0, store=str(tmp_path)) is None
    mechanics = {"resume": False, "keep_checkpoints": True, "checkpoint_every": 7, "preload": False, "num_workers": 4,
                 "objective": "fid"}
    for key, value in mechanics.items():  # how the run goes about the work: the same artifacts either way
        how = {**moved, "stage": {**moved["stage"], key: value}}
        assert why_not_up_to_date(result, how, newest_input=0, store=str(tmp_path)) is None, key
    other = {**moved, "stage": {**moved["stage"], "max_images": 9}}
    assert why_not_up_to_date(result, other, newest_input=0, store=str(tmp_path)) == \
        "made with other settings: stage.max_images=8 (now 9)"


def test_a_result_made_before_a_later_setting_existed_is_up_to_date_where_the_setting_keeps_what_it_did(tmp_path):
    # batch_size and num_workers: settings no stage read, since removed from the configs
    before = {"dataset": {"channels": 1, "split": {"seed": 0}, "batch_size": 64, "num_workers": 2},
              "stage": {"name": "fid"}, "seed": 0}
    result = artifacts.write_result(tmp_path / "d/Sc/v/fid", stage="fid", dataset="d", category="Sc", variant="v",
                                    metrics={}, config=before, wall_time_s=0.0)
    now = {"dataset": {"channels": 1, "split": {"seed": 0, "folders": False}, "fit": "crop", "bit_depth": None},
           "stage": {"name": "fid"}, "seed": 0}
    assert why_not_up_to_date(result, now, newest_input=0, store=str(tmp_path)) is None
    assert compared_settings({"config": now}) == compared_settings({"config": before})
    assert scoring_settings({"config": now}) == scoring_settings({"config": before}), "sweep points still compare"
    for changed in ({"fit": "pad"}, {"bit_depth": 12}, {"split": {"seed": 0, "folders": True}}):
        other = {**now, "dataset": {**now["dataset"], **changed}}
        assert why_not_up_to_date(result, other, newest_input=0, store=str(tmp_path)).startswith(
            "made with other settings: "), changed
        assert compared_settings({"config": other}) != compared_settings({"config": before}), changed


def test_a_set_made_before_generation_named_its_model_variant_is_up_to_date_where_it_reads_its_own(tmp_path):
    before = {"stage": {"name": "generate", "adapter": "lora"}, "variant": "v", "seed": 0}
    result = artifacts.write_result(tmp_path / "d/Sc/v/generate", stage="generate", dataset="d", category="Sc",
                                    variant="v", metrics={}, config=before, wall_time_s=0.0)
    now = {**before, "stage": {**before["stage"], "model_variant": "v"}}
    assert why_not_up_to_date(result, now, newest_input=0, store=str(tmp_path)) is None
    assert scoring_settings({"config": now}) == scoring_settings({"config": before}), "sweep points still compare"
    other = {**before, "stage": {**before["stage"], "model_variant": "w"}}
    assert why_not_up_to_date(result, other, newest_input=0, store=str(tmp_path)) == \
        "made with other settings: stage.model_variant=unset (now w)"
    sampled = {"stage": {"name": "sample", "model_variant": "v"}, "variant": "v", "seed": 0}  # it always had the key
    assert provenance.config_hash(sampled) != provenance.config_hash({**sampled, "stage": {"name": "sample"}})


@pytest.mark.slow
def test_pipeline_skips_up_to_date_stages_and_reruns_from_a_deleted_one(tmp_path):
    args = ["stage=pipeline", "category=Sc", "pipeline.sweep.strength=[0.5]", "pipeline.sweep.guidance_scale=[2,4]",
            *FAST_STEPS]
    first = run_cli(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    chain = ["ti Sc", "lora Sc", "sweep Sc s=0.5 ω=2", "sweep Sc s=0.5 ω=4", "generate Sc", "fid Sc"]
    assert _statuses(tmp_path) == dict.fromkeys(chain, "ran"), "one category: no classifiers"
    # every step sets the dataset up; the command describes it once
    assert len(re.findall(r"\]\[stablesdg.data.datamodule\]\[INFO\] - dataset synthetic: 160 images in 4 classes",
                          first.stdout)) == 1
    assert first.stdout.count("GPU available: False, used: False") == 1, "and its devices once, at its first training"
    root = tmp_path / "artifacts/synthetic/Sc/default"
    sweep = {g: json.loads((root / f"sweep_s0.5_g{g}/result.json").read_text())["metrics"]["fid"] for g in (2, 4)}
    generated = json.loads((root / "generate/result.json").read_text())
    assert generated["metrics"]["guidance_scale"] == min(sweep, key=sweep.get), "the final set uses the best ω"
    assert generated["metrics"]["num_images"] == 3
    before = _results(tmp_path / "artifacts")

    second = run_cli(tmp_path, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert set(_statuses(tmp_path).values()) == {"skipped"}
    assert _results(tmp_path / "artifacts") == before, "a rerun rewrites nothing"
    assert "[INFO] - pipeline: 6 of 6 steps ran (0 up to date)\n" in first.stdout
    assert "[INFO] - pipeline: 0 of 6 steps ran (6 up to date)\n" in second.stdout
    # the command that reads what it made: the NEU tables on the synthetic set, which no paper table is of
    assert second.stdout.splitlines()[-2].endswith(  # its last line is the entry point's result: line
        f"[INFO] - pipeline: its tables and figures: python -m stablesdg.report --artifacts {tmp_path}/artifacts "
        "--dataset synthetic")

    time.sleep(0.01)
    (root / "lora/result.json").unlink()
    pipeline_result = (root / "pipeline/result.json").read_bytes()
    dry = run_cli(tmp_path, *args, "pipeline.dry_run=true")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert _planned(dry.stdout) == {"ti Sc": "up to date", "lora Sc": "would run (not made yet)",
                                    **dict.fromkeys(chain[2:], "would run (it reads a step that runs first)")}
    # each step's settings as words a shell passes on unchanged: the sweep's folder name holds ${...}
    sweep_line = next(line for line in dry.stdout.splitlines() if "pipeline: sweep Sc s=0.5 ω=2 " in line)
    assert " 'stage.artifact_name=sweep_s${stage.strength}_g${stage.guidance_scale}' " in sweep_line
    took = sum(json.loads((tmp_path / "artifacts" / path).read_text())["wall_time_s"] for path in before
               if path.split("/")[3] in ("sweep_s0.5_g2", "sweep_s0.5_g4", "generate", "fid"))
    assert dry.stdout.rstrip().endswith(
        f"pipeline: dry run: 5 of 6 steps would run (1 up to date); 4 of them took "
        f"{datetime.timedelta(seconds=round(took))} when they last ran (1 never ran); nothing ran (run without "
        "pipeline.dry_run=true to run them)"), "and no result: line"
    assert (root / "pipeline/result.json").read_bytes() == pipeline_result, "a dry run leaves the last run's record"
    assert _results(tmp_path / "artifacts") == {k: v for k, v in before.items() if "/lora/" not in k}, "nor runs any"
    third = run_cli(tmp_path, *args)
    assert third.returncode == 0, third.stderr[-3000:]
    assert _statuses(tmp_path) == {"ti Sc": "skipped", **dict.fromkeys(chain[1:], "ran")}
    steps = json.loads((root / "pipeline/result.json").read_text())["metrics"]["steps"]
    assert {step["step"]: step.get("why") for step in steps} == {
        "ti Sc": None, "lora Sc": "not made yet", **dict.fromkeys(chain[2:], "older than a result it reads")}
    after = _results(tmp_path / "artifacts")
    assert after["synthetic/Sc/default/ti/result.json"] == before["synthetic/Sc/default/ti/result.json"]

    more = [*args[:-2], 'pipeline.generate=["stage.num_images=4","stage.num_inference_steps=4"]', args[-1]]
    dry = run_cli(tmp_path, *more, "pipeline.dry_run=true")
    assert _planned(dry.stdout) == {**dict.fromkeys(chain[:4], "up to date"),
                                    "generate Sc": "would run (made with other settings: stage.num_images=3 (now 4))",
                                    "fid Sc": "would run (it reads a step that runs first)"}
    fourth = run_cli(tmp_path, *more)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert _statuses(tmp_path) == {**dict.fromkeys(chain[:4], "skipped"), "generate Sc": "ran", "fid Sc": "ran"}
    assert json.loads((root / "fid/result.json").read_text())["metrics"]["n_fake"] == 4

    # a copy of the store that kept no file times (cp -r, rsync without -t): each step's file older than its inputs'
    copied = tmp_path / "copy/artifacts/synthetic/Sc/default"
    shutil.copytree(root, copied)
    for age, folder in enumerate(["fid", "generate", "sweep_s0.5_g4", "sweep_s0.5_g2", "lora", "ti"]):
        os.utime(copied / folder / "result.json", ns=(age * 10**9, age * 10**9))
    dry = run_cli(tmp_path / "copy", *more, "pipeline.dry_run=true")
    assert _planned(dry.stdout) == dict.fromkeys(chain, "up to date"), dry.stdout[-3000:]

    # the sweep's points scored again since (a sweep multirun over them): the set at the point they chose reads none
    for guidance in (2, 4):
        point = root / f"sweep_s0.5_g{guidance}/result.json"
        point.write_text(json.dumps({**json.loads(point.read_text()), "finished_ns": time.time_ns()}))
    dry = run_cli(tmp_path, *more, "pipeline.dry_run=true")
    assert _planned(dry.stdout) == dict.fromkeys(chain, "up to date"), dry.stdout[-3000:]


def test_a_dataset_moved_since_reruns_nothing_and_other_images_under_its_name_stop_the_pipeline_before_any_step(
        tmp_path):
    def neu_det(root):  # 10 images of each NEU class, laid out as NEU-DET is
        (root / "IMAGES").mkdir(parents=True)
        for c, name in enumerate(["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]):
            for i in range(10):
                Image.new("L", (200, 200), 20 * c + i).save(root / f"IMAGES/{name}_{i + 1}.png")

    neu_det(tmp_path / "data")
    args = ["stage=pipeline", "dataset=neu", "category=Pa", "pipeline.steps=[adapt]", "pipeline.adapt=[ti]",
            'pipeline.ti=["stage.max_steps=1","stage.validation_every=0"]', "logger=none"]
    first = run_cli(tmp_path, *args, f"dataset.root={tmp_path}/data")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.endswith(f"[INFO] - pipeline: its tables and figures: python -m stablesdg.report --artifacts "
                                 f"{tmp_path}/artifacts\nresult: {tmp_path}/artifacts/neu/Pa/default/pipeline/"
                                 "result.json\n"), "NEU's tables read NEU: no --dataset"
    made = _results(tmp_path / "artifacts")
    shutil.copytree(tmp_path / "data", tmp_path / "mounted")  # the same images, found elsewhere
    moved = run_cli(tmp_path, *args, f"dataset.root={tmp_path}/mounted")
    assert moved.returncode == 0, moved.stderr[-3000:]
    steps = json.loads((tmp_path / "artifacts/neu/Pa/default/pipeline/result.json").read_text())["metrics"]["steps"]
    assert [(step["step"], step["status"]) for step in steps] == [("ti Pa", "skipped")]
    assert _results(tmp_path / "artifacts") == made
    Image.new("L", (200, 200), 255).save(tmp_path / "mounted/IMAGES/patches_1.png")  # other images, the same name
    other = run_cli(tmp_path, *args, f"dataset.root={tmp_path}/mounted")
    assert other.returncode == 2 and other.stderr.strip().startswith(
        f"error: split file {tmp_path}/artifacts/neu/splits/split-seed0-0.8-0.1-0.1.json was made for a different set "
        "of images (the dataset changed)"), other.stderr[-3000:]
    assert "pipeline: ti Pa" not in other.stdout, "refused before its first step, though that step is up to date"


@pytest.mark.slow
def test_a_variant_sweeps_and_generates_from_the_models_that_pipeline_adapt_variant_trains(tmp_path):
    args = ["stage=pipeline", "category=Sc", "variant=dpm", "pipeline.adapt_variant=shared",
            "pipeline.steps=[adapt,sweep,generate]", "pipeline.sweep.strength=[0.5]", "pipeline.sweep.guidance_scale=[2]",
            *FAST_STEPS]
    for run_number in (1, 2):
        done = run_cli(tmp_path, *args)
        assert done.returncode == 0, done.stderr[-3000:]
        record = json.loads((tmp_path / "artifacts/synthetic/Sc/dpm/pipeline/result.json").read_text())
        statuses = {step["step"]: step["status"] for step in record["metrics"]["steps"]}
        expected = "ran" if run_number == 1 else "skipped"
        assert statuses == dict.fromkeys(["ti Sc", "lora Sc", "sweep Sc s=0.5 ω=2", "generate Sc"], expected)
    store = tmp_path / "artifacts/synthetic/Sc"
    assert {"lora", "ti"} <= {p.name for p in (store / "shared").iterdir()}
    assert not (store / "dpm/lora").exists() and not (store / "dpm/ti").exists()
    lora = artifacts.recorded_checksums(store / "shared/lora")
    for made in ("generate", "sweep_s0.5_g2"):
        assert json.loads((store / f"dpm/{made}/result.json").read_text())["metrics"]["adapter_checksums"]["lora"] == lora


@pytest.mark.slow
def test_a_new_generated_set_retrains_the_classifiers_that_read_it_and_only_those(tmp_path):
    samples = tmp_path / "samples"
    for index, name in enumerate(("Cr", "Pa", "PS", "Sc")):
        (samples / name).mkdir(parents=True)
        for shade in (40, 100, 160):
            Image.fromarray(np.full((64, 64), shade + index, np.uint8)).save(samples / name / f"{shade}.png")
    args = ["stage=pipeline", "logger=none", "pipeline.generator=external", "pipeline.steps=[generate,fid,classify]",
            f'pipeline.generation=["stage.source={samples}"]', "pipeline.classify.classifiers=[squeezenet]",
            "pipeline.classify.seeds=[0]",
            'pipeline.classify.overrides=["stage.max_epochs=1","stage.extra_per_class=2"]']
    classifiers = ["classify squeezenet stage.alpha=0.4 stage.mode=none seed=0",
                   "classify squeezenet stage.alpha=0.4 stage.mode=expand seed=0"]
    chain = [f"{step} {c}" for c in ("Cr", "Pa", "PS", "Sc") for step in ("generate", "fid")]

    def pipeline(*extra: str) -> dict[str, str]:
        done = run_cli(tmp_path, *args, *extra)
        assert done.returncode == 0, done.stderr[-3000:]
        return _statuses(tmp_path, "all")

    scored_on_pixels = 'pipeline.fid=["stage.features=pixels"]'
    first = pipeline('pipeline.generate=["stage.num_images=2"]', scored_on_pixels)
    assert first == dict.fromkeys(chain + classifiers, "ran")
    read = {json.loads(path.read_text())["metrics"]["mode"]: sorted(json.loads(path.read_text())["inputs"])
            for path in (tmp_path / "artifacts").rglob("classify_*/result.json")}
    assert read == {"none": [], "expand": [f"synthetic/{c}/default/generate" for c in ("Cr", "PS", "Pa", "Sc")]}
    pipeline_result = next((tmp_path / "artifacts").rglob("pipeline/result.json"))
    assert json.loads(pipeline_result.read_text())["inputs"] == {}, "what its steps read, their results record"
    time.sleep(0.01)
    statuses = pipeline("pipeline.generate=[]", scored_on_pixels)  # every image of the folder: 3 per class
    assert statuses == {**dict.fromkeys(chain, "ran"), classifiers[0]: "skipped", classifiers[1]: "ran"}
    from stablesdg.status import store_states

    assert [s for s in store_states(tmp_path / "artifacts") if s.state != "finished"] == [], "no result left stale"
    statuses = pipeline("pipeline.generate=[]", 'pipeline.fid=["stage.features=pixels","stage.real_split=val"]')
    assert statuses == {**{step: "ran" if step.startswith("fid") else "skipped" for step in chain},
                        **dict.fromkeys(classifiers, "skipped")}, "a new score retrains no classifier"

    curated = tmp_path / "artifacts/synthetic/Pa/default/generate"  # a bad sample left out by hand: file and row
    rows = (curated / "manifest.csv").read_text().splitlines()
    (curated / rows[1].split(",")[0]).unlink()
    (curated / "manifest.csv").write_text("\n".join([rows[0], *rows[2:]]) + "\n")
    statuses = pipeline("pipeline.generate=[]", 'pipeline.fid=["stage.features=pixels","stage.real_split=val"]')
    assert statuses == {**{step: "ran" if step == "fid Pa" else "skipped" for step in chain},
                        classifiers[0]: "skipped", classifiers[1]: "ran"}, "what read the set reads it again"
    assert json.loads((tmp_path / "artifacts/synthetic/Pa/default/fid/result.json").read_text())["metrics"]["n_fake"] == 2


@pytest.mark.slow
def test_table2_experiment_runs_every_method_and_the_report_fills_its_table(tmp_path):
    done = run_cli(tmp_path, "+experiment=table2_ablation", "dataset=synthetic", "model=tiny", *FAST_STEPS)
    assert done.returncode == 0, done.stderr[-3000:]
    variants = ["ti_only", "lora_only", "image_only", "ti_lora", "ti_image", "lora_image", "default", "full"]
    fids = {}
    for variant in variants:
        folder = tmp_path / f"artifacts/synthetic/Pa/{variant}"
        fids[variant] = json.loads((folder / "fid/result.json").read_text())["metrics"]["fid"]
        manifest = (folder / "generate/manifest.csv").read_text().splitlines()
        assert len(manifest) == 4, f"{variant}: 3 images and a header"
    assert {p.name for p in (tmp_path / "artifacts/synthetic/Pa/ti_only").iterdir()} == {"ti", "generate", "fid", "pipeline"}
    assert {p.name for p in (tmp_path / "artifacts/synthetic/Pa/image_only").iterdir()} == {"generate", "fid", "pipeline"}
    text_to_image = json.loads((tmp_path / "artifacts/synthetic/Pa/ti_lora/generate/result.json").read_text())
    assert (text_to_image["metrics"]["init"], text_to_image["metrics"]["adapter"]) == ("noise", "lora")
    assert json.loads((tmp_path / "artifacts/synthetic/Pa/full/generate/result.json").read_text())["metrics"]["adapter"] == "full"

    from stablesdg.report import main

    assert main(["--artifacts", str(tmp_path / "artifacts"), "--dataset", "synthetic"]) == 0
    rows = (tmp_path / "artifacts/report/table2_ablation.csv").read_text().splitlines()[1:]
    ours = {row.split(",")[0]: float(row.split(",")[1]) for row in rows}
    labels = ["TI", "LoRA", "Image-oriented", "TI + LoRA", "TI + image-oriented", "LoRA + image-oriented",
              "TI + LoRA + image-oriented (StableSDG)", "TI + full parameters + image-oriented"]
    assert ours == {label: pytest.approx(fids[v]) for label, v in zip(labels, variants)}
    assert os.path.isfile(tmp_path / "artifacts/report/grids/synthetic_Pa.png")


@pytest.mark.slow
def test_categories_run_in_parallel_through_the_joblib_launcher(tmp_path):
    done = train(tmp_path, "stage=pipeline", "category=Pa,Sc", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 "pipeline.steps=[adapt]", *FAST_STEPS, flags=("-m",))
    assert done.returncode == 0, done.stderr[-3000:]
    for category in ("Pa", "Sc"):
        assert _statuses(tmp_path, category) == {f"ti {category}": "ran", f"lora {category}": "ran"}
        lora = json.loads((tmp_path / f"artifacts/synthetic/{category}/default/lora/result.json").read_text())
        assert lora["category"] == category and lora["metrics"]["steps"] == 3


def test_a_pipelines_sweep_logs_its_matrix_into_a_wandb_run_of_its_own_and_no_run_for_a_csv_log(tmp_path):
    sweep = ["stage=pipeline", "category=Pa", "pipeline.steps=[sweep]", 'pipeline.generation=["stage.adapter=base"]',
             "pipeline.sweep.strength=[0.4,0.6]", "pipeline.sweep.guidance_scale=[5]",
             'pipeline.sweep.overrides=["stage.num_images=2","stage.num_inference_steps=4","stage.features=pixels"]']
    done = run_cli(tmp_path, *sweep, "logger=wandb")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted((tmp_path / "logs/wandb").glob("offline-run-*"))
    assert len(runs) == 3, "a run per point, and one for the matrix"
    named = [run for run in runs if re.search(rb"synthetic-Pa-default-sweep(?!_s)", next(run.glob("run-*.wandb")).read_bytes())]
    assert len(named) == 1 and list(named[0].glob("files/media/images/sweep/fid_Pa_heatmap_*.png"))
    table = json.loads(next(named[0].glob("files/media/table/sweep/fid_Pa_*.table.json")).read_text())
    fids = [json.loads((tmp_path / f"artifacts/synthetic/Pa/default/sweep_s{s}_g5/result.json").read_text())["metrics"]["fid"]
            for s in (0.4, 0.6)]
    assert table["data"] == [[0.4, fids[0]], [0.6, fids[1]]]

    csv_log = run_cli(tmp_path / "csv", *sweep, "logger=csv")
    assert csv_log.returncode == 0, csv_log.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "csv/logs/csv").iterdir()) == [
        "synthetic-Pa-default-sweep_s0.4_g5", "synthetic-Pa-default-sweep_s0.6_g5"], "no folder of settings alone"


def test_another_methods_pipeline_trains_no_real_only_classifier_that_variant_default_holds_with_its_settings(tmp_path):
    real_only = ["stage=pipeline", "pipeline.steps=[classify]", "logger=none", "pipeline.classify.classifiers=[squeezenet]",
                 "pipeline.classify.seeds=[0]", 'pipeline.classify.compositions=[["stage.alpha=0.4","stage.mode=none"]]']
    one_epoch = 'pipeline.classify.overrides=["stage.max_epochs=1"]'
    assert run_cli(tmp_path, *real_only, one_epoch).returncode == 0
    default = tmp_path / "artifacts/synthetic/all/default/classify_squeezenet_a0.4_none_seed0/result.json"
    made = default.read_bytes()
    dcgan = tmp_path / "artifacts/synthetic/all/dcgan"

    done = run_cli(tmp_path, *real_only, one_epoch, "method=dcgan")
    assert done.returncode == 0, done.stderr[-3000:]
    steps = json.loads((dcgan / "pipeline/result.json").read_text())["metrics"]["steps"]
    assert steps == [{"step": "classify squeezenet stage.alpha=0.4 stage.mode=none seed=0", "status": "skipped",
                      "result": str(default)}]
    assert f"up to date (real images alone, as variant default's: {default.parent})" in done.stdout
    assert not (dcgan / "classify_squeezenet_a0.4_none_seed0").exists()

    # trained otherwise than variant default's: its own, and variant default's is left as it was
    done = run_cli(tmp_path, *real_only, 'pipeline.classify.overrides=["stage.max_epochs=2"]', "method=dcgan")
    assert done.returncode == 0, done.stderr[-3000:]
    own = json.loads((dcgan / "classify_squeezenet_a0.4_none_seed0/result.json").read_text())
    assert own["variant"] == "dcgan" and own["metrics"]["epochs"] == 2 and default.read_bytes() == made


@pytest.mark.parametrize("chosen", [["category=Sc"], ["pipeline.categories=[Pa,Sc]"]])
def test_a_pipeline_of_some_categories_runs_no_classifier_and_says_which_it_has_and_what_runs_them(tmp_path, chosen):
    done = run_cli(tmp_path, "stage=pipeline", "logger=none", "pipeline.steps=[classify]", *chosen)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next((tmp_path / "artifacts").rglob("pipeline/result.json")).read_text())
    assert result["metrics"]["steps"] == [] and not list((tmp_path / "artifacts").rglob("classify_*"))
    has = "Sc" if chosen == ["category=Sc"] else "Pa, Sc"
    assert (f"[WARNING] - pipeline: no classifier ran: they learn every class, and this run has {has} of Cr, Pa, PS, "
            "Sc; once the others have theirs (in jobs of their own), run stage=pipeline without category= and "
            "pipeline.categories= for them\n") in done.stdout + done.stderr


@pytest.mark.parametrize("overrides, message", [
    (["pipeline.steps=[adapt,train]"], "pipeline.steps has unknown steps ['train']; choose from adapt, sweep, generate, fid, classify"),
    (["pipeline.adapt=[ti,dreambooth]"], "pipeline.adapt has unknown stages ['dreambooth']; choose from ti, lora, full"),
    (["trainer=ddp"], "stage=pipeline runs its stages in one process; with trainer=ddp run the training stages"),
    (["trainer.accelerator=cpu", "trainer.devices=2"], "stage=pipeline runs its steps in one process, and "
                                                       "trainer.devices=2 (2 devices) would start the whole pipeline in each"),
    (["category=Xy"], "unknown category 'Xy'; valid categories: Cr (crazing)"),
    (["pipeline.generator=sampler"], "pipeline.generator must be one of generate, sample, external, got 'sampler'"),
    (["pipeline.sweep.metric=kid"], "pipeline.sweep.metric must be one of fid, kid_mean, got 'kid'"),
    (["pipeline.sweep.strength=[]"], "pipeline.sweep.strength is empty, so the sweep has no point to run"),
    (["pipeline.steps=adapt"], "pipeline.steps must be a list, got 'adapt'; e.g. pipeline.steps=[adapt]"),
    (["pipeline.classify.seeds=0"], "pipeline.classify.seeds must be a list, got 0; e.g. pipeline.classify.seeds=[0]"),
    (["pipeline.classify.seeds=[]"], "pipeline.classify.seeds is empty, so no classifier would train"),
    (["pipeline.classify=5"], "pipeline.classify must map its settings to values, as conf/pipeline/default.yaml does, "
                              "got 5; set them one by one, e.g. pipeline.classify.seeds=[0,1,2]"),
    (["pipeline.sweep=null"], "pipeline.sweep must map its settings to values, as conf/pipeline/default.yaml does, "
                              "got None; set them one by one, e.g. pipeline.sweep.metric=fid"),
    (["pipeline.categories=[]"], "pipeline.categories is empty, so no category would run; name some, e.g. "
                                 "pipeline.categories=[Pa,Sc], or null for every class"),
    (["category=Pa", "pipeline.categories=[Cr,PS]"], "category=Pa and pipeline.categories=[Cr,PS] both name the "
                                                      "categories to run; keep one"),
    (["pipeline.categories=[Pa,Cr,patches]"], "pipeline.categories=[Pa,Cr,patches] names Pa twice (Pa, patches); give "
                                              "each class once"),  # each of its steps would run twice
    (["pipeline.classify.seeds=[0,-1]"], "each of pipeline.classify.seeds must be an integer from 0 to 4294967295, got -1"),
    (["pipeline.steps=[]"], "pipeline.steps is empty, so nothing would run; name some of adapt, sweep, generate, fid, "
                            "classify"),
])
def test_bad_pipeline_settings_are_a_user_error_before_any_work(tmp_path, make_cfg, overrides, message):
    """The CLI prints a UserError as one line with exit code 2 (tests/test_cli.py); here: which settings raise one."""
    cfg = make_cfg("stage=pipeline", "logger=none", *overrides)
    with pytest.raises(UserError, match=re.escape(message)):
        run(cfg)
    assert not list(tmp_path.rglob("result.json"))


def test_a_dry_run_on_an_empty_store_lists_every_step_and_makes_no_folder(tmp_path):
    done = run_cli(tmp_path, "stage=pipeline", "category=Sc", "pipeline.sweep.strength=[0.5]",
                   "pipeline.sweep.guidance_scale=[2,4]", *FAST_STEPS, "pipeline.dry_run=true")
    assert done.returncode == 0, done.stderr[-3000:]
    chain = ["ti Sc", "lora Sc", "sweep Sc s=0.5 ω=2", "sweep Sc s=0.5 ω=4", "generate Sc", "fid Sc"]
    assert _planned(done.stdout) == dict.fromkeys(chain, "would run (not made yet)")
    assert "pipeline: best for Sc: chosen once the sweep's points have run" in done.stdout
    assert "result:" not in done.stdout and not (tmp_path / "artifacts").exists()


def test_a_dry_run_of_a_folder_dataset_on_an_empty_store_reads_its_classes_from_the_folders_and_writes_nothing(
        tmp_path):
    for name in ("dent", "rust"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for n in range(10):
            Image.new("L", (12, 12), 10 * n).save(tmp_path / "data" / name / f"{n}.png")
    done = run_cli(tmp_path, "stage=pipeline", "dataset=folder", f"dataset.root={tmp_path}/data", "dataset.name=mine",
                   *FAST_STEPS, "pipeline.steps=[adapt,generate,fid]", "pipeline.dry_run=true")
    assert done.returncode == 0, done.stderr[-3000:]
    planned = _planned(done.stdout)
    assert {"ti dent", "fid rust"} <= set(planned) and set(planned.values()) == {"would run (not made yet)"}
    assert not (tmp_path / "artifacts").exists(), "no split file, no scan cache"


def test_a_switch_in_a_steps_override_list_stops_the_pipeline_with_one_line(tmp_path):
    done = run_cli(tmp_path, "stage=pipeline", "category=Sc", "logger=none", "pipeline.steps=[adapt]",
                   "pipeline.adapt=[ti]", 'pipeline.ti=["stage.max_steps=2","stage.flip=no"]')
    assert done.returncode == 2
    assert done.stderr.strip() == "error: stage.flip=no: stage.flip is a switch, set it to true or false", done.stderr
    assert not list(tmp_path.rglob("result.json"))


def test_an_import_pipeline_needs_a_folder_for_every_category_it_imports_before_it_imports_any(tmp_path):
    samples = tmp_path / "samples"
    for name in ("crazing", "Pa"):  # no PS, no Sc
        (samples / name).mkdir(parents=True)
        Image.fromarray(np.full((64, 64), 90, np.uint8)).save(samples / name / "a.png")
    args = ["stage=pipeline", "logger=none", "pipeline.generator=external", "pipeline.steps=[generate]",
            f'pipeline.generation=["stage.source={samples}"]', "pipeline.generate=[]"]  # all the folder's images
    done = run_cli(tmp_path, *args)
    assert done.returncode == 2 and done.stderr == (
        f"error: pipeline step external PS: stage.source={samples} has no sub-folder for PS, Sc (the pipeline imports "
        "Cr, Pa, PS, Sc; name each folder by a class, or choose the categories with pipeline.categories)\n")
    assert not list(tmp_path.rglob("result.json")), "no category imported"
    done = run_cli(tmp_path, *args, "pipeline.categories=[Cr,patches]")
    assert done.returncode == 0, done.stderr
    assert sorted(p.parts[-4] for p in (tmp_path / "artifacts").rglob("generate/result.json")) == ["Cr", "Pa"]


def test_an_import_pipeline_of_several_categories_refuses_a_folder_of_images_without_class_folders(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    for n in range(2):
        Image.fromarray(np.full((64, 64), 90 + n, np.uint8)).save(samples / f"seed{n}.png")
    args = ["stage=pipeline", "logger=none", "pipeline.generator=external", "pipeline.steps=[generate]",
            f'pipeline.generation=["stage.source={samples}"]', "pipeline.generate=[]"]
    done = run_cli(tmp_path, *args, "pipeline.categories=[Cr,Pa]")
    assert done.returncode == 2 and done.stderr == (
        f"error: pipeline step external Cr: stage.source={samples} holds images directly, not in class sub-folders, so "
        "every category would import the same images (the pipeline imports Cr, Pa); put each class's images in a "
        "sub-folder named by the class, or import one category with category=\n")
    assert not list(tmp_path.rglob("result.json")), "no category imported"
    done = run_cli(tmp_path, *args, "category=Pa")
    assert done.returncode == 0, done.stderr
    assert [p.parts[-4] for p in (tmp_path / "artifacts").rglob("generate/result.json")] == ["Pa"]


@pytest.mark.parametrize("overrides, message", [
    (["pipeline.classify.classifiers=[alexnet,lenet]"],
     "classifier=lenet: there is no classifier 'lenet'; choose from alexnet, densenet, resnet, squeezenet, vgg "
     "(did you mean classifier=alexnet?)"),
    (['pipeline.generate=["stage.num_imgs=3"]'],
     "stage.num_imgs=3: stage=generate has no setting stage.num_imgs (did you mean stage.num_images?)"),
    (['pipeline.classify.overrides=["seed=abc"]'],  # was Hydra's type error, three lines in one
     "seed=abc: seed must be an integer from 0 to 4294967295, got abc"),
    (["pipeline.sweep.strength=[0.5,2.0]"], "pipeline.sweep point s=2.0, ω=3: stage.strength must be in (0, 1], got 2.0"),
    (['pipeline.sweep.overrides=["stage.real_split=valid"]'],
     "pipeline.sweep point s=0.3, ω=3: stage.real_split must be one of train, val, test, got 'valid'"),
    (['pipeline.generate=["stage.source_split=training"]'],
     "pipeline step generate Cr: stage.source_split must be one of train, val, test, got 'training'"),
    (['pipeline.fid=["stage.real_split=validation"]'],
     "pipeline step fid Cr: stage.real_split must be one of train, val, test, got 'validation'"),
    (["method=ddpm", 'pipeline.generate=["stage.num_images=0"]'],
     "pipeline step sample Cr: stage.num_images must be a positive integer, got 0"),
    (['pipeline.lora=["stage.rank=0"]'], "pipeline step lora Cr: stage.rank must be a positive integer, got 0"),
    (['pipeline.generate=["stage.num_images=1"]'],  # the set was made, then its fid step refused it
     "pipeline step generate Cr: stage.num_images=1 leaves FID fewer than the 2 generated images it needs"),
    (["method=ddpm", "pipeline.adapt=[ti]"],  # TI trained, then sampling found no DDPM
     "pipeline step sample Cr: stage.generator=ddpm needs the ddpm model of variant ddpm, which no step of this pipeline "
     "makes and the artifact store does not hold yet; add ddpm to pipeline.adapt (with adapt in pipeline.steps), or "
     "train it first"),
    (["pipeline.steps=[sweep,generate,fid]"],
     "pipeline step generate Cr: stage.adapter=lora needs the lora model of variant default, which no step of this "
     "pipeline makes and the artifact store does not hold yet; add lora to pipeline.adapt (with adapt in "
     "pipeline.steps), or train it first"),
    (['pipeline.generate=["stage.num_images=200"]'],  # every category was generated, then classify refused the set
     "pipeline step classify alexnet stage.alpha=0.4 stage.mode=expand: stage.mode=expand adds "
     "stage.extra_per_class=1000 generated images per class, but the pipeline's default set has 200 "
     "(its stage.num_images)"),
    (['pipeline.classify.overrides=["stage.num_workers=-1"]'],
     "pipeline step classify alexnet stage.alpha=0.4 stage.mode=none: "
     "stage.num_workers must be an integer >= 0 (0: none), got -1"),
    (["pipeline.classify.classifiers=[resnet]", 'pipeline.classify.overrides=["classifier.depth=7"]'],
     "pipeline step classify resnet stage.alpha=0.4 stage.mode=none: torchvision has no resnet7 (classifier.depth=7); "
     "classifier=resnet comes in depths 18, 34, 50, 101, 152"),
    (['pipeline.lora=["+stage.rnk=4"]'],  # LoRA at the default rank, without a word
     "+stage.rnk=4: stage=lora has no setting stage.rnk, so nothing "
     "would read it (did you mean stage.rank?)"),
    (['pipeline.classify.overrides=["+trainer.max_step=5"]'],  # Lightning refused it after every category's chain
     "pipeline step classify alexnet stage.alpha=0.4 stage.mode=none: "
     "trainer.max_step: lightning.Trainer takes no argument max_step (did you mean trainer.max_steps?)"),
    (['pipeline.classify.overrides=["+trainer.max_epochs=1"]'],  # each classifier trained stage.max_epochs without a word
     "trainer.max_epochs is set by each stage from its own settings, so trainer.max_epochs=1 would do nothing: drop "
     "it; set stage.max_epochs (classify) or stage.max_steps (ti, lora, full, dcgan, ddpm)"),
    (["method=stylegan3", "pipeline.adapt=[ti]"],  # TI trained, then the import found no folder to import
     "pipeline step external Cr: stage.source has no value (??? in its config); give it in that step's overrides, "
     "e.g. 'pipeline.generation=[\"stage.source=<value>\"]'"),
])
def test_a_typo_in_a_later_step_stops_the_pipeline_in_one_line_before_its_first_step_runs(tmp_path, overrides, message):
    done = run_cli(tmp_path, "stage=pipeline", "logger=none", *overrides)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {message}", done.stderr
    assert not list(tmp_path.rglob("result.json")), "no step ran"


def test_a_pipeline_that_reads_from_the_store_what_was_made_on_another_split_stops_before_its_first_step(tmp_path):
    from stablesdg.generated import write_generated_set

    split0 = "split-seed0-0.8-0.1-0.1"  # the split file's name (README)
    store = tmp_path / "artifacts"
    for category in ("Cr", "Pa", "PS", "Sc"):  # a LoRA and a set of 3 images per class, made on split 0
        lora = artifacts.stage_dir(store, "synthetic", category, "default", "lora")
        lora.mkdir(parents=True)
        (lora / artifacts.RESULT_FILE).write_text(json.dumps({"stage": "lora", "split": split0}))
        made = artifacts.stage_dir(store, "synthetic", category, "default", "generate")
        write_generated_set(made, [{"seed": i} for i in range(3)],
                            lambda indices: [Image.new("L", (64, 64), 50 * i) for i in indices], 3, "set")
        (made / artifacts.RESULT_FILE).write_text(json.dumps({"stage": "generate", "split": split0}))
    before = _results(store)
    refused = "{}: synthetic/Cr/default/{} was made on the split " + split0 + " and this run splits the images as " \
              "split-seed1-0.8-0.1-0.1 (dataset.split), so images it learned from or was made from may be among"
    for steps, step, stage in (("[classify]", "classify alexnet stage.alpha=0.4 stage.mode=expand", "generate"),
                               ("[fid]", "fid Cr", "generate"), ("[generate,fid,classify]", "generate Cr", "lora")):
        done = run_cli(tmp_path, "stage=pipeline", "logger=none", "dataset.split.seed=1", f"pipeline.steps={steps}")
        assert done.returncode == 2 and done.stderr.startswith(f"error: pipeline step {refused.format(step, stage)}"), \
            done.stderr
        assert _results(store) == before, "no step ran"
    done = run_cli(tmp_path, "stage=pipeline", "logger=none", "pipeline.steps=[fid]", 'pipeline.fid=["stage.features=pixels"]')
    assert done.returncode == 0, done.stderr
    assert json.loads((store / "synthetic/Cr/default/fid/result.json").read_text())["split"] == split0


def test_a_pipeline_without_its_sweep_warns_that_it_generates_at_the_table_not_at_what_the_sweep_chose(tmp_path):
    tuned = tmp_path / "artifacts/synthetic/sweeps/default/tuned_generation.yaml"
    tuned.parent.mkdir(parents=True)
    tuned.write_text("Pa: {strength: 0.3, guidance_scale: 5.0, fid: 1.0}\n")  # as the sweep aggregation writes it
    args = ["stage=pipeline", "logger=none", "pipeline.steps=[generate]", "pipeline.categories=[Pa,Cr]",
            'pipeline.generate=["stage.num_images=2","stage.num_inference_steps=2"]']
    done = run_cli(tmp_path, *args, 'pipeline.generation=["stage.adapter=base"]')
    assert done.returncode == 0, done.stderr
    assert re.findall(r"\[WARNING\] - (.*)", done.stdout) == [
        f"pipeline: generate Pa at s=0.5 (conf/generation/), not at s=0.3, which the sweep of variant default "
        f"chose ({tuned}): sweep is not in pipeline.steps; add it to generate at those (its finished points do not run "
        "again)"], "Cr has no tuned setting"
    with open(tmp_path / "artifacts/synthetic/Pa/default/generate/manifest.csv", newline="") as handle:
        assert {row["strength"] for row in csv.DictReader(handle)} == {"0.5"}, "what the warning said"
    done = run_cli(tmp_path, *args, 'pipeline.generation=["stage.adapter=base","stage.strength=0.5"]')
    assert done.returncode == 0 and "[WARNING]" not in done.stdout, "a strength given is the user's choice"


def test_a_generator_step_reads_a_model_an_earlier_step_makes_or_the_store_holds(make_cfg):
    from stablesdg import artifacts
    from stablesdg.pipeline_checks import _model_made_or_found

    step = make_cfg("stage=generate", "category=Pa", "stage.adapter=lora")
    with pytest.raises(UserError, match=r"^stage.adapter=lora needs the lora model of variant default, "):
        _model_made_or_found({("lora", "seed1"), ("ti", "default")}, "Pa", step)
    _model_made_or_found({("lora", "default")}, "Pa", step)
    lora = artifacts.stage_dir(step.paths.artifacts, "synthetic", "Pa", "default", "lora")
    lora.mkdir(parents=True)
    (lora / artifacts.RESULT_FILE).write_text("{}")
    _model_made_or_found(set(), "Pa", step)


def test_a_pipeline_composed_in_python_refuses_rather_than_dropping_the_command_line(tmp_path, make_cfg, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default ./artifacts would go
    cfg = make_cfg("stage=pipeline", "category=Sc", "logger=none")
    with pytest.raises(RuntimeError, match="stage=pipeline needs its command line"):
        run(cfg)
    assert not list(tmp_path.rglob("result.json")), "no step ran with the defaults"


def test_ctrl_c_in_a_step_names_the_step_and_where_in_it(tmp_path, monkeypatch):
    from stablesdg.stages import adapt

    def interrupted(cfg, out):
        raise KeyboardInterrupt("at step 7")  # what run_fit raises after Lightning's shutdown

    monkeypatch.setattr(adapt, "run_ti", interrupted)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    done = run_cli(tmp_path, "stage=pipeline", "category=Sc", "logger=none")
    assert done.returncode == 130
    assert done.stderr.strip() == (
        "error: stage=pipeline stopped by Ctrl-C in its step 'ti Sc' at step 7; run the same command again to resume")


def test_sigterm_outside_a_training_loop_stops_the_run_in_one_line_naming_the_pipelines_step(tmp_path, monkeypatch):
    import signal

    from stablesdg.stages import adapt

    def caching_latents(cfg, out):  # where a TI run is before its training loop starts
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        pytest.fail("SIGTERM did not stop the run")

    monkeypatch.setattr(adapt, "run_ti", caching_latents)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    done = run_cli(tmp_path, "stage=pipeline", "category=Sc", "logger=none")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: pipeline step ti Sc: stage=ti stopped by SIGTERM; run the same command again to resume")
    assert signal.getsignal(signal.SIGTERM) == before, "the process's handler put back"


@pytest.mark.parametrize("stage, frozen_before", [("ti", False), ("lora", False), ("classify", False),
                                                   ("ti", True)])  # as a pipeline's step is run: its pipeline froze
def test_a_stage_frees_its_models_when_it_ends_before_the_next_stage_of_the_process(tmp_path, stage, frozen_before):
    # the collection that frees them scans only what the stage made, the objects there before frozen out of it and
    # given back to the collector after, unless they were frozen before the stage began
    import gc

    from lightning import LightningModule

    common = [f"paths.artifacts={tmp_path}/artifacts", "logger=none", "dataset.synthetic.per_class=10"]
    grid = "stage.validation_steps=2"  # the grid at the end, whose pipeline holds the models too, in 2 steps not 25
    steps = {"ti": ["stage=ti", "category=Pa", "stage.max_steps=2", grid],
             "lora": ["stage=lora", "category=Pa", "stage.max_steps=2", "stage.use_ti=false", grid],
             "classify": ["stage=classify", "classifier=squeezenet", "stage.max_epochs=1"]}
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()  # only the stage's own collection frees what its reference cycles hold
    try:
        if frozen_before:
            gc.freeze()
        frozen = gc.get_freeze_count()
        run(compose_config([*common, *steps[stage]]))
        frozen_after, switched_on = gc.get_freeze_count(), gc.isenabled()
        gc.unfreeze()  # gc.get_objects() leaves out frozen objects
        with warnings.catch_warnings():  # isinstance() of every object reads torch's deprecated aliases too
            warnings.simplefilter("ignore", FutureWarning)
            alive = [type(thing).__name__ for thing in gc.get_objects() if isinstance(thing, LightningModule)]
    finally:
        gc.unfreeze()
        if collecting:
            gc.enable()
    assert alive == [], "the model it trained would hold its memory (a GPU's) into the next stage"
    assert not switched_on, "the collector, paused while the stage loads its libraries, is left as the caller set it"
    if frozen_before:
        assert frozen_after >= frozen > 0, "what its pipeline froze is the pipeline's to give back"
    else:
        assert frozen == frozen_after == 0, "nothing is left out of the collector's later collections"
