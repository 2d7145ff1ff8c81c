"""A weight file that a setting names (classifier.weights, stage.inception_weights) told apart by its content: the
same file anywhere makes the same results; another file at the same path does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from stablesdg import artifacts, weight_file_settings
from stablesdg.evaluation.features import INCEPTION_FILE
from stablesdg.status import stale_because
from stablesdg.sweeps import scoring_settings
from stablesdg.up_to_date import why_not_up_to_date


def _result(store: Path, config: dict, name: str) -> Path:
    return artifacts.write_result(store / f"d/all/v/{name}", stage=config["stage"]["name"], dataset="d",
                                  category=None, variant="v", metrics={}, config=config, wall_time_s=0.0,
                                  weight_files=weight_file_settings.weight_file_digests(config, store))


def test_a_classifier_made_from_a_weights_file_is_up_to_date_wherever_it_lies_and_stale_from_another_there(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    weights = tmp_path / "home/resnet18.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"imagenet weights")
    made = {"stage": {"name": "classify", "alpha": 0.4}, "classifier": {"name": "resnet", "weights": str(weights)}}
    result = _result(store, made, "classify")
    assert set(json.loads(result.read_text())["weight_files"]) == {"classifier.weights"}
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
        "from another file than classifier.weights names now"
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
    assert weight_file_settings.named_weight_files(unscored) == {}, "a set not scored reads no InceptionV3"
    assert weight_file_settings.named_weight_files({**fid, "stage": {**fid["stage"], "features": "pixels"}}) == {}
    composed = OmegaConf.to_container(compose_config(["stage=fid", "stage.features=inception"]), resolve=True)
    assert weight_file_settings.named_weight_files(composed) == {
        "stage.inception_weights": hub / "checkpoints" / INCEPTION_FILE}


@pytest.mark.parametrize("recorded, equal", [(("1" * 64, "1" * 64), True), (("1" * 64, "2" * 64), False),
                                             ((None, None), False)])
def test_sweep_points_compare_by_the_inception_file_they_scored_with_wherever_it_lay(recorded, equal):
    def point(path: str, digest: str | None) -> dict:
        return {"config": {"stage": {"name": "generate", "features": "inception", "inception_weights": path}},
                "weight_files": {"stage.inception_weights": digest} if digest else {}}

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
    assert json.loads(result.read_text())["weight_files"] == {"classifier.weights": file_sha256(weights)}
    moved = weights.rename(tmp_path / "elsewhere.safetensors")
    assert why_not_up_to_date(result, recorded_config(composed(moved)), newest_input=0, store=f"{tmp_path}/artifacts") is None
