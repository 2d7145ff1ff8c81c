"""The files a setting names told apart by their content: a weight file (classifier.weights, stage.inception_weights)
and the images of a folder outside the store (stage.source, stage.generated, stage.prior_images). The same files
anywhere make the same results and resume the same unfinished work; others at the same path do not. (A tuned file,
told apart by the values it gives a category: tests/test_generate.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from stablesdg import artifacts, setting_files
from stablesdg.evaluation.features import INCEPTION_FILE
from stablesdg.status import stale_because
from stablesdg.sweeps import scoring_settings
from stablesdg.up_to_date import why_not_up_to_date


def _result(store: Path, config: dict, name: str) -> Path:
    return artifacts.write_result(store / f"d/all/v/{name}", stage=config["stage"]["name"], dataset="d",
                                  category=None, variant="v", metrics={}, config=config, wall_time_s=0.0,
                                  setting_files=setting_files.setting_file_digests(config, store))


def test_a_classifier_made_from_a_weights_file_is_up_to_date_wherever_it_lies_and_stale_from_another_there(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    weights = tmp_path / "home/resnet18.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"imagenet weights")
    made = {"stage": {"name": "classify", "alpha": 0.4}, "classifier": {"name": "resnet", "weights": str(weights)}}
    result = _result(store, made, "classify")
    assert set(json.loads(result.read_text())["setting_files"]) == {"classifier.weights"}
    moved = Path(shutil.move(weights, tmp_path / "scratch.pth"))
    now = {**made, "classifier": {**made["classifier"], "weights": str(moved)}}
    assert why_not_up_to_date(result, now, newest_input=0, store=str(store)) is None
    assert why_not_up_to_date(result, {**now, "stage": {"name": "classify", "alpha": 0.6}}, 0, str(store)) == \
        "made with other settings: stage.alpha=0.4 (now 0.6)", "the other settings are still compared"
    moved.write_bytes(b"other weights")
    assert why_not_up_to_date(result, now, newest_input=0, store=str(store)) == \
        f"made from another file than classifier.weights names now ({moved})"
    assert stale_because(store, artifacts.read_result(result.parent)) is None, "its own file is not there now"
    weights.write_bytes(b"other weights")
    assert stale_because(store, artifacts.read_result(result.parent)) == \
        f"from another file than classifier.weights names now ({weights})"
    weights.unlink()
    moved.unlink()
    assert why_not_up_to_date(result, now, newest_input=0, store=str(store)) == \
        f"made with other settings: classifier.weights={weights} (now {moved})", "not there: where it lies is all"
    untrained = {**made, "classifier": {"name": "resnet", "weights": None}}
    assert why_not_up_to_date(_result(store, untrained, "random"), now, 0, str(store)) == \
        f"made with other settings: classifier.weights=null (now {moved})"


def test_the_fid_inception_file_is_the_same_named_or_found_in_torchs_hub_cache_and_read_only_where_scored(
        tmp_path, monkeypatch):
    hub = tmp_path / "torch-hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / INCEPTION_FILE).write_bytes(b"fid inception")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    store = tmp_path / "store"
    store.mkdir()
    scoring = {"features": "inception", "inception_weights": None, "feature_seed": 0, "real_split": "train"}
    fid = {"stage": {"name": "fid", **scoring}, "seed": 0}
    result = _result(store, fid, "fid")
    named = shutil.copy(hub / "checkpoints" / INCEPTION_FILE, tmp_path / "inception.pth")
    explicit = {**fid, "stage": {**fid["stage"], "inception_weights": str(named)}}
    assert why_not_up_to_date(result, explicit, newest_input=0, store=str(store)) is None
    Path(named).write_bytes(b"another network")
    assert why_not_up_to_date(result, explicit, newest_input=0, store=str(store)) == \
        f"made from another file than stage.inception_weights names now ({named})"
    unscored = {"stage": {"name": "generate", "score": False, **scoring}}
    assert setting_files.named_files(unscored, store) == {}, "a set not scored reads no InceptionV3"
    assert setting_files.named_files({**fid, "stage": {**fid["stage"], "features": "pixels"}}, store) == {}
    composed = OmegaConf.to_container(compose_config(["stage=fid", "stage.features=inception"]), resolve=True)
    assert setting_files.named_files(composed, store) == {
        "stage.inception_weights": [hub / "checkpoints" / INCEPTION_FILE]}


@pytest.mark.parametrize("recorded, equal", [(("1" * 64, "1" * 64), True), (("1" * 64, "2" * 64), False),
                                             ((None, None), False)])
def test_sweep_points_compare_by_the_inception_file_they_scored_with_wherever_it_lay(recorded, equal):
    def point(path: str, digest: str | None) -> dict:
        return {"config": {"stage": {"name": "generate", "features": "inception", "inception_weights": path}},
                setting_files.RECORD_KEY: {"stage.inception_weights": digest} if digest else {}}

    first, second = (point(path, digest) for path, digest in zip(("/a.pth", "/b.pth"), recorded))
    assert (scoring_settings(first) == scoring_settings(second)) is equal


def test_a_classifier_trained_from_a_weights_file_records_its_digest_and_a_move_leaves_it_up_to_date(tmp_path):
    from safetensors.torch import save_file

    from stablesdg.classify.networks import build_classifier
    from stablesdg.provenance import file_sha256, recorded_config
    from stablesdg.train import run

    imagenet_like = build_classifier("squeezenet", 1000)
    weights = tmp_path / "squeezenet.safetensors"
    save_file({k: v.contiguous() for k, v in imagenet_like.state_dict().items()}, str(weights))

    def composed(path: Path):
        return compose_config([f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs", "logger=none",
                               "stage=classify", "classifier=squeezenet", f"classifier.weights={path}",
                               "dataset.synthetic.per_class=12", "stage.max_epochs=1", "stage.batch_size=8"])

    result = run(composed(weights))
    assert json.loads(result.read_text())["setting_files"] == {"classifier.weights": file_sha256(weights)}
    moved = weights.rename(tmp_path / "elsewhere.safetensors")
    assert why_not_up_to_date(result, recorded_config(composed(moved)), newest_input=0, store=f"{tmp_path}/artifacts") is None


def _image(path: Path, value: int) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)
    return path


def test_an_imported_set_is_up_to_date_wherever_its_folder_lies_and_stale_once_an_image_it_imported_changes(
        tmp_path, make_cfg):
    from stablesdg.provenance import recorded_config
    from stablesdg.train import run

    source = tmp_path / "samples"
    for name, value in (("patches/a.png", 10), ("patches/b.png", 20), ("patches/c.png", 30), ("scratches/x.png", 40)):
        _image(source / name, value)

    def imported(folder: Path) -> dict:
        return recorded_config(make_cfg("stage=external", "category=Pa", f"stage.source={folder}", "logger=none",
                                        "stage.num_images=2"))

    store = tmp_path / "artifacts"
    result = run(make_cfg("stage=external", "category=Pa", f"stage.source={source}", "logger=none",
                          "stage.num_images=2"))
    assert set(json.loads(result.read_text())[setting_files.RECORD_KEY]) == {"stage.source"}
    moved = source.rename(tmp_path / "elsewhere")
    assert why_not_up_to_date(result, imported(moved), newest_input=0, store=str(store)) is None
    _image(moved / "patches/c.png", 31)  # the third by name: not imported
    _image(moved / "scratches/x.png", 41)  # another class's
    assert why_not_up_to_date(result, imported(moved), newest_input=0, store=str(store)) is None
    _image(moved / "patches/b.png", 21)
    assert why_not_up_to_date(result, imported(moved), newest_input=0, store=str(store)) == \
        f"made from other images than stage.source={moved} holds now"
    assert stale_because(store, artifacts.read_result(result.parent)) is None, "its own folder is not there now"
    moved.rename(source)
    assert stale_because(store, artifacts.read_result(result.parent)) == \
        f"from other images than stage.source={source} holds now"


def test_the_images_read_in_a_folder_a_setting_names_are_those_its_stage_reads(tmp_path):
    folder = tmp_path / "set"
    files = {name: _image(folder / name, 10) for name in ("scratches/s.png", "patches/b.png", "patches/a.png",
                                                          "crazing/c.png", "notes/n.png")}

    def named(*overrides: str) -> dict:
        config = compose_config([f"paths.artifacts={tmp_path}/artifacts", *overrides])
        return setting_files.named_files(OmegaConf.to_container(config, resolve=True), tmp_path / "artifacts")

    assert named("stage=fid", "category=Pa", f"stage.generated={folder}") == {
        "stage.generated": [files["patches/a.png"], files["patches/b.png"]]}
    assert named("stage=classify", "stage.mode=expand", f"stage.generated={folder}") == {
        "stage.generated": [files[name] for name in ("crazing/c.png", "patches/a.png", "patches/b.png",
                                                     "scratches/s.png")]}, "class order; no folder of no class"
    assert named("stage=classify", "stage.mode=none", f"stage.generated={folder}") == {}, "real images only"
    assert named("stage=classify", "stage.mode=expand", "stage.generated=default") == {}, "a set in the store"
    assert named("stage=full", "category=Pa", f"stage.prior_images={folder / 'patches'}") == {
        "stage.prior_images": [files["patches/a.png"], files["patches/b.png"]]}
    assert named("stage=full", "category=Pa", "stage.prior_images=auto") == {}, "made in the store"
    assert named("stage=fid", "category=Pa", f"stage.generated={tmp_path / 'none'}") == {}, "the stage says why"


def test_a_folder_of_class_images_moved_or_copied_reads_the_same_and_one_image_changed_does_not(tmp_path):
    first, second = tmp_path / "prior", tmp_path / "copy"
    for name, value in (("a.png", 1), ("sub/b.png", 2)):
        _image(first / name, value)
    shutil.copytree(first, second)

    def digests(folder: Path) -> dict:
        config = compose_config([f"paths.artifacts={tmp_path}/artifacts", "stage=full", "category=Pa",
                                 f"stage.prior_images={folder}"])
        return setting_files.setting_file_digests(OmegaConf.to_container(config, resolve=True), tmp_path)

    assert digests(first) == digests(second) and set(digests(first)) == {"stage.prior_images"}
    _image(second / "sub/b.png", 3)
    assert digests(first) != digests(second)
    (second / "sub/b.png").rename(second / "sub/c.png")
    _image(second / "sub/c.png", 2)
    assert digests(first) != digests(second), "the same images under other names"


def test_a_result_of_the_version_before_compares_its_weight_files_by_content(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"imagenet weights")
    made = {"stage": {"name": "classify"}, "classifier": {"name": "resnet", "weights": str(weights)}}
    result = _result(store, made, "classify")
    record = json.loads(result.read_text())
    record["weight_files"] = record.pop(setting_files.RECORD_KEY)  # as the version before wrote it
    result.write_text(json.dumps(record))
    moved = Path(shutil.move(weights, tmp_path / "moved.pth"))
    now = {**made, "classifier": {"name": "resnet", "weights": str(moved)}}
    assert why_not_up_to_date(result, now, newest_input=0, store=str(store)) is None


def test_unfinished_work_from_a_weights_file_resumes_wherever_it_lies_and_not_from_another_file_there(tmp_path):
    from stablesdg.training import claim_directory

    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"imagenet weights")

    def classify(path: Path):
        return compose_config([f"paths.artifacts={tmp_path / 'store'}", "stage=classify", "classifier=resnet",
                               f"classifier.weights={path}"])

    folder = tmp_path / "checkpoints"
    assert not claim_directory(folder, classify(weights)), "nothing to keep in a new folder"
    (folder / "last.ckpt").write_bytes(b"epochs so far")
    moved = weights.rename(tmp_path / "node-local.pth")
    assert claim_directory(folder, classify(moved)) and (folder / "last.ckpt").is_file()
    moved.write_bytes(b"other weights")
    assert not claim_directory(folder, classify(moved)) and not (folder / "last.ckpt").exists()
