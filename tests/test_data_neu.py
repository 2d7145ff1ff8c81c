"""The real NEU data: counts, the paper's split, duplicates, α-subsets, persistence, and the NEU-CLS layouts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stablesdg.data import DefectDataModule
from stablesdg.errors import UserError
from stablesdg.stages.inspect import dataset_report, format_report

NEU_CLASSES = {"Cr": "crazing", "In": "inclusion", "Pa": "patches", "PS": "pitted_surface",
               "RS": "rolled-in_scale", "Sc": "scratches"}


def neu_module(root, split_dir, **kwargs) -> DefectDataModule:
    return DefectDataModule(name="neu", classes=NEU_CLASSES, root=str(root), split_dir=str(split_dir), **kwargs)


@pytest.fixture(scope="module")
def neu(neu_path, tmp_path_factory) -> DefectDataModule:
    dm = neu_module(neu_path, tmp_path_factory.mktemp("splits"))
    dm.setup()
    return dm


def test_neu_has_1800_images_in_6_classes(neu):
    assert neu.source.layout == "neu-det"
    assert len(neu.records) == 1800
    assert Counter(r.label for r in neu.records) == {i: 300 for i in range(6)}
    assert neu.categories.abbreviations == ["Cr", "In", "Pa", "PS", "RS", "Sc"]


def test_labels_come_from_file_names(neu):
    for record in neu.records:
        prefix = Path(record.key).stem.rsplit("_", 1)[0]
        assert prefix == list(NEU_CLASSES.values())[record.label]


def test_split_is_8_1_1_per_class(neu):
    assert {s: len(neu.split.keys(s)) for s in ("train", "val", "test")} == {"train": 1440, "val": 180, "test": 180}
    for split, per_class in (("train", 240), ("val", 30), ("test", 30)):
        assert neu.class_counts(split) == {abbr: per_class for abbr in NEU_CLASSES}


def test_no_image_in_two_splits_not_even_as_a_byte_identical_copy(neu):
    digest = {r.key: r.digest for r in neu.records}
    side = {}
    for split in ("train", "val", "test"):
        for key in neu.split.keys(split):
            assert key not in side, f"{key} in {side.get(key)} and {split}"
            side[key] = split
    assert len(side) == 1800
    by_digest = {}
    for key, split in side.items():
        assert by_digest.setdefault(digest[key], split) == split, f"content of {key} is in two splits"
    assert neu.duplicate_groups() == [["IMAGES/patches_101.jpg", "IMAGES/patches_105.jpg"]]
    assert side["IMAGES/patches_101.jpg"] == side["IMAGES/patches_105.jpg"]


def test_alpha_subsets_are_nested_and_stratified(neu):
    train = set(neu.split.train)
    subsets = {a: set(neu.split.alpha_subset(a)) for a in (1.0, 0.8, 0.6, 0.4)}
    assert subsets[1.0] == train
    assert subsets[0.4] < subsets[0.6] < subsets[0.8] < train
    for alpha, per_class in ((0.8, 192), (0.6, 144), (0.4, 96)):
        assert neu.class_counts("train", alpha=alpha) == {abbr: per_class for abbr in NEU_CLASSES}


def test_split_is_persisted_and_reused(neu, neu_path):
    stored = json.loads(neu.split_path.read_text())
    assert stored["sizes"] == {"train": 1440, "val": 180, "test": 180}
    again = neu_module(neu_path, neu.split_dir)
    again.setup()
    assert again.split.test == neu.split.test and again.split.train_order == neu.split.train_order
    assert [p.name for p in neu.split_dir.iterdir()] == [neu.split_path.name], "the split file alone, no lock file"


def test_split_depends_on_split_seed_only(neu, neu_path, tmp_path):
    same = neu_module(neu_path, tmp_path / "a")
    same.setup()
    assert sorted(same.split.test) == sorted(neu.split.test)
    other = neu_module(neu_path, tmp_path / "b", split={"fractions": [0.8, 0.1, 0.1], "seed": 1})
    other.setup()
    assert sorted(other.split.test) != sorted(neu.split.test)


def test_images_are_one_channel_200px_in_unit_range(neu):
    dataset = neu.dataset("test", category="Pa")
    assert len(dataset) == 30
    image, label = dataset[0]
    assert image.shape == (1, 200, 200) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and label == 2
    reference = np.array(Image.open(neu.source.root / dataset.records[0].key).convert("L"))
    assert torch.equal((image[0] * 255).round().to(torch.uint8), torch.from_numpy(reference))


def test_category_selection_accepts_full_names(neu):
    assert neu.select("val", category="patches") == neu.select("val", category="Pa")
    assert {r.label for r in neu.select("val", category="rolled-in_scale")} == {4}


def _write_neu_cls(neu, target: Path, per_class: int, layout: str) -> None:
    """A small copy (BMP) of the first images of each class, in a temporary folder laid out as ``layout``."""
    for abbr, full in NEU_CLASSES.items():
        records = [r for r in neu.records if r.label == list(NEU_CLASSES).index(abbr)][:per_class]
        for n, record in enumerate(records, start=1):
            image = Image.open(neu.source.root / record.key).convert("L")
            path = {"flat": target / f"{abbr}_{n}.bmp", "class-folders": target / full / f"{full}_{n}.bmp",
                    "neu-det": target / "images" / f"{full}_{n}.bmp"}[layout]
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)


@pytest.mark.parametrize("layout", ["flat", "class-folders", "neu-det"])
def test_neu_cls_layouts_read_the_same_labels(neu, tmp_path, layout):
    _write_neu_cls(neu, tmp_path / "data", per_class=10, layout=layout)  # neu-det: NEU-DET's IMAGES/ spelt images/
    dm = neu_module(tmp_path / "data", tmp_path / "splits")
    dm.setup()
    assert dm.source.layout == layout
    assert Counter(r.label for r in dm.records) == {i: 10 for i in range(6)}
    assert {s: len(dm.split.keys(s)) for s in ("train", "val", "test")} == {"train": 48, "val": 6, "test": 6}
    first_cr = dm.dataset("train", category="Cr")[0][0]
    assert first_cr.shape == (1, 200, 200)


def test_example_grids_pass_over_a_byte_identical_copy_of_an_image_they_already_show(neu):
    patches = neu.dataset("train", category="Pa")
    first = [patches.records[i].key for i in range(8)]
    assert {"IMAGES/patches_101.jpg", "IMAGES/patches_105.jpg"} <= set(first), "the seed-0 split's first 8 hold both"
    shown = [patches.records[i].key for i in patches.distinct_indices(8)]
    assert shown == [k for k in first if k != "IMAGES/patches_105.jpg"] + [patches.records[8].key]


@pytest.mark.parametrize("layout", ["flat", "class-folders", "neu-det"])
def test_a_dataset_of_some_of_neus_classes_reads_their_images_and_leaves_the_others_out(neu, tmp_path, layout):
    _write_neu_cls(neu, tmp_path / "data", per_class=10, layout=layout)
    some = DefectDataModule(name="neu-PaSc", classes={"Pa": "patches", "Sc": "scratches"}, root=str(tmp_path / "data"),
                            split_dir=str(tmp_path / "splits"))
    some.setup()
    assert Counter(some.categories.abbreviations[r.label] for r in some.records) == {"Pa": 10, "Sc": 10}
    assert some.source.skipped == []
    others = {"flat": {"Cr": 10, "In": 10, "PS": 10, "RS": 10},  # the folders of the other classes are not read at all
              "class-folders": {}, "neu-det": {"crazing": 10, "inclusion": 10, "pitted_surface": 10,
                                               "rolled-in_scale": 10}}[layout]
    assert some.source.other_classes == others
    if others:
        lines = format_report(dataset_report(some), None).splitlines()
        names = ", ".join(f"{name} 10" for name in sorted(others))
        assert f"  left out 40 files of 4 other classes ({names}), not in dataset.classes" in lines


def test_neu_det_read_for_two_of_its_classes_has_their_split_sizes(neu_path, tmp_path):
    some = DefectDataModule(name="neu-PaSc", classes={"Pa": "patches", "Sc": "scratches"}, root=str(neu_path),
                            split_dir=str(tmp_path / "splits"))
    some.setup()
    assert len(some.records) == 600 and sum(some.source.other_classes.values()) == 1200
    assert {s: some.class_counts(s) for s in ("train", "val", "test")} == {
        "train": {"Pa": 240, "Sc": 240}, "val": {"Pa": 30, "Sc": 30}, "test": {"Pa": 30, "Sc": 30}}


def test_a_split_of_all_classes_is_not_read_for_some_of_them(neu, neu_path):
    some = DefectDataModule(name="neu", classes={"Pa": "patches", "Sc": "scratches"}, root=str(neu_path),
                            split_dir=str(neu.split_dir))
    with pytest.raises(UserError, match=r"was made for the classes Cr, In, Pa, PS, RS, Sc, and this run reads Pa, Sc "
                                        r"\(dataset.classes\): a dataset of other classes needs a dataset.name of its "
                                        r"own"):
        some.setup()
