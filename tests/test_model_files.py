"""A result's model weights told apart by their content: the same weights wherever model.path finds them make the
same results; other weights at the same path do not."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

from conftest import compose_config, run_cli
from stablesdg import artifacts, model_files, provenance
from stablesdg.models import build_tiny_sd
from stablesdg.sweeps import scoring_settings
from stablesdg.up_to_date import why_not_up_to_date

SD15 = "stablesdg.models.load_sd15"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A diffusers folder of the tiny model's weights, as model=sd15 reads one."""
    folder = tmp_path_factory.mktemp("weights") / "sd"
    build_tiny_sd(seed=3).pipeline().save_pretrained(folder)
    return folder


def _model(path, **settings) -> dict:
    return {"_target_": SD15, "name": "sd15", "path": str(path), "config": None, "variant": None, "resolution": 64,
            **settings}


def test_a_folders_digest_is_its_files_content_wherever_it_lies_in_the_variant_read(tiny_folder, tmp_path):
    digest = model_files.model_digest(_model(tiny_folder), tmp_path / "store")
    assert len(digest) == 64
    copy = shutil.copytree(tiny_folder, tmp_path / "elsewhere/copy")
    assert model_files.model_digest(_model(copy), tmp_path / "store") == digest
    unet = copy / "unet/diffusion_pytorch_model.safetensors"
    shutil.copy(unet, unet.with_name("diffusion_pytorch_model.fp16.safetensors"))
    (copy / ".cache").mkdir()
    (copy / "unet/.cache").mkdir()
    (copy / "unet/.cache/download.lock").write_text("")
    assert model_files.model_digest(_model(copy), tmp_path / "store") == digest, \
        "another variant's weights, a download's hidden files: not read"
    config = json.loads((copy / "unet/config.json").read_text())
    (copy / "unet/config.json").write_text(json.dumps({**config, "norm_eps": 1e-6}))
    assert model_files.model_digest(_model(copy), tmp_path / "store") not in (digest, None), "a config is read"
    build_tiny_sd(seed=4).pipeline().save_pretrained(tmp_path / "other")
    assert model_files.model_digest(_model(tmp_path / "other"), tmp_path / "store") not in (digest, None)


def test_a_checkpoints_digest_is_its_bytes_and_its_configs_under_any_name(tiny_folder, tmp_path):
    checkpoint = tmp_path / "v1-5.safetensors"
    checkpoint.write_bytes(os.urandom(4096))
    by_hub = model_files.model_digest(_model(checkpoint, config="org/configs"), tmp_path)
    renamed = checkpoint.rename(tmp_path / "sd15-pruned.safetensors")
    assert model_files.model_digest(_model(renamed, config="org/configs"), tmp_path) == by_hub
    assert model_files.model_digest(_model(renamed, config="org/other-configs"), tmp_path) != by_hub
    configs = shutil.copytree(tiny_folder, tmp_path / "configs")
    by_folder = model_files.model_digest(_model(renamed, config=str(configs)), tmp_path)
    (configs / "unet/diffusion_pytorch_model.safetensors").unlink()  # a folder of configs alone suffices
    moved = configs.rename(tmp_path / "configs-moved")
    assert model_files.model_digest(_model(renamed, config=str(moved)), tmp_path) == by_folder != by_hub


@pytest.mark.parametrize("model", [
    {"_target_": "stablesdg.models.build_tiny_sd", "name": "tiny", "seed": 0},
    {"_target_": SD15, "path": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
    {"_target_": SD15, "path": "/nowhere/sd15"},
    None,
])
def test_a_model_read_from_no_local_files_has_no_digest(model, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert model_files.model_digest(model, tmp_path) is None


def test_a_hub_ids_digest_is_its_cached_downloads_as_a_folder_of_the_files_the_loader_reads_has_it(tiny_folder,
                                                                                                  tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    repo = cache / "models--org--tiny-sd"
    snapshot = repo / "snapshots" / ("c0ffee" * 6 + "c0ff")
    for file in (f for f in tiny_folder.rglob("*") if f.is_file() and f.parent != tiny_folder):
        blob = repo / "blobs" / provenance.file_sha256(file)  # the cache's layout: snapshot links to blobs
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, blob)
        (snapshot / file.relative_to(tiny_folder)).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / file.relative_to(tiny_folder)).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(snapshot.name)
    digest = model_files.model_digest(_model(tiny_folder), tmp_path)
    assert model_files.model_digest(_model("org/tiny-sd"), tmp_path) == digest
    full = shutil.copytree(tiny_folder, tmp_path / "full-download")  # hf download: every file of the repository
    for component, weights in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (full / component / f"{weights}.bin").write_bytes(os.urandom(64))
    assert model_files.model_digest(_model(full), tmp_path) == digest, "safetensors are read where there are some"
    for component, weights in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (full / component / f"{weights}.safetensors").unlink()
    assert model_files.model_digest(_model(full), tmp_path) not in (digest, None), "else the pickled weights"
    assert model_files.model_digest(_model("org/not-downloaded"), tmp_path) is None


def test_each_files_digest_is_computed_once_for_its_size_and_time_and_kept_in_the_store_or_the_process(
        tiny_folder, tmp_path, monkeypatch):
    copy = shutil.copytree(tiny_folder, tmp_path / "sd")
    read = []
    real = model_files.file_sha256
    monkeypatch.setattr(model_files, "file_sha256", lambda path: read.append(Path(path).name) or real(path))
    digest = model_files.model_digest(_model(copy), tmp_path)
    assert sorted(read) == sorted(f.name for f in copy.rglob("*") if f.is_file() and f.parent != copy)
    kept = json.loads((tmp_path / model_files.DIGESTS_FILE).read_text())
    assert set(kept) == {str(f.resolve()) for f in copy.rglob("*") if f.is_file() and f.parent != copy}
    read.clear()
    assert model_files.model_digest(_model(copy), tmp_path) == digest and read == []
    unet = copy / "unet/diffusion_pytorch_model.safetensors"
    os.utime(unet, ns=(unet.stat().st_atime_ns, unet.stat().st_mtime_ns + 10**9))
    assert model_files.model_digest(_model(copy), tmp_path) == digest and read == [unet.name], "touched: read again"
    moved = copy.rename(tmp_path / "moved")
    read.clear()
    assert model_files.model_digest(_model(moved), tmp_path) == digest and len(read) == len(kept)
    assert set(json.loads((tmp_path / model_files.DIGESTS_FILE).read_text())) == \
        {str(f.resolve()) for f in moved.rglob("*") if f.is_file() and f.parent != moved}, "the moved files' alone"
    fresh = shutil.copytree(moved, tmp_path / "fresh")
    read.clear()
    for _ in range(2):  # a first run on a new store: the run's checks, then its work
        assert model_files.model_digest(_model(fresh), tmp_path / "absent-store") == digest
    assert len(read) == len(kept), "each file read once in a process, though no store keeps its digest"
    assert not (tmp_path / "absent-store").exists(), "no store is made to keep digests in"


def _ti_result(tmp_path: Path, model: dict, digest: str | None) -> Path:
    config = {"stage": {"name": "ti", "lr": 0.005}, "model": model, "seed": 0}
    return artifacts.write_result(tmp_path / "store/d/Sc/v/ti", stage="ti", dataset="d", category="Sc", variant="v",
                                  metrics={}, config=config, wall_time_s=0.0, model_files=digest)


def test_make_compares_a_recorded_models_files_not_its_path_and_a_result_recording_none_by_its_path(tiny_folder,
                                                                                                     tmp_path):
    store = str(tmp_path / "store")
    made = _model(tiny_folder)
    result = _ti_result(tmp_path, made, model_files.model_digest(made, store))
    wanted = json.loads(result.read_text())["config"]
    moved = shutil.copytree(tiny_folder, tmp_path / "moved")
    now = {**wanted, "model": _model(moved)}
    assert why_not_up_to_date(result, now, newest_input=0, store=store) is None
    assert why_not_up_to_date(result, {**now, "stage": {"name": "ti", "lr": 0.01}}, newest_input=0, store=store) == \
        "made with other settings: stage.lr=0.005 (now 0.01)", "the other settings are still compared"
    assert why_not_up_to_date(result, {**now, "model": {**now["model"], "resolution": 512}}, 0, store) == \
        "made with other settings: model.resolution=64 (now 512)"
    build_tiny_sd(seed=4).pipeline().save_pretrained(moved)
    assert why_not_up_to_date(result, now, newest_input=0, store=store) == \
        f"made from other model weights than model.path={moved} holds"
    shutil.rmtree(moved)
    assert why_not_up_to_date(result, now, newest_input=0, store=store) == \
        f"made with other settings: model.path={tiny_folder} (now {moved})"
    shutil.copytree(tiny_folder, tmp_path / "held", dirs_exist_ok=True)
    held = {**wanted, "model": _model(tmp_path / "held")}
    older = _ti_result(tmp_path, made, None)  # made before results recorded their model files
    assert why_not_up_to_date(older, held, newest_input=0, store=store) == \
        f"made with other settings: model.path={tiny_folder} (now {tmp_path / 'held'})"
    assert why_not_up_to_date(older, wanted, newest_input=0, store=store) is None


def test_status_and_the_report_call_a_result_stale_once_its_model_path_holds_other_weights_and_not_when_it_is_gone(
        tiny_folder, tmp_path, capsys):
    from stablesdg import report

    store = tmp_path / "store"
    folder = shutil.copytree(tiny_folder, tmp_path / "sd")
    _ti_result(tmp_path, _model(folder), model_files.model_digest(_model(folder), store))

    def status() -> list[str]:
        assert report.main(["status", "--artifacts", str(store)]) == 0
        return capsys.readouterr().out.splitlines()

    def stale_note():
        return report.stale_note(store, artifacts.load_results(store))

    assert status()[-1] == "1 finished" and stale_note() is None
    parked = folder.rename(tmp_path / "parked")
    assert status()[-1] == "1 finished" and stale_note() is None, "weights not there: nothing to tell"
    build_tiny_sd(seed=4).pipeline().save_pretrained(folder)
    line, counts = status()
    assert line.split(None, 2)[1] == "stale" and line.endswith(
        f"from other model weights than model.path={folder} holds now; run the stage again")
    assert counts == "1 stale"
    assert stale_note().startswith("1 of these results (first: d/Sc/v/ti) were made from artifacts remade or removed "
                                   "since, or from model weights or other files replaced since")
    shutil.rmtree(folder)
    parked.rename(folder)
    assert status()[-1] == "1 finished", "the weights it was made from, back"


def test_a_drawn_models_weights_cache_is_not_compared(tmp_path):
    model = {"_target_": "stablesdg.models.build_sd15_random", "name": "sd15_random", "seed": 0, "weights_cache": "/a"}
    result = _ti_result(tmp_path, model, None)
    wanted = json.loads(result.read_text())["config"]
    assert why_not_up_to_date(result, {**wanted, "model": {**model, "weights_cache": "/b"}}, 0, str(tmp_path)) is None
    assert why_not_up_to_date(result, {**wanted, "model": {**model, "seed": 1}}, 0, str(tmp_path)) == \
        "made with other settings: model.seed=0 (now 1)"


def test_sweep_points_compare_by_their_model_files_wherever_these_lay(tmp_path):
    def point(path: str, digest: str | None) -> dict:
        return {"config": {"stage": {"name": "generate"}, "model": _model(path)}, "model_files": digest}

    assert scoring_settings(point("/a", "1" * 64)) == scoring_settings(point("/b", "1" * 64))
    assert scoring_settings(point("/a", "1" * 64)) != scoring_settings(point("/a", "2" * 64))
    assert scoring_settings(point("/a", None)) != scoring_settings(point("/b", None)), "recorded none: by the path"


@pytest.mark.slow
def test_an_adaptation_on_a_model_folder_moved_since_is_skipped_and_reads_its_latents_and_one_on_other_weights_there_is_made_again_from_theirs(
        tiny_folder, tmp_path):
    folder = shutil.copytree(tiny_folder, tmp_path / "sd")
    args = ["stage=ti", "category=Sc", "model=sd15", "model.resolution=64", "stage.max_steps=2",
            "stage.validation_every=0", "logger=none", "skip_up_to_date=true"]
    cached_latents = tmp_path / "artifacts/synthetic/Sc/_cache"
    first = run_cli(tmp_path, *args, f"model.path={folder}")
    assert first.returncode == 0, first.stderr[-3000:]
    result = tmp_path / "artifacts/synthetic/Sc/default/ti/result.json"
    made = result.read_bytes()
    assert json.loads(made)["model_files"] == model_files.model_digest(_model(folder), tmp_path / "artifacts")
    [latents] = cached_latents.glob("latents-*.safetensors")
    moved = folder.rename(tmp_path / "moved")
    again = run_cli(tmp_path, *args, f"model.path={moved}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert result.read_bytes() == made
    assert "holds a finished run of these settings" in again.stdout and "skipped (skip_up_to_date=true)" in again.stdout
    other_lr = run_cli(tmp_path, *args, f"model.path={moved}", "stage.lr=0.001", "variant=lr")
    assert other_lr.returncode == 0, other_lr.stderr[-3000:]
    assert list(cached_latents.glob("latents-*.safetensors")) == [latents], "the same VAE's latents, read again"
    build_tiny_sd(seed=4).pipeline().save_pretrained(moved)
    other = run_cli(tmp_path, *args, f"model.path={moved}")
    assert other.returncode == 0, other.stderr[-3000:]
    assert f"holds a finished run made from other model weights than model.path={moved} holds" in other.stdout
    assert json.loads(result.read_bytes())["model_files"] not in (json.loads(made)["model_files"], None)
    assert len(list(cached_latents.glob("latents-*.safetensors"))) == 2, "the other VAE's latents, not the cached"


def test_unfinished_work_resumes_on_the_same_weights_found_elsewhere_and_is_discarded_on_other_weights_there(
        tiny_folder, tmp_path):
    from stablesdg.artifacts import STAMP_FILE
    from stablesdg.training import claim_directory, run_identities

    def composed(*overrides: str):
        return compose_config([f"paths.artifacts={tmp_path / 'store'}", "category=Pa", "model.resolution=64",
                               *overrides])

    def ti(path):
        return composed("stage=ti", "model=sd15", f"model.path={path}")

    folder = tmp_path / "checkpoints"
    assert not claim_directory(folder, ti(tiny_folder)), "nothing to keep in a new folder"
    (folder / "last.ckpt").write_bytes(b"saved so far")
    moved = shutil.copytree(tiny_folder, tmp_path / "node-local/sd")  # a cluster job's own copy
    assert claim_directory(folder, ti(moved)) and (folder / "last.ckpt").is_file()
    (folder / "last.ckpt").write_bytes(b"saved so far")
    assert claim_directory(folder, composed("stage=ti", "model=sd15", f"model.path={moved}", "classifier=resnet")), \
        "an adaptation reads no classifier"
    build_tiny_sd(seed=4).pipeline().save_pretrained(moved)
    assert not claim_directory(folder, ti(moved)) and sorted(p.name for p in folder.iterdir()) == [STAMP_FILE]
    (folder / "last.ckpt").write_bytes(b"saved so far")
    (folder / STAMP_FILE).write_text(run_identities(ti(moved))[-1])  # what an earlier version stamped
    assert claim_directory(folder, ti(moved)) and (folder / "last.ckpt").is_file()
    (folder / "last.ckpt").write_bytes(b"a classifier's epochs so far")
    classify = composed("stage=classify", "model=tiny")
    claim_directory(folder, classify)
    (folder / "last.ckpt").write_bytes(b"a classifier's epochs so far")
    assert claim_directory(folder, composed("stage=classify", "model=sd15", f"model.path={moved}")), \
        "a classifier reads no diffusion model"
    assert not claim_directory(folder, composed("stage=classify", "model=tiny", "seed=1"))


def test_the_processes_of_a_job_that_claim_one_folder_at_once_take_turns(tmp_path):
    # srun starts a DDP job's processes together, and each claims the checkpoint folder: one emptied it while
    # another stamped it ("cannot write .../checkpoints/config_hash.txt: No such file or directory")
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from stablesdg.artifacts import STAMP_FILE
    from stablesdg.training import claim_directory

    cfg = compose_config(["stage=ti", "category=Pa", f"paths.artifacts={tmp_path / 'store'}"])
    for attempt in range(8):
        folder = tmp_path / f"checkpoints{attempt}"
        together = Barrier(4)

        def claim(_: int) -> bool:
            together.wait()
            return claim_directory(folder, cfg)

        with ThreadPoolExecutor(4) as pool:
            kept = sorted(pool.map(claim, range(4)))
        assert kept == [False, True, True, True], "the first stamps the folder, the others keep its stamp"
        assert [path.name for path in folder.iterdir()] == [STAMP_FILE]
        assert sorted(path.name for path in tmp_path.iterdir() if path.name.endswith(".lock")) == []
