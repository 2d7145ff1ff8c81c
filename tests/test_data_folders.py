"""Per-class folder datasets (CCBSD and any other) through their configs."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from conftest import compose_config
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
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "colour" in r.getMessage()]


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
    assert "\nimages delivered as 1 × 32 × 32 (grayscale); the files are in colour, dataset.channels=3 keeps it\n" \
        in format_report(dataset_report(grey), None)  # stage=inspect's summary

    caplog.clear()
    rgb = instantiate(compose_config([*base, "dataset.channels=3"]).dataset)
    rgb.setup()
    image = rgb.dataset("train", category="dent")[0][0]
    assert image.shape == (3, 32, 32) and _colour_warnings(caplog) == []
    assert (image[0] - image[2]).mean() * 255 > 50  # the red tint (+40 vs -20 levels) is still there
    assert "\nimages delivered as 3 × 32 × 32 (RGB)\n" in format_report(dataset_report(rgb), None)


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
           "dataset.split" in caplog.messages
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
