"""Files written whole or not at all, and files made once: ``stablesdg.atomic_files``."""

from __future__ import annotations

import json
import os
import stat

import pytest

from stablesdg import atomic_files
from stablesdg.errors import UserError


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "data.json"
    atomic_files.write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_files.atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_a_staged_folder_replaces_its_target_whole_or_not_at_all_and_clears_what_a_killed_run_left(tmp_path):
    target = tmp_path / "pipeline"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    (tmp_path / ".pipeline.partial").mkdir()  # a run killed while it wrote
    (tmp_path / ".pipeline.partial" / "half.bin").write_bytes(b"ha")
    with pytest.raises(RuntimeError):
        with atomic_files.staged_folder(target) as staged:
            assert list(staged.iterdir()) == [], "a folder left by a killed run is not reused"
            (staged / "new.bin").write_bytes(b"new")
            raise RuntimeError("failed while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]
    assert [p.name for p in target.iterdir()] == ["old.bin"]
    with atomic_files.staged_folder(target) as staged:
        (staged / "new.bin").write_bytes(b"new")
        assert [p.name for p in target.iterdir()] == ["old.bin"], "the old folder stays until the new one is whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]
    assert [p.name for p in target.iterdir()] == ["new.bin"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
                         ids=["umask-022", "umask-002", "umask-077"])
def test_an_atomically_written_file_has_the_mode_the_umask_gives_a_plain_file(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_files.write_bytes_atomic(tmp_path / "weights.safetensors", b"data")
        (tmp_path / "plain.txt").write_bytes(b"data")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "weights.safetensors").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode  # what a group-shared store expects


def test_unwritable_output_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write in"):
        atomic_files.write_json_atomic(blocker / "r.json", {})


def test_safetensors_artifacts_are_byte_identical_whatever_the_metadata_order(tmp_path):
    import torch
    from safetensors import safe_open

    from stablesdg.atomic_files import save_safetensors_atomic

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.float16)}
    metadata = {f"key{i}": str(i) for i in range(16)}
    saved = []
    for i, order in enumerate([metadata, dict(reversed(list(metadata.items())))] * 3):
        save_safetensors_atomic(tmp_path / f"{i}.safetensors", tensors, metadata=order)
        saved.append((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(set(saved)) == 1, "one content, one byte sequence"
    with safe_open(tmp_path / "0.safetensors", framework="pt") as handle:
        assert handle.metadata() == metadata
        assert all(torch.equal(handle.get_tensor(k), v) for k, v in tensors.items())


def test_a_cache_is_computed_once_by_concurrent_jobs_that_leave_no_lock_file_beside_it(tmp_path):
    import threading
    import time

    import torch

    path = tmp_path / "Pa" / "_cache" / "latents.safetensors"
    computed, results = [], []

    def compute():
        computed.append(1)
        time.sleep(0.3)  # the other job arrives meanwhile and waits on the lock
        return torch.arange(6.0).reshape(2, 3)

    jobs = [threading.Thread(target=lambda: results.append(atomic_files.cached_tensor(path, "latent_dist", compute,
                                                                                     what="latent cache")))
            for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert len(computed) == 1 and len(results) == 3
    assert all(torch.equal(result, torch.arange(6.0).reshape(2, 3)) for result in results)
    assert [p.name for p in path.parent.iterdir()] == ["latents.safetensors"], "no .lock file is left"
    path.write_bytes(path.read_bytes()[:20])  # a cache cut short (a full disk, a copy interrupted)
    with pytest.raises(UserError, match=f"^latent cache {path} is unreadable \\(.*\\); delete it to recompute$"):
        atomic_files.cached_tensor(path, "latent_dist", compute, what="latent cache")
    assert len(computed) == 1 and [p.name for p in path.parent.iterdir()] == ["latents.safetensors"]


def test_a_lightning_checkpoint_is_written_beside_its_path_with_the_umasks_mode_not_through_the_temp_folder(
        tmp_path, monkeypatch):
    import tempfile

    import torch

    from stablesdg.checkpoint_files import CheckpointWrittenBeside

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp-folder"))  # Lightning's writer stages there
    path = tmp_path / "checkpoints/last.ckpt"
    previous = os.umask(0o002)
    try:
        CheckpointWrittenBeside().save_checkpoint({"state_dict": {"w": torch.arange(4.0)}, "global_step": 7}, path)
    finally:
        os.umask(previous)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o664, "a group sharing the store can resume the run"
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == 7 and torch.equal(loaded["state_dict"]["w"], torch.arange(4.0))


def test_a_checkpoint_that_the_disk_cannot_hold_is_a_one_line_error_naming_it_and_leaves_no_file(tmp_path, monkeypatch):
    import builtins

    import torch

    from stablesdg import checkpoint_files

    def full_disk(file, mode="r", *args, **kwargs):  # the staged file, on a disk with no space left
        return builtins.open("/dev/full", mode, *args, **kwargs) if "w" in mode else builtins.open(file, mode)

    monkeypatch.setattr(checkpoint_files, "open", full_disk, raising=False)
    path = tmp_path / "checkpoints/last.ckpt"
    with pytest.raises(UserError, match=f"^cannot write {path}: No space left on device$"):
        checkpoint_files.CheckpointWrittenBeside().save_checkpoint({"w": torch.zeros(100_000)}, path)
    assert list(path.parent.iterdir()) == []
