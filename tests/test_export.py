"""stage=export: a generated set (and the real training images) copied into one folder with a sub-folder per class."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from conftest import compose_config
from stablesdg import artifacts, atomic_files
from stablesdg.errors import UserError
from stablesdg.generated import generated_images, write_generated_set
from stablesdg.train import run

CLASSES = {"Cr": "crazing", "Pa": "patches", "PS": "pitted_surface", "Sc": "scratches"}  # dataset=synthetic's


def _generated_set(store, count=3, split=None) -> None:
    """A finished set of variant ``made`` for every class, written by the generators' own writer: image ``i`` of
    class number ``c`` is filled with ``10 * c + i``; its results say it was made on the split named ``split``."""
    for c, category in enumerate(CLASSES):
        out = artifacts.stage_dir(store, "synthetic", category, "made", "generate")
        rows = [{"seed": 100 + i, "source_image": f"synthetic/{category}_{i}.png"} for i in range(count)]
        write_generated_set(out, rows, lambda idx, c=c: [Image.new("L", (64, 64), 10 * c + i) for i in idx], 2, "set")
        (out / artifacts.RESULT_FILE).write_text(json.dumps({"stage": "generate", "split": split}))


def _export(tmp_path, *overrides: str):
    return run(compose_config([f"paths.artifacts={tmp_path}/store", f"paths.logs={tmp_path}/logs", "logger=none",
                               "stage=export", "dataset.synthetic.per_class=10", "stage.generated=made",
                               f"stage.out={tmp_path}/export", *overrides]))


def _synthetic(store):
    dm = instantiate(compose_config([f"paths.artifacts={store}", "dataset.synthetic.per_class=10"]).dataset)
    dm.setup()
    return dm


def test_export_writes_a_folder_per_class_that_the_tool_and_any_classifier_read_back(tmp_path, caplog):
    _generated_set(tmp_path / "store")
    result = json.loads(_export(tmp_path, "stage.real=true", "stage.alpha=0.5").read_text())
    out, dm = tmp_path / "export", _synthetic(tmp_path / "store")
    real = {c: dm.dataset("train", category=c, alpha=0.5) for c in CLASSES}
    for c, (category, folder) in enumerate(CLASSES.items()):
        names = sorted(p.name for p in (out / folder).iterdir())
        real_names = sorted(f"{category}_{r.key.split('_')[-1]}" for r in real[category].records)
        assert names == sorted([f"generated_{i:05d}.png" for i in range(3)] + real_names)
        for i in range(3):
            assert np.unique(np.asarray(Image.open(out / folder / f"generated_{i:05d}.png"))).tolist() == [10 * c + i]
        for index, record in enumerate(real[category].records):
            exported = Image.open(out / folder / record.key.split("/")[-1])
            assert np.array_equal(np.asarray(exported), np.asarray(real[category].load_image(index)))
    assert result["metrics"]["counts"] == {c: {"generated": 3, "real": len(real[c])} for c in CLASSES}

    with open(out / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(3 + len(r) for r in real.values())
    first = rows[0]
    assert (first["file"], first["class"], first["origin"], first["seed"], first["source_image"]) == (
        "crazing/generated_00000.png", "Cr", "generated", "100", "synthetic/Cr_0.png")
    assert all(row["seed"] == "" and row["source"].startswith("synthetic/") for row in rows if row["origin"] == "real")

    folder = instantiate(compose_config([f"paths.artifacts={tmp_path}/store", "dataset=folder",
                                         f"dataset.root={out}"]).dataset)
    with caplog.at_level("WARNING", logger="stablesdg.data.datamodule"):
        folder.setup()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"dataset folder: {out} was written by stage=export, so its generated images are split like real ones, into "
        "validation and test too; to train a classifier on real + generated images, keep the real dataset and give the "
        f"folder as stage.generated={out}"]
    assert folder.categories.full_names == sorted(CLASSES.values())
    assert sum(len(folder.select(split)) for split in ("train", "val", "test")) == len(rows)
    read_back = generated_images(str(out), "unused", "synthetic", dm.categories)
    assert read_back == {c: [out / folder / f"generated_{i:05d}.png" for i in range(3)]
                         for c, folder in enumerate(CLASSES.values())}, "as generated images, its generated ones only"


def test_an_export_again_replaces_the_earlier_one_whole(tmp_path):
    _generated_set(tmp_path / "store")
    _export(tmp_path, "stage.real=true")
    _export(tmp_path, "category=Pa")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [".stablesdg-export.json", "manifest.csv",
                                                                      "patches"]
    assert sorted(p.name for p in (tmp_path / "export" / "patches").iterdir()) == [f"generated_{i:05d}.png"
                                                                                  for i in range(3)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staged or replaced folder is left"


def test_an_export_that_fails_midway_leaves_the_earlier_export_and_nothing_else(tmp_path, monkeypatch):
    from stablesdg.stages import export

    _generated_set(tmp_path / "store")
    _export(tmp_path)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "export").rglob("*") if p.is_file()}
    loads = []

    def failing_load(what, dm):
        loads.append(what)
        if len(loads) == 5:
            raise OSError(28, "No space left on device")
        return Image.new("L", (64, 64))

    monkeypatch.setattr(export, "_load", failing_load)
    with pytest.raises(UserError, match=f"^cannot write {tmp_path}/export: No space left on device$"):
        _export(tmp_path, "stage.real=true")
    assert {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "export").rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staged folder is left"


def test_export_refuses_a_folder_it_did_not_write_and_a_set_missing_a_class(tmp_path):
    _generated_set(tmp_path / "store")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "thesis.tex").write_text("keep me")
    with pytest.raises(UserError, match=f"^stage.out={tmp_path}/export holds files that stage=export did not write; "):
        _export(tmp_path)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["thesis.tex"]
    with pytest.raises(UserError, match=f"^stage.out={tmp_path}/store/x is a file"):
        (tmp_path / "store" / "x").write_text("")
        _export(tmp_path, f"stage.out={tmp_path}/store/x")
    shutil.rmtree(artifacts.stage_dir(tmp_path / "store", "synthetic", "PS", "made", "generate"))
    with pytest.raises(UserError, match=r"^stage.generated=made has no images of PS; make them with: python -m "
                                        r"stablesdg.train stage=generate dataset=synthetic category=PS variant=made"):
        _export(tmp_path, f"stage.out={tmp_path}/elsewhere")
    assert not (tmp_path / "elsewhere").exists()


def test_real_images_of_one_name_in_two_folders_are_exported_under_their_paths_and_a_clash_left_is_refused(tmp_path):
    for path in ("data/crazing/day1/x.png", "data/crazing/day2/x.png", "data/patches/y.png", "data/patches/z.png",
                 "gen/crazing/g.png", "gen/patches/g.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (32, 32), 10 if "day2" in path else 0).save(tmp_path / path)
    overrides = [f"paths.artifacts={tmp_path}/store", "logger=none", "stage=export", "dataset=folder",
                 f"dataset.root={tmp_path}/data", "dataset.split.fractions=[1.0,0.0,0.0]", f"stage.generated={tmp_path}/gen",
                 "stage.real=true", f"stage.out={tmp_path}/export"]
    run(compose_config(overrides))
    with open(tmp_path / "export" / "manifest.csv", newline="") as handle:
        real = {row["file"]: row["source"] for row in csv.DictReader(handle) if row["origin"] == "real"}
    assert real == {"crazing/x.png": "crazing/day1/x.png", "crazing/crazing_day2_x.png": "crazing/day2/x.png",
                    "patches/y.png": "patches/y.png", "patches/z.png": "patches/z.png"}
    assert np.asarray(Image.open(tmp_path / "export/crazing/crazing_day2_x.png")).max() == 10
    with pytest.raises(UserError, match=rf"^stage.out={tmp_path}/data/synthetic is inside dataset.root={tmp_path}/data: "
                                        r"what is written there would be read as part of the dataset"):
        run(compose_config([*overrides, f"stage.out={tmp_path}/data/synthetic"]))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["crazing", "patches"]

    Image.new("L", (32, 32)).save(tmp_path / "data/crazing/crazing_day2_x.png")  # takes the name day2/x.png falls to
    shutil.rmtree(tmp_path / "export")
    shutil.rmtree(tmp_path / "store")  # the split of the other images
    with pytest.raises(UserError, match=r"^crazing/crazing_day2_x.png and the real image crazing/day2/x.png of crazing "
                                        r"would both be exported as crazing/crazing_day2_x.png; rename one$") as refused:
        run(compose_config(overrides))
    assert not (tmp_path / "export").exists(), refused.value


def test_an_image_of_the_set_that_cannot_be_read_is_named_and_nothing_is_written(tmp_path):
    for path in ("gen/crazing/a.png", "gen/patches/b.png", "gen/pitted_surface/c.png", "gen/scratches/d.png"):
        (tmp_path / path).parent.mkdir(parents=True)
        Image.new("L", (32, 32)).save(tmp_path / path)
    (tmp_path / "gen/patches/b.png").write_bytes(b"not a png")
    with pytest.raises(UserError) as refused:
        _export(tmp_path, f"stage.generated={tmp_path}/gen")
    assert str(refused.value) == (f"{tmp_path}/gen/patches/b.png: cannot decode image (not an image format Pillow "
                                  "reads); fix or remove the file")
    assert not (tmp_path / "export").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_set_made_on_another_split_is_refused_by_export_fid_and_classify_and_so_is_an_export_of_it(tmp_path):
    """A set made from one split's training images may hold another split's validation and test images: no run on
    another split reads it, in the store or exported."""
    split0, split1 = "split-seed0-0.8-0.1-0.1", "split-seed1-0.8-0.1-0.1"  # the split files' names (README)
    store, export = tmp_path / "store", tmp_path / "export"
    _generated_set(store, split=split0)
    refusal = "{} was made on the split " + split0 + " and this run splits the images as " + split1 + \
              " (dataset.split), so images it learned from or was made from may be among this run's validation and test images"
    with pytest.raises(UserError, match="^" + re.escape(refusal.format("synthetic/Cr/made/generate"))):
        _export(tmp_path, "dataset.split.seed=1", "stage.real=true")
    assert not export.exists()

    result = atomic_files.read_json(_export(tmp_path, "stage.real=true"))
    assert result["split"] == split0 and (store / "synthetic/splits" / f"{split0}.json").is_file()
    assert json.loads((export / ".stablesdg-export.json").read_text())["split"] == split0

    def run_on(split_seed: int, *overrides: str):
        return run(compose_config([f"paths.artifacts={store}", f"paths.logs={tmp_path}/logs", "logger=none",
                                   "dataset.synthetic.per_class=10", f"dataset.split.seed={split_seed}", *overrides]))

    fid = ["stage=fid", "category=Pa", "stage.features=pixels"]
    classify = ["stage=classify", "stage.mode=expand", "stage.extra_per_class=2", "stage.max_epochs=1"]
    for overrides in (fid, classify):
        for generated, what in (("made", "synthetic/Cr/made/generate"), (str(export), str(export))):
            if overrides is fid:
                what = what.replace("/Cr/", "/Pa/")  # fid reads only its own class's set
            with pytest.raises(UserError, match="^" + re.escape(refusal.format(what))):
                run_on(1, *overrides, f"stage.generated={generated}")
    assert not (store / "synthetic/splits" / f"{split1}.json").exists(), "refused before any image was read"
    scored = atomic_files.read_json(run_on(0, *fid, f"stage.generated={export}"))
    assert scored["split"] == split0 and scored["inputs"] == {}, "an exported folder is no stage of the store"
    assert scored["metrics"]["n_fake"] == 3, "the set's 3 images of Pa, not the real ones exported beside them"
    assert scored["metrics"]["generated"] == "made", "the set exported, as the report attributes it"

    _generated_set(store, split=None)  # as stage=external imports a folder: made from no split's images
    _export(tmp_path)
    assert json.loads((export / ".stablesdg-export.json").read_text())["split"] is None
    assert atomic_files.read_json(run_on(1, *fid, f"stage.generated={export}"))["split"] == split1
    assert atomic_files.read_json(run_on(1, *fid, "stage.generated=made"))["inputs"] == {
        "synthetic/Pa/made/generate": artifacts.output_fingerprint(store / "synthetic/Pa/made/generate")}


def test_an_export_folder_is_not_imported_as_another_tools_images(tmp_path):
    """An import is of no split and takes every image for generated: an export's real training images, and generated
    images made on one split, would reach classifiers on any split."""
    _generated_set(tmp_path / "store", split="split-seed0-0.8-0.1-0.1")
    _export(tmp_path, "stage.real=true")
    with pytest.raises(UserError, match=re.escape(f"stage.source={tmp_path}/export was written by stage=export: read it "
                                                  f"where it is with stage.generated={tmp_path}/export (")):
        run(compose_config([f"paths.artifacts={tmp_path}/store", f"paths.logs={tmp_path}/logs", "logger=none",
                            "stage=external", "category=Pa", "dataset.synthetic.per_class=10",
                            f"stage.source={tmp_path}/export"]))
    assert not (tmp_path / "store/synthetic/Pa/default").exists()


def test_images_deleted_from_a_set_are_named_before_any_work_and_rows_deleted_with_them_leave_them_out(tmp_path):
    from stablesdg.data import CategorySet

    _generated_set(tmp_path / "store", count=5)
    set_dir = artifacts.stage_dir(tmp_path / "store", "synthetic", "Pa", "made", "generate")
    for name in ("00001.png", "00003.png"):
        (set_dir / "images" / name).unlink()

    def read():
        return generated_images("made", str(tmp_path / "store"), "synthetic", CategorySet(CLASSES), [1])[1]

    with pytest.raises(UserError, match=re.escape(f"2 of the 5 images that {set_dir}/manifest.csv lists are gone "
                                                  "(00001.png, 00003.png): run the command that made the set again, "
                                                  "which makes only those, or delete their rows from the manifest "
                                                  "to leave them out of the set")):
        read()
    with pytest.raises(UserError, match="2 of the 5 images"):  # stage=export checks the set before writing anything
        _export(tmp_path)
    assert not (tmp_path / "export").exists()
    kept = [line for line in (set_dir / "manifest.csv").read_text().splitlines() if not re.search("0000[13]", line)]
    (set_dir / "manifest.csv").write_text("\n".join(kept) + "\n")
    assert [f.name for f in read()] == ["00000.png", "00002.png", "00004.png"]
