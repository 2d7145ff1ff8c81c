"""Per-class folder datasets (CCBSD and any other) through their configs."""

from __future__ import annotations

import numpy as np
from hydra.utils import instantiate
from PIL import Image

from conftest import compose_config


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
