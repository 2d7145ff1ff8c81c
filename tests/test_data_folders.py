"""Per-class folder datasets (CCBSD and any other) through their configs."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from conftest import compose_config
from stablesdg.data import DefectDataModule
from stablesdg.errors import UserError
from stablesdg.stages.inspect import dataset_report, format_report


def test_ccbsd_folders_split_140_30_30_per_class(tmp_path):
    rng = np.random.default_rng(0)
    for full in ("inclusion", "indentation", "oxidation", "slag_groove"):
        (tmp_path / "CCBSD" / full).mkdir(parents=True)
        for n in range(200):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "CCBSD" / full / f"{n}.png")
    dm = instantiate(compose_config(["dataset=ccbsd", f"dataset.root={tmp_path}/CCBSD", f"paths.artifacts={tmp_path}/a"]).dataset)
    dm.setup()
    assert dm.categories.abbreviations == ["Inc", "Ind", "Ox", "SG"] and dm.source.layout == "class-folders"
    for split, per_class in (("train", 140), ("val", 30), ("test", 30)):
        assert dm.class_counts(split) == {a: per_class for a in ("Inc", "Ind", "Ox", "SG")}
    assert dm.dataset("val", category="oxidation")[0][0].shape == (1, 200, 200)


def test_generic_folder_dataset_discovers_its_classes(tmp_path):
    for name in ("dent", "rust", "scratch"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for n in range(10):
            Image.new("L", (12, 12), 10 * n).save(tmp_path / "data" / name / f"{n}.png")
    dm = instantiate(compose_config(["dataset=folder", f"dataset.root={tmp_path}/data", "dataset.name=mine",
                                     f"paths.artifacts={tmp_path}/a"]).dataset)
    dm.setup()
    assert dm.categories.abbreviations == ["dent", "rust", "scratch"]
    assert sum(dm.class_counts("test").values()) == 3


@pytest.mark.parametrize("name, held", [("all", "<dataset>/all holds the stages that read every class"),
                                        ("splits", "<dataset>/splits holds the dataset's splits"),
                                        ("sweeps", "<dataset>/sweeps holds what each sweep chose")])
def test_a_class_folder_named_as_a_folder_of_the_store_is_refused_and_dataset_classes_gives_it_another(
        tmp_path, name, held):
    for folder in (name, "rust"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for n in range(10):
            Image.new("L", (12, 12), 10 * n).save(tmp_path / "data" / folder / f"{n}.png")
    overrides = ["dataset=folder", f"dataset.root={tmp_path}/data", "dataset.name=mine", f"paths.artifacts={tmp_path}/a"]
    dm = instantiate(compose_config(overrides).dataset)
    with pytest.raises(UserError) as refused:
        dm.setup()
    assert str(refused.value) == (f"class {name!r} cannot name its folder in the artifact store: {held}; give each "
                                  f"class a short name with dataset.classes, e.g. 'dataset.classes="
                                  f"{{{name[:2].capitalize()}: {name}, ...}}'")
    assert not (tmp_path / "a").exists(), "refused before the split is written"
    renamed = instantiate(compose_config([*overrides, f"dataset.classes={{{name[:2].capitalize()}: {name}, Ru: rust}}"]
                                         ).dataset)
    renamed.setup()
    assert renamed.categories.abbreviations == [name[:2].capitalize(), "Ru"]
    assert sum(renamed.class_counts("train").values()) == 16


def test_a_folder_dataset_of_numbered_files_takes_its_classes_from_the_file_names(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for shade, name in enumerate(("dent", "rolled-in_scale")):
        for n in range(10):
            Image.new("L", (12, 12), 10 * n + shade).save(flat / f"{name}_{n}.bmp")
    dm = instantiate(compose_config(["dataset=folder", f"dataset.root={flat}", f"paths.artifacts={tmp_path}/a"]).dataset)
    dm.setup()
    assert dm.categories.abbreviations == ["dent", "rolled-in_scale"] and dm.source.layout == "flat"
    assert dm.class_counts("train") == {"dent": 8, "rolled-in_scale": 8}
    table = format_report(dataset_report(dm), None).splitlines()
    assert table[5].split() == ["rolled-in_scale", "8", "1", "1", "6", "5", "3"]  # named once, the columns aligned
    assert {len(line) for line in table[3:7]} == {len(table[3])}
    for n in range(4, 10):  # 4 images of dent: 0.1 of 4 rounds to no validation or test image
        (flat / f"dent_{n}.bmp").unlink()
    few = instantiate(compose_config(["dataset=folder", f"dataset.root={flat}", f"paths.artifacts={tmp_path}/b"]).dataset)
    few.setup()
    assert format_report(dataset_report(few), None).splitlines()[7:] == [
        "  dent has no val or test images, so stage=classify cannot test it; class dent has only 4 images, too few for "
        "a share of 0.1 to hold one; e.g. dataset.split.fractions=[0.5,0.25,0.25]"]


def test_neu_det_read_as_a_folder_dataset_has_the_classes_and_split_sizes_of_dataset_neu(neu_path, tmp_path):
    dm = instantiate(compose_config(["dataset=folder", f"dataset.root={neu_path}", f"paths.artifacts={tmp_path}/a"]).dataset)
    dm.setup()
    assert dm.categories.abbreviations == ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale",
                                           "scratches"]
    assert dm.class_counts("train") == dict.fromkeys(dm.categories.abbreviations, 240)


def test_a_folder_root_one_level_above_its_class_folders_is_pointed_to_them_not_read_as_one_class(tmp_path):
    for name in ("dent", "rust"):
        (tmp_path / "unpacked" / "images" / name).mkdir(parents=True)
        for n in range(5):
            Image.new("L", (12, 12), 10 * n + len(name)).save(tmp_path / "unpacked" / "images" / name / f"{n}.png")
    base = ["dataset=folder", f"dataset.root={tmp_path}/unpacked", f"paths.artifacts={tmp_path}/a"]
    with pytest.raises(UserError, match=re.escape(
            f"dataset root '{tmp_path}/unpacked' holds one folder, images/, and its images are in its folders (dent, "
            f"rust), which would be one class; if those are the classes, set dataset.root={tmp_path}/unpacked/images "
            "(for one class, name it: dataset.classes={images:images})")):
        instantiate(compose_config(base).dataset).setup()
    one_class = instantiate(compose_config([*base, "dataset.classes={images:images}"]).dataset)
    one_class.setup()
    assert one_class.categories.abbreviations == ["images"] and len(one_class.records) == 10
    assert format_report(dataset_report(one_class), None).startswith("dataset folder: 10 images, 1 class, ")


def test_a_folder_root_without_class_folders_or_numbered_files_is_refused_in_one_line(tmp_path):
    (tmp_path / "loose").mkdir()
    Image.new("L", (12, 12)).save(tmp_path / "loose" / "photo.png")
    dm = instantiate(compose_config(["dataset=folder", f"dataset.root={tmp_path}/loose", f"paths.artifacts={tmp_path}/a"]).dataset)
    with pytest.raises(UserError, match=r"has no class folders and no <class>_<n> image files"):
        dm.setup()


def _colour_dataset(tmp_path, colour: bool):
    """Three classes of 64 × 48 RGB files: red-tinted noise, or grey noise whose channels differ by JPEG-like ±1."""
    rng = np.random.default_rng(0)
    for name in ("dent", "rust", "scratch"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for n in range(10):
            grey = rng.integers(20, 200, (48, 64), dtype=np.int16)
            tint = (40, 0, -20) if colour else tuple(rng.integers(-1, 2, 3))
            rgb = np.stack([grey + t for t in tint], axis=-1).clip(0, 255).astype(np.uint8)
            Image.fromarray(rgb).save(tmp_path / "data" / name / f"{n}.png")
    return tmp_path / "data"


def _colour_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelname == "WARNING" and "its images are in colour" in r.getMessage()]


def test_a_colour_folder_read_as_grayscale_says_so_and_channels_3_keeps_the_colour(tmp_path, caplog):
    root = _colour_dataset(tmp_path, colour=True)
    base = ["dataset=folder", f"dataset.root={root}", "dataset.name=mine", f"paths.artifacts={tmp_path}/a",
            "dataset.image_size=32"]
    grey = instantiate(compose_config(base).dataset)
    grey.setup()
    [warning] = _colour_warnings(caplog)
    assert warning.startswith(f"dataset mine: its images are in colour ({root}/dent/0.png, for one)")
    assert warning.endswith("read as grayscale (dataset.channels=1); dataset.channels=3 keeps the colour")
    assert grey.dataset("train", category="dent")[0][0].shape == (1, 32, 32)
    assert "\nimages delivered as 1 × 32 × 32 (grayscale); the files are in colour, dataset.channels=3 keeps it; " \
           "30 images are not square (the most elongated 64×48), made square by dataset.fit=crop\n" \
        in format_report(dataset_report(grey), None)  # stage=inspect's summary

    caplog.clear()
    rgb = instantiate(compose_config([*base, "dataset.channels=3"]).dataset)
    rgb.setup()
    image = rgb.dataset("train", category="dent")[0][0]
    assert image.shape == (3, 32, 32) and _colour_warnings(caplog) == []
    assert (image[0] - image[2]).mean() * 255 > 50  # the red tint (+40 vs -20 levels) is still there
    assert "\nimages delivered as 3 × 32 × 32 (RGB); 30 images are not square (the most elongated 64×48), made " \
           "square by dataset.fit=crop\n" in format_report(dataset_report(rgb), None)


def test_grey_images_stored_as_rgb_are_not_called_colour(tmp_path, caplog):
    root = _colour_dataset(tmp_path, colour=False)
    dm = instantiate(compose_config(["dataset=folder", f"dataset.root={root}", "dataset.name=mine",
                                     f"paths.artifacts={tmp_path}/a"]).dataset)
    dm.setup()
    assert dm.source.colour_example is None and _colour_warnings(caplog) == []


def _pre_split(root, splits, classes, per_split, images_level=False):
    """A dataset split beforehand: ``root/<split>/[images/]<class>/<i>.png``, distinct noise in every file."""
    rng = np.random.default_rng(0)
    for split in splits:
        holder = root / split / "images" if images_level else root / split
        if images_level:
            (root / split / "annotations").mkdir(parents=True)  # Kaggle's NEU-DET: XML boxes beside the images
        for name in classes:
            (holder / name).mkdir(parents=True)
            for n in range(per_split[split]):
                Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(holder / name / f"{n}.png")
    return root


def test_a_folder_dataset_split_beforehand_takes_its_classes_from_inside_the_split_folders(tmp_path):
    root = _pre_split(tmp_path / "data", ("train", "val", "test"), ("dent", "rust"), {"train": 8, "val": 1, "test": 1})
    dm = instantiate(compose_config(["dataset=folder", f"dataset.root={root}", "dataset.name=mine",
                                     f"paths.artifacts={tmp_path}/a", "dataset.image_size=16"]).dataset)
    dm.setup()
    assert dm.categories.abbreviations == ["dent", "rust"] and dm.source.layout == "split-folders"
    assert sorted(r.key for r in dm.records if r.label == 1) == sorted(
        f"{split}/rust/{n}.png" for split, count in (("train", 8), ("val", 1), ("test", 1)) for n in range(count))
    assert dm.class_counts("train") == {"dent": 8, "rust": 8} and dm.class_counts("test") == {"dent": 1, "rust": 1}


def test_neu_as_kaggle_lays_it_out_is_read_whole_and_a_root_above_it_is_pointed_to_it(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    full = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
    root = _pre_split(tmp_path / "archive" / "NEU-DET", ("train", "validation"), full, {"train": 8, "validation": 2},
                      images_level=True)
    dm = instantiate(compose_config(["dataset=neu", f"dataset.root={root}", f"paths.artifacts={tmp_path}/a",
                                     "dataset.image_size=16"]).dataset)
    dm.setup()
    assert dm.source.layout == "split-folders" and len(dm.records) == 60
    assert dm.class_counts("train") == {a: 8 for a in ("Cr", "In", "Pa", "PS", "RS", "Sc")}
    assert "dataset neu: the class folders of train/images/, validation/images/ are pooled and split by " \
           "dataset.split (dataset.split.folders=true keeps the split of the folders)" in caplog.messages
    above = instantiate(compose_config(["dataset=neu", f"dataset.root={tmp_path}/archive",
                                        f"paths.artifacts={tmp_path}/b"]).dataset)
    with pytest.raises(UserError, match=f"; the folder {root} in it is laid out as a dataset: set dataset.root={root}$"):
        above.setup()


def test_images_stored_rotated_with_an_exif_orientation_are_read_upright(tmp_path):
    """A camera that stores a photo sideways with EXIF orientation 6 ("rotate 90° clockwise to view") and one that
    stores it upright give the same pixels."""
    upright = np.zeros((32, 32), np.uint8)
    upright[:8, :16] = 255  # a bar at the top left: any rotation or mirroring moves it
    upright[8:, :] = np.linspace(0, 200, 32, dtype=np.uint8)
    sideways = np.ascontiguousarray(np.rot90(upright, k=1))  # stored turned 90° anticlockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    for name in ("dent", "rust"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for n in range(10):
            Image.fromarray(upright).save(tmp_path / "data" / name / f"up{n}.png")
            Image.fromarray(sideways).save(tmp_path / "data" / name / f"tagged{n}.png", exif=exif)
    dm = instantiate(compose_config(["dataset=folder", f"dataset.root={tmp_path}/data", "dataset.image_size=32",
                                     f"paths.artifacts={tmp_path}/a"]).dataset)
    dm.setup()
    train = dm.dataset("train")
    tagged = [i for i, r in enumerate(train.records) if "tagged" in r.key]
    assert tagged, "the split's training images include tagged files"
    for i in tagged:
        assert np.array_equal(np.asarray(train.load_image(i)), upright), train.records[i].key
    assert dm.read_as["upright"] == "exif", "caches of the pixels made before files were turned upright are not reused"


def _folder_split_module(root, tmp_path, *overrides):
    return instantiate(compose_config(["dataset=folder", f"dataset.root={root}", "dataset.name=mine",
                                       f"paths.artifacts={tmp_path}/a", "dataset.image_size=16", *overrides]).dataset)


def test_split_folders_true_keeps_the_split_the_dataset_came_with(tmp_path):
    root = _pre_split(tmp_path / "data", ("train", "val", "test"), ("dent", "rust"), {"train": 8, "val": 1, "test": 2})
    kept = _folder_split_module(root, tmp_path, "dataset.split.folders=true")
    kept.setup()
    for split in ("train", "val", "test"):
        assert kept.split.keys(split) == sorted(r.key for r in kept.records if r.key.startswith(f"{split}/")), split
    assert set(kept.split.alpha_subset(0.4)) <= set(kept.split.train)
    assert kept.split_path.name == "split-folders-seed0-0.8-0.1-0.1.json"
    pooled = _folder_split_module(root, tmp_path)
    pooled.setup()
    assert pooled.split_path.name == "split-seed0-0.8-0.1-0.1.json", "the two splits are two files"
    assert pooled.class_counts("test") == {"dent": 1, "rust": 1} and kept.class_counts("test") == {"dent": 2, "rust": 2}


def test_a_split_the_folders_lack_is_taken_from_the_training_folder_by_the_fractions(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    root = _pre_split(tmp_path / "data", ("train", "validation"), ("dent", "rust"), {"train": 10, "validation": 3},
                      images_level=True)
    dm = _folder_split_module(root, tmp_path, "dataset.split.folders=true", "dataset.split.fractions=[0.6,0.2,0.2]")
    dm.setup()
    assert dm.class_counts("val") == {"dent": 3, "rust": 3} and dm.class_counts("test") == {"dent": 2, "rust": 2}
    assert all(key.startswith("validation/images/") for key in dm.split.val)
    assert all(key.startswith("train/images/") for key in dm.split.test + dm.split.train)
    assert dm.class_counts("train") == {"dent": 8, "rust": 8}
    assert ("dataset mine: the images keep the split of their folders train/images/, validation/images/ "
            "(dataset.split.folders=true); its test images are taken from train by dataset.split.fractions="
            "[0.6, 0.2, 0.2]") in caplog.messages


def test_split_folders_true_is_refused_where_there_are_no_split_folders_or_no_training_folder(tmp_path):
    classes = _pre_split(tmp_path / "classes", ("dent", "rust"), ("a", "b"), {"dent": 0, "rust": 0})
    for name in ("dent", "rust"):
        Image.fromarray(np.full((16, 16), 7, np.uint8)).save(classes / name / "x.png")
    with pytest.raises(UserError, match=r"^dataset.split.folders=true keeps the split of a dataset laid out in split "
                                        r"folders \(train/, val/, test/, each holding the class folders\), but dataset "
                                        r"mine is laid out as class-folders: drop it to split the images by "
                                        r"dataset.split.fractions$"):
        _folder_split_module(classes, tmp_path, "dataset.split.folders=true").setup()
    held_out = _pre_split(tmp_path / "held_out", ("val", "test"), ("dent", "rust"), {"val": 3, "test": 3})
    with pytest.raises(UserError, match=r"^dataset.split.folders=true needs a folder of training images \(train/ or "
                                        r"training/\); the dataset's split folders hold only val, test images$"):
        _folder_split_module(held_out, tmp_path / "2", "dataset.split.folders=true").setup()
    with pytest.raises(UserError, match="dataset.split.folders must be true"):
        DefectDataModule(name="t", classes=None, root=str(held_out), split_dir=str(tmp_path), split={"folders": "yes"})


def test_a_test_image_that_is_also_a_training_image_is_named_when_the_folders_keep_their_split(tmp_path, caplog):
    root = _pre_split(tmp_path / "data", ("train", "test"), ("dent", "rust"), {"train": 6, "test": 2})
    shutil.copy(root / "train/rust/3.png", root / "test/rust/copy.png")
    dm = _folder_split_module(root, tmp_path, "dataset.split.folders=true")
    dm.setup()
    assert "dataset mine: 1 validation or test image(s) are byte-identical to training images (test/rust/copy.png is " \
           "train/rust/3.png, for one), so classifiers are tested on images they trained on" in caplog.messages
    assert "\n  byte-identical, in train and test (their folders split them): test/rust/copy.png, train/rust/3.png" \
           in format_report(dataset_report(dm), None)


def test_inspect_lists_five_groups_of_byte_identical_images_and_counts_the_rest(tmp_path):
    from stablesdg.stages.inspect import DUPLICATE_LINES

    root = tmp_path / "data"
    for name in ("dent", "rust"):
        (root / name).mkdir(parents=True)
        for n in range(20):
            Image.new("L", (8, 8), n + (0 if name == "dent" else 100)).save(root / name / f"{n:02d}.png")
    for n in range(8):  # 8 groups of copies, the first of 7 files
        for copy in range(6 if n == 0 else 1):
            shutil.copy(root / "dent" / f"{n:02d}.png", root / "dent" / f"{n:02d}_copy{copy}.png")
    dm = instantiate(compose_config(["dataset=folder", f"dataset.root={root}", "dataset.name=mine",
                                     f"paths.artifacts={tmp_path}/a"]).dataset)
    dm.setup()
    report = dataset_report(dm)
    assert len(report["duplicate_groups"]) == 8 and len(report["duplicate_groups"][0]["keys"]) == 7
    lines = [line for line in format_report(report, None).splitlines() if "byte-identical" in line]
    assert DUPLICATE_LINES == 5 and len(lines) == 6
    assert lines[0].endswith(": dent/00.png, dent/00_copy0.png, dent/00_copy1.png, dent/00_copy2.png, "
                             "dent/00_copy3.png and 2 more")
    assert lines[-1] == ("  and 3 more groups of byte-identical images (result.json lists them all: "
                         "metrics.dataset.duplicate_groups)")


def test_a_scan_decodes_only_the_files_added_or_changed_since_the_last_and_finds_what_a_full_scan_finds(
        tmp_path, monkeypatch):
    import stablesdg.data.scan_cache as scan_cache
    from stablesdg.data.sources import FolderSource

    data = tmp_path / "data"
    for name in ("dent", "rust"):
        (data / name).mkdir(parents=True)
        for n in range(5):
            Image.new("L", (12, 12 + 4 * n), 10 * n).save(data / name / f"{n}.png")  # 4.png: the least square
    Image.new("RGB", (12, 12), (200, 0, 0)).save(data / "rust" / "red.png")
    decoded = []
    decode = scan_cache.decode_image
    monkeypatch.setattr(scan_cache, "decode_image",
                        lambda data_, name: decoded.append(name.relative_to(data).as_posix()) or decode(data_, name))

    def scan(cache=tmp_path / "scan.json", **kwargs):
        decoded.clear()
        source = FolderSource(data, None, scan_cache=cache, **kwargs)
        return source, source.scan()

    def found(source):
        return source.colour_example, source.least_square, source.not_square, source.high_bit_maximum

    full, records = scan(cache=None)
    assert len(decoded) == 11 and found(full) == (data / "rust/red.png", (data / "dent/4.png", (12, 28)), 8, None)
    cached, again = scan()
    assert len(decoded) == 11, "the first scan with a cache reads every file"
    cached, again = scan()
    assert decoded == [] and again == records and found(cached) == found(full)

    Image.new("L", (12, 12), 255).save(data / "dent" / "0.png")  # new pixels: a new digest
    (data / "rust" / "4.png").unlink()
    Image.new("L", (12, 12), 7).save(data / "rust" / "new.png")
    cached, changed = scan()
    assert sorted(decoded) == ["dent/0.png", "rust/new.png"]
    full, records_now = scan(cache=None)
    assert changed == records_now and changed[0].digest != records[0].digest and len(changed) == 11
    assert found(cached) == found(full) and found(full)[2] == 7, "dent/0.png square now, rust/4.png gone"

    (data / "dent" / "1.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"dent/1.png: cannot decode image"):
        scan()
    skipped, _ = scan(on_bad_file="skip")
    assert decoded == ["dent/1.png"] and len(skipped.skipped) == 1, "a bad file is not kept: read, and said, each time"

    (tmp_path / "scan.json").write_text("{damaged")
    _, read_anew = scan(on_bad_file="skip")
    assert len(decoded) == 11, "a damaged cache is read as empty"
    assert read_anew == scan(cache=None, on_bad_file="skip")[1]
    scan(on_bad_file="skip")
    assert decoded == ["dent/1.png"]


def test_the_datamodule_keeps_its_scan_in_the_store_one_file_per_dataset_folder(tmp_path):
    for root in ("one", "two"):
        for name in ("dent", "rust"):
            (tmp_path / root / name).mkdir(parents=True)
            for n in range(10):
                Image.new("L", (12, 12), 10 * n).save(tmp_path / root / name / f"{n}.png")
        instantiate(compose_config(["dataset=folder", f"dataset.root={tmp_path}/{root}", "dataset.name=mine",
                                    f"paths.artifacts={tmp_path}/a"]).dataset).setup()
    kept = sorted((tmp_path / "a/mine/all/_cache").iterdir())
    assert [re.fullmatch(r"scan-[0-9a-f]{16}\.json", p.name) is not None for p in kept] == [True, True]
    assert sorted(p.name for p in (tmp_path / "a/mine").iterdir()) == ["all", "splits"]


def test_concurrent_scans_of_one_dataset_read_its_files_once_between_them(tmp_path, monkeypatch):
    import threading

    import stablesdg.data.scan_cache as scan_cache
    from stablesdg.data.sources import FolderSource

    for name in ("dent", "rust"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for n in range(30):
            Image.new("L", (16, 16), n).save(tmp_path / "data" / name / f"{n}.png")
    decoded = []
    decode = scan_cache.decode_image
    monkeypatch.setattr(scan_cache, "decode_image", lambda data, name: decoded.append(name) or decode(data, name))
    scans = [FolderSource(tmp_path / "data", None, scan_cache=tmp_path / "store/scan.json") for _ in range(3)]
    found = {}
    threads = [threading.Thread(target=lambda i=i: found.__setitem__(i, scans[i].scan())) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(decoded) == 60 and found[0] == found[1] == found[2] and len(found[0]) == 60
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["scan.json"], "no lock file left"


def test_a_byte_identical_image_filed_under_two_classes_is_named_in_a_warning_and_in_inspect(tmp_path, caplog):
    root = tmp_path / "data"
    for name, shade in (("dent", 0), ("rust", 100)):
        (root / name).mkdir(parents=True)
        for n in range(10):
            Image.new("L", (8, 8), shade + n).save(root / name / f"{n}.png")
    for copy in ("dent3.png", "dent3b.png"):  # a scraped set's copies in the wrong class
        shutil.copy(root / "dent" / "3.png", root / "rust" / copy)
    shutil.copy(root / "rust" / "5.png", root / "rust" / "5_copy.png")  # a copy within its class is only a copy
    dm = instantiate(compose_config(["dataset=folder", f"dataset.root={root}", "dataset.name=mine",
                                     f"paths.artifacts={tmp_path}/a"]).dataset)
    with caplog.at_level("WARNING"):
        dm.setup()
    assert [m for m in caplog.messages if "filed under" in m] == [
        "dataset mine: 1 group(s) of byte-identical images are filed under more than one class (dent/3.png and "
        "rust/dent3.png and 1 more, for one, under dent and rust), so a classifier learns one image under several labels; the "
        "split keeps each group together, counted with the class of its first file; remove the copies that are in the "
        "wrong class"]
    report = dataset_report(dm)
    assert [group["classes"] for group in report["duplicate_groups"]] == [["dent", "rust"], ["rust"]]
    lines = [line for line in format_report(report, None).splitlines() if "byte-identical" in line]
    assert len(lines) == 2
    assert lines[0].startswith("  byte-identical, filed under dent and rust, kept together in ")
    assert lines[0].endswith(": dent/3.png, rust/dent3.png, rust/dent3b.png")
    assert lines[1].startswith("  byte-identical, kept together in ")
