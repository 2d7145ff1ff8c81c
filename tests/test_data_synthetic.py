"""The synthetic dataset: deterministic by seed, distinct classes, the same split machinery as real data."""

from __future__ import annotations

import numpy as np
import torch

from stablesdg.data import DefectDataModule
from stablesdg.data.synthetic import SYNTHETIC_CLASSES, render_synthetic_defect


def synthetic_module(split_dir, per_class=20, seed=0, size=64) -> DefectDataModule:
    return DefectDataModule(name="synthetic", classes=SYNTHETIC_CLASSES, split_dir=str(split_dir),
                            synthetic={"per_class": per_class, "seed": seed}, image_size=size)


def test_render_is_a_pure_function_of_seed_class_and_index():
    a = np.asarray(render_synthetic_defect("Pa", 3, 64, seed=0))
    assert np.array_equal(a, np.asarray(render_synthetic_defect("Pa", 3, 64, seed=0)))
    assert not np.array_equal(a, np.asarray(render_synthetic_defect("Pa", 3, 64, seed=1)))
    assert not np.array_equal(a, np.asarray(render_synthetic_defect("Pa", 4, 64, seed=0)))
    assert a.shape == (64, 64) and a.dtype == np.uint8


def test_a_rendered_image_is_the_callers_own_to_change():
    from PIL import ImageDraw

    first = render_synthetic_defect("Sc", 5, 64, seed=0)
    pixels = np.asarray(first).copy()
    ImageDraw.Draw(first).rectangle([0, 0, 63, 63], fill=0)
    assert np.array_equal(np.asarray(render_synthetic_defect("Sc", 5, 64, seed=0)), pixels)


def test_two_modules_with_one_seed_give_identical_tensors(tmp_path):
    first, second = synthetic_module(tmp_path / "a"), synthetic_module(tmp_path / "b")
    first.setup(), second.setup()
    assert first.split.test == second.split.test
    for x, y in zip(first.dataset("train"), second.dataset("train")):
        assert torch.equal(x[0], y[0]) and x[1] == y[1]


def test_sizes_labels_and_split(tmp_path):
    dm = synthetic_module(tmp_path, per_class=20, size=48)
    dm.setup()
    assert len(dm.records) == 80 and len(dm.categories) == 4
    assert dm.class_counts("train") == {abbr: 16 for abbr in SYNTHETIC_CLASSES}
    assert dm.class_counts("val") == dm.class_counts("test") == {abbr: 2 for abbr in SYNTHETIC_CLASSES}
    image, label = dm.dataset("val", category="Sc")[0]
    assert image.shape == (1, 48, 48) and label == 3


def _texture_features(abbr: str, index: int) -> np.ndarray:
    pixels = np.asarray(render_synthetic_defect(abbr, index, 64, seed=0), dtype=np.float64)
    intensity = np.histogram(pixels, bins=8, range=(0, 256))[0] / pixels.size
    gradients = np.concatenate([np.abs(np.diff(pixels, axis=0)).ravel(), np.abs(np.diff(pixels, axis=1)).ravel()])
    return np.concatenate([intensity, np.histogram(gradients, bins=6, range=(0, 120))[0] / gradients.size])


def test_classes_are_visually_distinct():
    """A nearest-class-mean rule on intensity and gradient histograms separates fresh images of each class."""
    train = {a: np.array([_texture_features(a, i) for i in range(20)]) for a in SYNTHETIC_CLASSES}
    stacked = np.concatenate(list(train.values()))
    mean, std = stacked.mean(axis=0), stacked.std(axis=0) + 1e-9
    centroids = {a: ((f - mean) / std).mean(axis=0) for a, f in train.items()}
    correct = 0
    for abbr in SYNTHETIC_CLASSES:
        for index in range(100, 120):
            f = (_texture_features(abbr, index) - mean) / std
            correct += min(centroids, key=lambda a: np.linalg.norm(f - centroids[a])) == abbr
    assert correct >= 76, f"only {correct}/80 synthetic images are nearest to their own class"
