"""The artifact store: its layout, the result.json contract, the lock on a stage's folder."""

from __future__ import annotations

import json

import pytest
import torch

from stablesdg import artifacts, provenance
from stablesdg.errors import UserError
from stablesdg.run_signals import SigtermReceived


def test_stage_dir_layout(tmp_path):
    assert artifacts.stage_dir(tmp_path, "neu", "Pa", "default", "ti") == tmp_path / "neu" / "Pa" / "default" / "ti"
    assert artifacts.stage_dir(tmp_path, "neu", None, "seed1", "classify") == tmp_path / "neu" / "all" / "seed1" / "classify"
    for bad in ("", "a/b", ".."):
        with pytest.raises(UserError, match="cannot name an artifact directory"):
            artifacts.stage_dir(tmp_path, "neu", "Pa", bad, "ti")
    # the names each level keeps for the store's own folders
    for dataset, category, variant in (("report", "Pa", "default"), ("neu", "splits", "default"),
                                       ("neu", "sweeps", "default"), ("neu", "all", "default"), ("neu", "Pa", "_cache")):
        with pytest.raises(UserError, match=r"cannot name an artifact directory: <(store|dataset)>/\S+ holds "):
            artifacts.stage_dir(tmp_path, dataset, category, variant, "ti")
    assert artifacts.stage_dir(tmp_path, "neu", "Pa", "sweeps", "ti") == tmp_path / "neu/Pa/sweeps/ti", \
        "a name kept at one level is free at another"
    with pytest.raises(UserError) as refused:
        artifacts.stage_dir(tmp_path, "report", None, "default", "inspect")
    assert str(refused.value) == ("dataset.name='report' cannot name an artifact directory: <store>/report holds the "
                                  "report's tables; choose another name")


def test_the_store_lists_the_stages_of_every_variant_but_not_its_own_folders(tmp_path):
    from stablesdg.status import store_states

    for folder in ("neu/Pa/sweeps/ti", "neu/Pa/splits/ti", "neu/all/default/inspect", "neu/sweeps/default/x",
                   "neu/splits/a/b", "neu/Pa/_cache/x"):
        (tmp_path / folder).mkdir(parents=True)
    assert [state.folder for state in store_states(tmp_path)] == ["neu/all/default/inspect", "neu/Pa/splits/ti",
                                                                  "neu/Pa/sweeps/ti"]


@pytest.mark.parametrize("failure, changes_a_file, restored", [
    (UserError("stage.lr must be a positive finite number, got 0"), False, True),  # refused before any work
    (UserError("cannot read a source image"), True, False),  # refused after it replaced a file: no longer finished
    (RuntimeError("a crash"), False, False),  # not a refusal: the rerun is left unfinished
    (KeyboardInterrupt("at step 0"), False, True),  # Ctrl-C before any work: the finished result still holds
    (KeyboardInterrupt("at step 3"), True, False),
    (SigtermReceived(), False, True),  # a scheduler's SIGTERM before any work
])
def test_result_json_is_put_back_only_when_a_refused_or_stopped_run_changed_nothing(tmp_path, failure, changes_a_file, restored):
    path = artifacts.write_result(tmp_path / "x", stage="ti", dataset="neu", category="Pa", variant="default",
                                  metrics={"n": 3}, config={"seed": 0}, wall_time_s=1.0)
    (tmp_path / "x" / "images").mkdir()
    (tmp_path / "x" / "images" / "00000.png").write_bytes(b"old")
    finished = path.read_bytes()
    with pytest.raises(type(failure)):
        with artifacts.result_cleared(tmp_path / "x"):
            assert not path.exists(), "an unfinished rerun never looks finished"
            if changes_a_file:
                (tmp_path / "x" / "images" / "00000.png").write_bytes(b"new image")
            raise failure
    assert (path.read_bytes() == finished) if restored else not path.exists()


def test_a_finished_rerun_leaves_result_json_to_its_writer(tmp_path):
    path = artifacts.write_result(tmp_path, stage="ti", dataset="neu", category="Pa", variant="default",
                                  metrics={}, config={}, wall_time_s=1.0)
    with artifacts.result_cleared(tmp_path):
        pass
    assert not path.exists()


def test_result_json_has_the_contract_keys(tmp_path):
    path = artifacts.write_result(tmp_path / "x", stage="inspect", dataset="neu", category="Pa", variant="default",
                                  metrics={"n": 3}, config={"seed": 0, "a": {"b": 1}}, wall_time_s=1.23456)
    record = json.loads(path.read_text())
    assert set(record) == {"stage", "dataset", "category", "variant", "metrics", "config", "config_hash", "checksums",
                           "inputs", "split", "model_files", "setting_files", "versions", "git_commit", "machine",
                           "wall_time_s", "finished_ns"}
    assert record["inputs"] == {} and record["split"] is None, "a run that read no finished stage and no split"
    assert record["model_files"] is None and record["setting_files"] == {}, \
        "a run that read no model files and no files a setting names"
    assert (record["stage"], record["dataset"], record["category"], record["variant"]) == ("inspect", "neu", "Pa", "default")
    assert record["metrics"] == {"n": 3} and record["wall_time_s"] == 1.235
    assert {"python", "torch", "diffusers", "transformers", "peft", "lightning"} <= set(record["versions"])
    assert record["config_hash"] == provenance.config_hash({"a": {"b": 1}, "seed": 0})
    assert record["machine"] == {"cpu": provenance.cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                 "cpu_threads": torch.get_num_threads(), "gpu": None, "cuda": None}
    assert artifacts.read_result(tmp_path / "x") == record


def test_the_machine_names_the_cpus_model_and_the_gpu_a_stage_computed_on(tmp_path, monkeypatch):
    intel = tmp_path / "cpuinfo"
    intel.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n\n"
                     "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n")
    arm = tmp_path / "cpuinfo-arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")
    assert provenance.cpu_name(intel) == "Intel(R) Xeon(R) Platinum 8480+"
    monkeypatch.setattr(provenance.platform, "processor", lambda: "")
    monkeypatch.setattr(provenance.platform, "machine", lambda: "aarch64")
    assert provenance.cpu_name(arm) == "aarch64" == provenance.cpu_name(tmp_path / "none"), "no model name: the architecture"

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"NVIDIA H200 (index {device.index})")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    on_gpu = provenance.machine(torch.device("cuda", 1))
    assert (on_gpu["gpu"], on_gpu["cuda"]) == ("NVIDIA H200 (index 1)", "13.0")
    assert (provenance.machine(torch.device("cpu"))["gpu"], provenance.machine()["cuda"]) == (None, None)


def test_config_hash_ignores_key_order_only():
    assert provenance.config_hash({"a": 1, "b": 2}) == provenance.config_hash({"b": 2, "a": 1})
    assert provenance.config_hash({"a": 1}) != provenance.config_hash({"a": 2})


def test_corrupt_json_is_a_user_error(tmp_path):
    (tmp_path / "result.json").write_text("{broken")
    with pytest.raises(UserError, match="is not valid JSON"):
        artifacts.read_result(tmp_path)


@pytest.mark.parametrize("content", ["[]", '"done"', '{"stage": "ti"}', '{"metrics": {}}', '{"stage": "ti", "metrics": 3}'])
def test_a_result_that_is_json_but_not_a_stage_result_is_a_user_error(tmp_path, content):
    (tmp_path / "result.json").write_text(content)
    with pytest.raises(UserError, match=r"result.json is not a stage's result .*; delete it and run the stage again"):
        artifacts.read_result(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "delete"])
def test_a_damaged_weight_artifact_is_refused_with_the_command_that_remakes_it(tmp_path, damage):
    import torch
    from safetensors.torch import save_file

    directory = artifacts.stage_dir(tmp_path, "neu", "Pa", "default", "ti")
    directory.mkdir(parents=True)
    weights = directory / "learned_embeds.safetensors"
    save_file({"<unknown>": torch.arange(12.0).reshape(3, 4)}, str(weights))
    artifacts.write_result(directory, stage="ti", dataset="neu", category="Pa", variant="default", metrics={},
                           config={}, wall_time_s=0.0)
    assert artifacts.read_result(directory)["checksums"] == {"learned_embeds.safetensors": provenance.file_sha256(weights)}
    assert artifacts.finished_stage_dir(tmp_path, "neu", "Pa", "default", "ti", needed_by="lora") == directory
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[:-7])
    elif damage == "flip_a_byte":
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        weights.unlink()
    with pytest.raises(UserError) as error:
        artifacts.finished_stage_dir(tmp_path, "neu", "Pa", "default", "ti", needed_by="lora")
    expected = "is missing although" if damage == "delete" else "was changed or truncated after it was written"
    assert expected in str(error.value)
    assert str(error.value).endswith("remake it with: python -m stablesdg.train stage=ti dataset=neu category=Pa variant=default")


def test_a_full_or_read_only_disk_is_a_one_line_user_error():
    import errno

    from stablesdg.errors import find_user_error

    for code, reason in ((errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")):
        wrapped = RuntimeError("while saving")
        wrapped.__cause__ = OSError(code, reason, "/data/artifacts/neu/Pa/default/ti/x.safetensors")
        assert str(find_user_error(wrapped)) == (f"cannot write or read /data/artifacts/neu/Pa/default/ti/x.safetensors: "
                                                 f"{reason} (check paths.artifacts, paths.logs and free space)")
    assert find_user_error(OSError(errno.EIO, "I/O error", "/x")) is None, "other OS errors keep their trace"
