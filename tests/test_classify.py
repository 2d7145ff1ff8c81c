"""Defect classifiers: architectures, training-set composition, and real training runs."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, compose_config, run_cli
from stablesdg import artifacts
from stablesdg.classify.composition import compose_training_set
from stablesdg.classify.networks import build_classifier
from stablesdg.data import DefectDataModule
from stablesdg.data.categories import CategorySet
from stablesdg.errors import UserError
from stablesdg.generated import generated_images
from stablesdg.train import run

NEU_CLASSES = {"Cr": "crazing", "In": "inclusion", "Pa": "patches", "PS": "pitted_surface",
               "RS": "rolled-in_scale", "Sc": "scratches"}


@pytest.mark.parametrize("arch", ["alexnet", "vgg", "resnet", "squeezenet", "densenet"])
def test_every_architecture_builds_for_6_and_4_classes_at_200px(arch):
    for num_classes in (6, 4):
        network = build_classifier(arch, num_classes).eval()
        with torch.no_grad():
            assert network(torch.rand(2, 3, 200, 200)).shape == (2, num_classes)


def test_training_augmentation_gives_each_image_of_a_batch_its_own_rotation_within_10_degrees_and_flips():
    from stablesdg.stages.classify import augmentation

    augment = augmentation()
    torch.manual_seed(0)
    lines = torch.zeros(100, 1, 101, 101)
    lines[:, 0, 50, 10:91] = 1.0  # a horizontal line through the centre: its angle after augmentation is the rotation
    angles = []
    for image in augment(lines):
        rows, cols = torch.nonzero(image[0] > 0.3, as_tuple=True)
        angles.append(abs(math.degrees(math.atan(np.polyfit(cols.numpy(), rows.numpy(), 1)[0]))))
    assert 7.0 < max(angles) <= 10.5
    assert np.std(angles) > 2.0, "one angle per image (uniform on [0, 10]: std 2.9), not one per batch"
    marks = torch.zeros(200, 1, 101, 101)
    marks[:, 0, 5:15, 5:15] = 1.0  # a mark in the top-left corner: flips send it to each corner
    corners = Counter()
    for image in augment(marks):
        rows, cols = torch.nonzero(image[0] > 0.5, as_tuple=True)
        corners[(rows.float().mean().item() < 50, cols.float().mean().item() < 50)] += 1
    assert len(corners) == 4 and min(corners.values()) > 25, corners


def test_the_augmentations_angles_are_drawn_where_the_module_was_moved_and_are_kornias_for_a_10_degree_range():
    """On a GPU, angles drawn there and sent to the host at each step would make every step wait for the device
    (the classifier's one host sync in BENCHMARKS.md); a CPU run shows the same fault as angles that ignore a move
    to float64."""
    from kornia.augmentation import RandomRotation

    from stablesdg.classify.module import DefectClassifier
    from stablesdg.stages.classify import augmentation

    moved = augmentation().to(torch.float64)
    assert moved[0].forward_parameters((4, 1, 8, 8))["degrees"].dtype == torch.float64
    ours, kornias = augmentation()[0], RandomRotation(10.0, p=1.0)
    torch.manual_seed(5)
    angles = ours.forward_parameters((64, 1, 8, 8))["degrees"]
    torch.manual_seed(5)
    assert torch.equal(angles, kornias.forward_parameters((64, 1, 8, 8))["degrees"])
    assert angles.abs().max() <= 10.0 and angles.std() > 4.0
    module = DefectClassifier(build_classifier("squeezenet", 4), 4, 1e-3, augment=augmentation())
    optimised = [p for group in module.configure_optimizers().param_groups for p in group["params"]]
    assert len(optimised) == len(list(module.network.parameters()))
    assert all(any(p is q for q in module.network.parameters()) for p in optimised)


@pytest.mark.filterwarnings("ignore:You are trying to")  # self.log outside a Trainer: not what is tested
def test_a_training_step_augments_its_batch_from_the_step_seed_in_fp32_also_under_mixed_precision():
    from stablesdg.classify.module import DefectClassifier
    from stablesdg.stages.classify import augmentation
    from stablesdg.training import step_seed

    network = build_classifier("squeezenet", 4)
    module = DefectClassifier(network, 4, 1e-3, augment=augmentation(), seed=3)
    seen = []
    module.forward = lambda images: seen.append(images) or network(images)
    images, labels = torch.rand(4, 3, 40, 40), torch.tensor([0, 1, 2, 3])
    module.training_step((images, labels), 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module.training_step((images, labels), 0)
    torch.manual_seed(step_seed(3, 0, 0))
    expected = augmentation()(images)
    assert not torch.equal(expected, images)
    assert seen[0].dtype == seen[1].dtype == torch.float32
    assert torch.equal(seen[0], expected) and torch.equal(seen[1], expected)


def test_checkpoints_hold_the_classifier_and_not_the_augmentations_settings_and_older_ones_still_load():
    from stablesdg.classify.module import DefectClassifier
    from stablesdg.stages.classify import augmentation

    module = DefectClassifier(build_classifier("squeezenet", 4), 4, 1e-3, augment=augmentation())
    assert any(key.startswith("augment.") for key in module.state_dict()), "kornia keeps its settings as buffers"
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {k for k in module.state_dict() if not k.startswith("augment.")}
    restored = DefectClassifier(build_classifier("squeezenet", 4), 4, 1e-3, augment=augmentation())
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])  # strict, as Lightning loads it
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in module.state_dict().items())


@pytest.mark.parametrize("pretrained", [True, False])
def test_normalization_computes_torchvisions_numbers_from_statistics_that_move_with_the_model(pretrained):
    from torchvision.transforms import v2

    from stablesdg.classify.module import DefectClassifier
    from stablesdg.stages.classify import normalization

    mean, std = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if pretrained else ([0.5] * 3, [0.5] * 3)
    images = torch.rand(4, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(normalization(pretrained)(images), v2.Normalize(mean, std)(images))
    module = DefectClassifier(build_classifier("squeezenet", 4), 4, 1e-3, normalize=normalization(pretrained))
    assert {name for name, _ in module.named_buffers()} >= {"normalize.mean", "normalize.std"}
    assert not any(key.startswith("normalize.") for key in module.state_dict()), "checkpoints stay as they were"
    module.to(torch.float64)
    assert module.normalize.mean.dtype == torch.float64


def test_depth_and_local_weights(tmp_path):
    assert sum(p.numel() for p in build_classifier("resnet", 6, depth=34).parameters()) > 21_000_000
    from safetensors.torch import save_file

    imagenet_like = build_classifier("resnet", 1000)
    save_file({k: v.contiguous() for k, v in imagenet_like.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    network = build_classifier("resnet", 6, weights=str(tmp_path / "r18.safetensors"))
    assert torch.equal(network.conv1.weight, imagenet_like.conv1.weight) and network.fc.out_features == 6
    with pytest.raises(UserError, match="are never downloaded"):
        build_classifier("resnet", 6, weights=str(tmp_path / "missing.pth"))
    trained_here = build_classifier("resnet", 4)  # a classifier.safetensors of stage=classify: a 4-class head
    save_file({k: v.contiguous() for k, v in trained_here.state_dict().items()}, str(tmp_path / "ours.safetensors"))
    with pytest.raises(UserError, match=r"^classifier.weights=.*ours.safetensors does not fit resnet18 with ImageNet's "
                                        r"1000-class head: size mismatch for fc.weight: .*torch.Size\(\[4, 512\]\)"):
        build_classifier("resnet", 6, weights=str(tmp_path / "ours.safetensors"))
    with pytest.raises(UserError, match="unknown classifier 'lenet'"):
        build_classifier("lenet", 6)
    with pytest.raises(UserError, match="^classifier.depth=50 does not apply to squeezenet"):  # not silently ignored
        build_classifier("squeezenet", 6, depth=50)
    for arch, depth, depths in (("resnet", 7, "18, 34, 50, 101, 152"), ("vgg", 17, "11, 13, 16, 19"),
                                ("densenet", 120, "121, 161, 169, 201")):
        with pytest.raises(UserError) as refused:
            build_classifier(arch, 6, depth=depth)
        assert str(refused.value) == (f"torchvision has no {arch}{depth} (classifier.depth={depth}); "
                                      f"classifier={arch} comes in depths {depths}")


class _Payload:
    """A pickled object that would run code on load."""

    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pth_weights_load_as_plain_tensors_and_a_pickle_with_code_is_refused(tmp_path):
    imagenet_like = build_classifier("squeezenet", 1000)
    torch.save(imagenet_like.state_dict(), tmp_path / "plain.pth")
    network = build_classifier("squeezenet", 6, weights=str(tmp_path / "plain.pth"))
    assert torch.equal(network.features[0].weight, imagenet_like.features[0].weight)
    torch.save({"features.0.weight": _Payload()}, tmp_path / "unsafe.pth")
    with pytest.raises(UserError, match=r"^cannot read classifier\.weights=.*unsafe\.pth: not a state dict that "
                                        r"torch\.load\(weights_only=True\) reads: .*which are not unpickled since that "
                                        r"could run code \(Unsupported global: GLOBAL print was not an allowed global by default\)$"):
        build_classifier("squeezenet", 6, weights=str(tmp_path / "unsafe.pth"))


def test_a_classifier_weights_file_that_is_no_state_dict_is_one_line_before_any_image_is_decoded(tmp_path):
    (tmp_path / "notes.pth").write_text("garbage")
    done = run_cli(tmp_path, "stage=classify", "logger=none", f"classifier.weights={tmp_path}/notes.pth")
    assert (done.returncode, done.stderr) == (2, f"error: cannot read classifier.weights={tmp_path}/notes.pth: not a "
                                                 "state dict that torch.load(weights_only=True) reads: not a PyTorch "
                                                 "file, or it holds objects besides tensors, which are not unpickled "
                                                 "since that could run code (Unsupported operand 103)\n")
    assert "images decoded once into memory" not in done.stdout


@pytest.fixture(scope="module")
def neu(neu_path, tmp_path_factory) -> DefectDataModule:
    dm = DefectDataModule(name="neu", classes=NEU_CLASSES, root=str(neu_path), split_dir=str(tmp_path_factory.mktemp("s")))
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def generated_folder(tmp_path_factory):
    """1,000 (empty) generated files per class, named by full class names: composition only lists them."""
    root = tmp_path_factory.mktemp("generated")
    for full in NEU_CLASSES.values():
        (root / full).mkdir()
        for i in range(1000):
            (root / full / f"{i:04d}.png").touch()
    return root


@pytest.mark.parametrize("alpha, real_per_class", [(1.0, 240), (0.8, 192), (0.6, 144), (0.4, 96)])
def test_composition_counts_are_exact(neu, generated_folder, alpha, real_per_class):
    generated = generated_images(str(generated_folder), "unused", "neu", neu.categories)
    for mode, generated_per_class in (("none", 0), ("substitute", 240 - real_per_class), ("expand", 1000)):
        if mode == "expand" and alpha == 1.0:
            continue
        chosen = compose_training_set(neu, alpha, mode, generated if mode != "none" else None, 1000)
        assert chosen.counts == {a: {"real": real_per_class, "generated": generated_per_class} for a in NEU_CLASSES}
        assert len(chosen.real) == 6 * real_per_class and len(chosen.generated) == 6 * generated_per_class
        held_out = {r.key for r in neu.select("val") + neu.select("test")}
        assert not held_out & {r.key for r in chosen.real}
        assert all(r.key.startswith(str(generated_folder)) for r in chosen.generated)
        for record in chosen.generated:
            assert f"/{NEU_CLASSES[neu.categories.abbreviations[record.label]]}/" in record.key


def test_validation_and_test_never_hold_generated_or_training_images(neu):
    train = {r.key for r in neu.select("train")}
    for split in ("val", "test"):
        keys = {r.key for r in neu.select(split)}
        assert len(keys) == 180 and not keys & train and all(k.startswith("IMAGES/") for k in keys)


def test_too_few_generated_images_is_a_clear_error(neu, tmp_path):
    for full in NEU_CLASSES.values():
        (tmp_path / full).mkdir()
        for i in range(10 if full == "crazing" else 144):
            (tmp_path / full / f"{i}.png").touch()
    generated = generated_images(str(tmp_path), "unused", "neu", neu.categories)
    with pytest.raises(UserError, match="has 10 images of class Cr; stage.mode=substitute at alpha=0.4 needs 144$"):
        compose_training_set(neu, 0.4, "substitute", generated, 1000)


def test_too_few_generated_images_of_several_classes_are_named_in_one_line(neu, tmp_path):
    have = {"Cr": 10, "In": 144, "Pa": 0, "PS": 3, "RS": 144, "Sc": 143}  # substitute at α=0.4 needs 240 - 96 each
    for abbreviation, count in have.items():
        (tmp_path / NEU_CLASSES[abbreviation]).mkdir()
        for i in range(count):
            (tmp_path / NEU_CLASSES[abbreviation] / f"{i}.png").touch()
    generated = generated_images(str(tmp_path), "unused", "neu", neu.categories)
    asked = []

    def how_to_make_more(category, has, wanted):
        asked.append((category, has, wanted))
        return f"remedy for {category}"

    with pytest.raises(UserError) as refused:
        compose_training_set(neu, 0.4, "substitute", generated, 1000, how_to_make_more)
    assert str(refused.value) == ("the generated set has too few images of 4 classes for stage.mode=substitute at "
                                  "alpha=0.4 (has of needs): Cr 10 of 144, Pa 0 of 144, PS 3 of 144, Sc 143 of 144; "
                                  "remedy for Cr (and likewise for Pa, PS, Sc)")
    assert asked == [("Cr", 10, 144)]


def _with_listed_files(stage) -> None:
    """An (empty) file for each image the set's manifest lists: a set whose listed images are gone is refused."""
    with open(stage / "manifest.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            (stage / row["file"]).parent.mkdir(parents=True, exist_ok=True)
            (stage / row["file"]).touch()


def _stored_set(root, category, variant, images, made_by) -> None:
    stage = artifacts.stage_dir(root, "synthetic", category, variant, "generate")
    stage.mkdir(parents=True)
    (stage / "manifest.csv").write_text("file\n" + "".join(f"images/{i:05d}.png\n" for i in range(images)))
    _with_listed_files(stage)
    (stage / "result.json").write_text(json.dumps({"stage": made_by}))


@pytest.mark.parametrize("case", ["missing", "sampled", "imported", "folder", "exported"])
def test_too_few_generated_images_ends_with_how_to_make_more(tmp_path, case):
    store = tmp_path / "artifacts"
    for category in ("Pa", "PS", "Sc"):
        _stored_set(store, category, "grown", 5, "generate")
    if case in ("sampled", "imported"):
        _stored_set(store, "Cr", "grown", 3, "sample" if case == "sampled" else "external")
    if case in ("folder", "exported"):
        for category in ("crazing", "Pa", "PS", "Sc"):
            (tmp_path / "folder" / category).mkdir(parents=True)
            for i in range(1 if category == "crazing" else 5):
                (tmp_path / "folder" / category / f"{'a' if category == 'crazing' else i}.png").touch()
    if case == "exported":  # as stage=export stage.real=true writes it: a real training image beside the generated one
        (tmp_path / "folder" / "crazing" / "crazing_3.png").touch()
        (tmp_path / "folder" / "manifest.csv").write_text(
            "file,class,origin\ncrazing/a.png,Cr,generated\ncrazing/crazing_3.png,Cr,real\n"
            + "".join(f"{category}/{i}.png,{category},generated\n" for category in ("Pa", "PS", "Sc") for i in range(5)))
        (tmp_path / "folder" / ".stablesdg-export.json").write_text(json.dumps({"generated": "grown", "split": None}))
    source = str(tmp_path / "folder") if case in ("folder", "exported") else "grown"
    remedy = {
        "missing": "make them with: python -m stablesdg.train stage=generate dataset=synthetic category=Cr "
                   "variant=grown stage.num_images=5",
        "sampled": f"run the stage=sample command that made {store}/synthetic/Cr/grown/generate again with "
                   f"stage.num_images=5: it keeps the 3 images and makes the rest",
        "imported": "import a stage.source with more images of Cr (stage=external variant=grown)",
        "folder": f"add images to the sub-folder of {tmp_path}/folder for Cr",
        "exported": f"grow the set 'grown' that {tmp_path}/folder was exported from (the command that made it with "
                    "stage.num_images=5; it keeps its images), then run stage=export again: an export holds the "
                    "generated images of its set only"}[case]
    have = {"missing": 0, "sampled": 3, "imported": 3, "folder": 1, "exported": 1}[case]
    with pytest.raises(UserError) as refused:
        run(compose_config([f"paths.artifacts={store}", f"paths.logs={tmp_path}/logs", "stage=classify", "logger=none",
                            "dataset.synthetic.per_class=10", "stage.mode=expand", "stage.extra_per_class=5",
                            f"stage.generated={source}"]))
    assert str(refused.value) == (f"the generated set has {have} images of class Cr; stage.mode=expand at alpha=1.0 "
                                  f"needs 5; {remedy}")


def _finished_generated_set(root, variant, order=(2, 0, 1)):
    """A finished generated set of every NEU class in the store at ``root``, its manifest listing ``order``."""
    for abbreviation in NEU_CLASSES:
        stage = artifacts.stage_dir(root, "neu", abbreviation, variant, "generate")
        (stage / "images").mkdir(parents=True)
        with open(stage / "manifest.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "seed"])
            writer.writerows([[f"images/{i:04d}.png", i] for i in order])
        _with_listed_files(stage)
        (stage / "result.json").write_text("{}")


def test_the_training_set_counts_generated_images_made_from_training_images_outside_its_alpha_subset(tmp_path, neu):
    subset = {r.key for r in neu.select("train", alpha=0.4)}
    for abbreviation in NEU_CLASSES:
        stage = artifacts.stage_dir(tmp_path, "neu", abbreviation, "made", "generate")
        stage.mkdir(parents=True)
        sources = [r.key for r in neu.select("train", abbreviation)]  # the first 4 start in the set's order
        with open(stage / "manifest.csv", "w", newline="") as handle:
            rows = [[f"images/{i:05d}.png", key] for i, key in enumerate(sources[:4])]
            csv.writer(handle).writerows([["file", "source_image"], *rows, ["images/00004.png", ""]])
        _with_listed_files(stage)
        (stage / "result.json").write_text("{}")
    found = generated_images("made", str(tmp_path), "neu", neu.categories)
    beyond = sum(r.key not in subset for c in NEU_CLASSES for r in neu.select("train", c)[:4])
    assert 0 < beyond < 4 * len(NEU_CLASSES), "the fixture has images of both kinds"
    assert compose_training_set(neu, 0.4, "expand", found, 5).made_beyond_alpha == beyond, "text-to-image: none"
    assert compose_training_set(neu, 1.0, "expand", found, 5).made_beyond_alpha == 0


def test_generated_images_made_from_validation_or_test_images_are_refused_for_training(tmp_path, neu):
    """img2img starts each image from a real one (stage.source_split): a set made from held-out images would let the
    classifier learn the images it is tested on, whether read from the store or from a folder stage=export wrote."""
    train, test = neu.select("train", "Pa"), neu.select("test", "Pa")
    for abbreviation in NEU_CLASSES:
        stage = artifacts.stage_dir(tmp_path, "neu", abbreviation, "made", "generate")
        stage.mkdir(parents=True)
        sources = [r.key for r in neu.select("train", abbreviation)[:3]]
        if abbreviation == "Pa":
            sources[1:] = [test[0].key, neu.select("val", "Pa")[0].key]
        with open(stage / "manifest.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([["file", "source_image"], *[[f"images/{i:05d}.png", key]
                                                                      for i, key in enumerate(sources)]])
        _with_listed_files(stage)
        (stage / "result.json").write_text("{}")
    found = generated_images("made", str(tmp_path), "neu", neu.categories)
    compose_training_set(neu, 1.0, "expand", found, 1)  # the first image of each class came from a training image
    with pytest.raises(UserError, match=re.escape(
            f"2 of the generated images this classifier would train on were made from its validation or test images "
            f"({tmp_path}/neu/Pa/made/generate/images/00001.png from {test[0].key}, for one), so it would be tested on "
            "images it learned from; use a set made from the training images (stage=generate stage.source_split=train)")):
        compose_training_set(neu, 0.4, "expand", found, 3)

    exported = tmp_path / "export"  # as stage=export lays a set out, with its manifest's columns
    (exported / "patches").mkdir(parents=True)
    others = ("crazing", "inclusion", "pitted_surface", "rolled-in_scale", "scratches")
    for name in others:
        (exported / name).mkdir()
        (exported / name / "a.png").touch()
    with open(exported / "manifest.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["file", "class", "origin", "source", "source_image"],
                                      ["patches/generated_00000.png", "Pa", "generated", "x", test[0].key],
                                      ["patches/real.png", "Pa", "real", train[0].key, ""],
                                      *[[f"{name}/a.png", "", "generated", "x", ""] for name in others]])
    for name in ("generated_00000.png", "real.png"):
        (exported / "patches" / name).touch()
    (exported / ".stablesdg-export.json").write_text(json.dumps({"dataset": "neu", "split": None}))
    found = generated_images(str(exported), "unused", "neu", neu.categories)
    with pytest.raises(UserError, match=re.escape(f"({exported}/patches/generated_00000.png from {test[0].key}, for one)")):
        compose_training_set(neu, 1.0, "expand", found, 1)
    (exported / ".stablesdg-export.json").unlink()  # now a folder of another tool's, whose manifest.csv is its own
    compose_training_set(neu, 1.0, "expand", generated_images(str(exported), "unused", "neu", neu.categories), 1)


def test_generated_sets_are_found_by_variant_name_in_manifest_order(tmp_path, neu):
    _finished_generated_set(tmp_path, "mygen")
    found = generated_images("mygen", str(tmp_path), "neu", neu.categories)
    assert [p.name for p in found[0]] == ["0002.png", "0000.png", "0001.png"]
    with pytest.raises(UserError, match="neither a folder nor a generated set"):
        generated_images("othergen", str(tmp_path), "neu", neu.categories)
    for path in (str(tmp_path / "missing"), "./missing", "~/missing"):
        with pytest.raises(UserError, match=r"stage.generated='.*missing': no such folder \(/.*missing\)$"):
            generated_images(path, str(tmp_path), "neu", neu.categories)
    (tmp_path / "samples.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match=r"stage.generated='.*samples.zip': a file, not a folder \(/.*samples.zip\)$"):
        generated_images(str(tmp_path / "samples.zip"), str(tmp_path), "neu", neu.categories)


def test_a_variant_name_that_is_also_a_folder_here_reads_the_store_and_dot_slash_reads_the_folder(
        tmp_path, neu, monkeypatch):
    # `stage.generated=stablesdg` (a variant so named), run from the repository root, where stablesdg/ is the package's
    # folder: it was read as a folder and refused for having no class sub-folders
    _finished_generated_set(tmp_path / "store", "stablesdg")
    (tmp_path / "stablesdg" / "crazing").mkdir(parents=True)
    (tmp_path / "stablesdg" / "crazing" / "a.png").touch()
    monkeypatch.chdir(tmp_path)
    from_store = generated_images("stablesdg", str(tmp_path / "store"), "neu", neu.categories)
    assert sorted(from_store) == list(range(6)) and [p.name for p in from_store[0]] == ["0002.png", "0000.png", "0001.png"]
    from_folder = generated_images("./stablesdg", str(tmp_path / "store"), "neu", neu.categories)
    assert from_folder == {0: [Path("stablesdg/crazing/a.png")]}
    # with no such set in the store, the bare name is the folder
    assert generated_images("stablesdg", str(tmp_path / "empty"), "neu", neu.categories) == from_folder


def _classify_cfg(tmp_path, *overrides):
    return compose_config([f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs", "stage=classify",
                           "logger=none", "dataset.synthetic.per_class=12", "stage.max_epochs=2", "stage.batch_size=8",
                           *overrides])


def test_substitution_with_a_generated_folder_end_to_end(tmp_path):
    _generated_folder(tmp_path / "gen")
    result = json.loads(run(_classify_cfg(tmp_path, "stage.alpha=0.4", "stage.mode=substitute",
                                          f"stage.generated={tmp_path}/gen")).read_text())
    metrics = result["metrics"]
    assert metrics["composition"] == {a: {"real": 4, "generated": 6} for a in ("Cr", "Pa", "PS", "Sc")}
    assert result["stage"] == "classify" and metrics["generated"] == str(tmp_path / "gen")
    folder = tmp_path / "artifacts/synthetic/all/default/classify_squeezenet_a0.4_substitute_seed0"
    assert {p.name for p in folder.iterdir()} == {"classifier.safetensors", "confusion_matrix.png", "result.json"}
    assert sum(map(sum, metrics["confusion_matrix"])) == 4 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert set(metrics["per_class_accuracy"]) == {"Cr", "Pa", "PS", "Sc"}


def test_a_run_logged_to_a_file_shows_progress_lines_and_no_lightning_noise(tmp_path, monkeypatch, caplog, recwarn):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # as under SLURM or nohup: no terminal, so no progress bar
    caplog.set_level(logging.INFO)
    cfg = _classify_cfg(tmp_path, "stage.alpha=0.4", "stage.max_epochs=2")  # 16 real images, batch 8: 2 steps an epoch
    cfg.logger = compose_config(["logger=csv", f"paths.logs={tmp_path}/logs"]).logger
    metrics = json.loads(run(cfg).read_text())["metrics"]
    summary = [r.getMessage() for r in caplog.records if r.name == "stablesdg.stages.classify"][-1]
    per_class = ", ".join(f"{name} {metrics['per_class_accuracy'][name]:.3f}" for name in ("Cr", "Pa", "PS", "Sc"))
    tested = sum(map(sum, metrics["confusion_matrix"]))
    assert metrics["test_images"] == tested == 4, "one of each class's 12 images (8:1:1)"
    assert summary == (f"stage=classify: squeezenet on 16 real + 0 generated images: test accuracy "
                       f"{metrics['test_accuracy']:.4f} on 4 test images with epoch {metrics['best_epoch'] + 1} of 2 "
                       f"(the best on validation, "
                       f"{metrics['best_val_accuracy']:.4f}); per class {per_class}")
    progress = [r.getMessage() for r in caplog.records if r.name == "stablesdg.training_output"]
    assert [m.split(",")[0] for m in progress if "step" in m] == [
        "stage=classify: step 1/4 (25%)", "stage=classify: step 2/4 (50%)", "stage=classify: step 3/4 (75%)",
        "stage=classify: step 4/4 (100%)"]
    epochs = [m for m in progress if "epoch" in m]
    assert [m.split(":")[1] for m in epochs] == [" epoch 1/2", " epoch 2/2"]
    with open(next((tmp_path / "logs").rglob("metrics.csv")), newline="") as handle:
        logged = [row for row in csv.DictReader(handle)]
    for epoch, line in enumerate(epochs):  # each epoch's own metrics, as the logger records them
        for key in ("train/acc", "val/acc"):
            value = next(float(row[key]) for row in logged if row[key] and int(row["epoch"]) == epoch)
            assert f"{key} {value:.4f}" in line, (line, key, value)
    lightning_lines = [r.getMessage() for r in caplog.records if r.name.startswith("lightning")]
    assert any("GPU available" in m for m in lightning_lines) and not any("Tip:" in m for m in lightning_lines)
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message) or "LeafSpec" in str(w.message)]
    # an epoch (2 steps) shorter than trainer.log_every_n_steps (10): the loss is logged every epoch's worth of steps
    assert [int(row["step"]) for row in logged if row["train/loss"]] == [1, 3]
    assert not [w for w in recwarn if "smaller than the logging interval" in str(w.message)]


def test_classifier_runs_are_deterministic_and_seeded(tmp_path):
    weights = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run(_classify_cfg(tmp_path / name, f"seed={seed}", "stage.max_epochs=1"))
        folder = next((tmp_path / name / "artifacts/synthetic/all/default").glob("classify_*"))
        weights.append((folder / "classifier.safetensors").read_bytes())
    assert weights[0] == weights[1] and weights[0] != weights[2]


def _generated_folder(root, per_class: int = 10):
    from stablesdg.data.synthetic import render_synthetic_defect

    for abbreviation in ("Cr", "Pa", "PS", "Sc"):
        (root / abbreviation).mkdir(parents=True)
        for i in range(per_class):
            render_synthetic_defect(abbreviation, 500 + i, 64, seed=3).save(root / abbreviation / f"{i}.png")
    return root


def test_a_stopped_run_whose_generated_set_was_remade_trains_again_rather_than_resuming(tmp_path, monkeypatch):
    from stablesdg.data.synthetic import render_synthetic_defect
    from stablesdg.stages import classify

    def stopped_at_the_end(trainer, cfg, finished, where):
        raise RuntimeError("stopped")  # after the last epoch, before the checkpoints are removed

    def weights(root) -> bytes:
        return next((root / "artifacts/synthetic/all/default").glob("classify_*/classifier.safetensors")).read_bytes()

    generated = _generated_folder(tmp_path / "gen")
    overrides = ["stage.alpha=0.4", "stage.mode=substitute", f"stage.generated={generated}"]
    with monkeypatch.context() as patch:
        patch.setattr(classify, "require_finished", stopped_at_the_end)
        with pytest.raises(RuntimeError, match="stopped"):
            run(_classify_cfg(tmp_path / "stopped", *overrides))
    assert next((tmp_path / "stopped").rglob("checkpoints/last.ckpt")).is_file()
    for abbreviation in ("Cr", "Pa", "PS", "Sc"):  # the set is made again, other images under the same names
        for i in range(10):
            render_synthetic_defect(abbreviation, 700 + i, 64, seed=4).save(generated / abbreviation / f"{i}.png")
    run(_classify_cfg(tmp_path / "stopped", *overrides))
    run(_classify_cfg(tmp_path / "straight", *overrides))
    assert weights(tmp_path / "stopped") == weights(tmp_path / "straight")


def test_preloaded_images_train_the_same_classifier_as_images_decoded_every_epoch_by_any_number_of_workers(tmp_path):
    # which is why make's rule leaves stage.preload and stage.num_workers out (provenance.RUN_MECHANICS)
    generated = _generated_folder(tmp_path / "gen")
    runs = {}
    for preload, workers in (("true", 0), ("false", 0), ("false", 2)):
        name = f"{preload}{workers}"
        result = json.loads(run(_classify_cfg(tmp_path / name, f"stage.preload={preload}", f"stage.num_workers={workers}",
                                              "stage.alpha=0.4", "stage.mode=substitute",
                                              f"stage.generated={generated}")).read_text())
        folder = next((tmp_path / name / "artifacts/synthetic/all/default").glob("classify_*"))
        runs[name] = (folder / "classifier.safetensors").read_bytes(), result["metrics"]
    assert runs["true0"][1]["train_images"] == {"real": 16, "generated": 24}
    assert runs["true0"] == runs["false0"] == runs["false2"], "the same weights and metrics, bit for bit"


def test_preloading_holds_each_image_as_its_uint8_values_with_its_label(tmp_path):
    from stablesdg.data import DefectImageDataset
    from stablesdg.data.images import image_to_tensor
    from stablesdg.data.preload import preload_images
    from stablesdg.data.sources import ImageRecord, PathSource

    from hydra.utils import instantiate

    dm = instantiate(_classify_cfg(tmp_path, "dataset.synthetic.per_class=3").dataset)
    dm.setup()
    real = dm.dataset("train")
    files = sorted(_generated_folder(tmp_path / "gen", per_class=2).rglob("*.png"))
    generated = DefectImageDataset([ImageRecord(str(f), 5, "") for f in files], PathSource(), 1, 64)
    images, labels = preload_images([real, generated], "decoding").tensors
    assert images.shape == (len(real) + len(files), 1, 64, 64) and images.dtype == torch.uint8
    assert labels.tolist() == [r.label for r in real.records] + [5] * len(files)
    expected = [image_to_tensor(d.load_image(i)) for d in (real, generated) for i in range(len(d))]
    from torchvision.transforms.v2.functional import to_dtype

    assert all(torch.equal(to_dtype(image, torch.float32, scale=True), e) for image, e in zip(images, expected, strict=True))
    with pytest.raises(ValueError, match="share channels and size"):
        preload_images([real, DefectImageDataset(generated.records, PathSource(), 1, 32)], "decoding")


@pytest.mark.parametrize("overrides, message", [
    (["stage.mode=expand", "stage.alpha=0.4", "stage.generated=null"], "stage.mode=expand needs stage.generated"),
    (["stage.alpha=1.5"], r"stage.alpha must be in \(0, 1\]"),
    (["dataset.split.fractions=[1,0,0]"], r"fractions=\[1.0, 0.0, 0.0\] leaves the val and test splits empty; give "
                                          r"each a share, e.g. dataset.split.fractions=\[0.8,0.1,0.1\]$"),
    (["dataset.synthetic.per_class=4"], r"fractions=\[0.8, 0.1, 0.1\] leaves the val and test splits empty; class Cr "
                                        r"has only 4 images, too few for a share of 0.1 to hold one; e.g. "
                                        r"dataset.split.fractions=\[0.5,0.25,0.25\]$"),
    (["dataset.synthetic.per_class=2"], r"leaves the val and test splits empty; class Cr has 2 images: each class "
                                        r"needs at least 3$"),
    (["dataset.split.fractions=[0.9,0.1,0]"], r"leaves the test split empty"),
    (["stage.alpha=0.01"], r"^stage.alpha=0.01 leaves none of the \d+ training images; raise stage.alpha"),
    (["category=Pa"], r"^stage=classify trains on every class of the dataset; drop category=Pa$"),
    (["stage.num_workers=-1"], r"^stage.num_workers must be an integer >= 0 \(0: none\), got -1$"),
    (["stage.mode=expand", "stage.extra_per_class=0", "stage.generated=/no/such/set"],
     r"^stage.extra_per_class must be a positive integer, got 0$"),
    (["stage.mode=substitute", "stage.alpha=1.0", "stage.generated=/no/such/set"],  # the same run as mode=none
     r"^stage.mode=substitute at stage.alpha=1.0 substitutes nothing: it tops each class up to its full real count"),
])
def test_classify_settings_are_checked(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run(_classify_cfg(tmp_path, *overrides))
    assert not list((tmp_path / "artifacts").rglob("result.json"))


def test_a_class_with_no_test_image_has_no_accuracy_rather_than_0_and_a_warning_says_why(tmp_path, caplog):
    data = _generated_folder(tmp_path / "data", per_class=20)
    for other in ("PS", "Sc"):
        shutil.rmtree(data / other)
    for extra in range(4, 20):  # 4 images of Pa: 0.1 of 4 rounds to no validation or test image
        (data / "Pa" / f"{extra}.png").unlink()
    caplog.set_level(logging.INFO)
    cfg = compose_config([f"paths.artifacts={tmp_path}/artifacts", "stage=classify", "logger=none", "dataset=folder",
                          f"dataset.root={data}", "stage.max_epochs=1", "stage.batch_size=8"])
    metrics = json.loads(run(cfg).read_text())["metrics"]
    assert metrics["composition"] == {"Cr": {"real": 16, "generated": 0}, "Pa": {"real": 4, "generated": 0}}
    assert metrics["confusion_matrix"][1] == [0, 0]  # no image of Pa was tested
    accuracy_of_cr = metrics["confusion_matrix"][0][0] / 2
    assert metrics["per_class_accuracy"] == {"Cr": accuracy_of_cr, "Pa": None}
    said = [r.getMessage() for r in caplog.records if r.name == "stablesdg.stages.classify"]
    assert said[0] == ("stage=classify: class Pa has no validation or test images, so the best epoch is picked without "
                       "it and its accuracy is not measured (null in per_class_accuracy); class Pa has only 4 images, "
                       "too few for a share of 0.1 to hold one; e.g. dataset.split.fractions=[0.5,0.25,0.25]")
    assert said[-1].endswith(f"; per class Cr {accuracy_of_cr:.3f}, Pa –")
    caplog.clear()
    cfg.seed = 1  # another classifier of the same command (a pipeline's, a multirun's): the warning is not said again
    run(cfg)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "stablesdg.stages.classify"]


def test_classify_refuses_a_dataset_of_one_class(tmp_path):
    one_class = _generated_folder(tmp_path / "one_class", per_class=4)
    for other in ("Cr", "PS", "Sc"):
        shutil.rmtree(one_class / other)
    with pytest.raises(UserError, match=r"^stage=classify needs at least 2 classes; dataset folder has only Pa$"):
        run(compose_config([f"paths.artifacts={tmp_path}/artifacts", "stage=classify", "logger=none", "dataset=folder",
                            f"dataset.root={one_class}"]))


@pytest.mark.slow
def test_squeezenet_on_neu_beats_chance_clearly(tmp_path, neu_path):
    cfg = compose_config([f"paths.artifacts={tmp_path}/artifacts", f"paths.logs={tmp_path}/logs", "stage=classify",
                          "logger=none", "dataset=neu", f"dataset.root={neu_path}", "classifier=squeezenet",
                          "stage.alpha=0.4", "stage.max_epochs=3", "dataset.image_size=128"])
    result = json.loads(run(cfg).read_text())
    metrics = result["metrics"]
    assert metrics["test_accuracy"] > 0.40, metrics  # chance is 1/6; 3 epochs at 128 px reach about 0.5
    assert metrics["train_images"] == {"real": 576, "generated": 0}
    assert len(metrics["confusion_matrix"]) == 6 and sum(map(sum, metrics["confusion_matrix"])) == 180
    assert set(result) >= {"stage", "dataset", "category", "variant", "metrics", "config", "versions", "wall_time_s"}
    assert (result["machine"]["cpu_threads"], result["machine"]["gpu"]) == (torch.get_num_threads(), None), \
        "what it was computed on: per-seed accuracies differ on other CPUs"


@pytest.mark.parametrize("trainer, cuda, pinned", [("cpu", True, False), ("gpu", False, False), ("gpu", True, True)])
def test_loaders_pin_their_batches_where_the_classifier_trains_on_a_gpu(monkeypatch, trainer, cuda, pinned):
    from stablesdg.stages.classify import loader_settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    cfg = compose_config(["stage=classify", f"trainer={trainer}", "stage.batch_size=16", "stage.num_workers=3"])
    assert loader_settings(cfg) == {"batch_size": 16, "num_workers": 3, "pin_memory": pinned}


def test_a_missing_generated_set_is_named_by_the_folder_and_the_command_that_would_make_it(tmp_path, neu):
    with pytest.raises(UserError) as one_class:
        generated_images("v2", str(tmp_path), "neu", neu.categories, labels=[neu.categories.index_of("Pa")])
    assert str(one_class.value) == (f"stage.generated='v2' is neither a folder nor a generated set in {tmp_path}/neu/Pa/"
                                    "v2/generate; stage=generate category=Pa variant=v2 (or stage=sample, stage=external) "
                                    "makes one")
    with pytest.raises(UserError) as every_class:
        generated_images("v2", str(tmp_path), "neu", neu.categories)
    assert str(every_class.value) == (f"stage.generated='v2' is neither a folder nor a generated set in {tmp_path}/neu/"
                                      "<category>/v2/generate; stage=generate variant=v2 (or stage=sample, "
                                      "stage=external) makes one")
    spaced = CategorySet({"pitted surface": "pitted surface", "rolled-in scale": "rolled-in scale"})
    with pytest.raises(UserError, match=r"generate; stage=generate 'category=pitted surface' variant=v2 \(or "):
        generated_images("v2", str(tmp_path), "mine", spaced, labels=[0])


@pytest.mark.slow
def test_ddp_processes_each_train_on_their_own_share_and_test_each_image_once(tmp_path):
    import subprocess

    settings = ["stage=classify", "logger=none", "dataset.synthetic.per_class=12", "stage.max_epochs=1",
                "stage.batch_size=4"]
    single = json.loads(run(_classify_cfg(tmp_path / "one", *settings)).read_text())["metrics"]
    command = [sys.executable, "-m", "stablesdg.train", *settings, "trainer=ddp", "trainer.accelerator=cpu",
               "trainer.devices=3", "trainer.precision=32-true", f"paths.artifacts={tmp_path}/three/artifacts",
               f"paths.logs={tmp_path}/three/logs"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = (tmp_path / "three/artifacts").rglob("result.json")
    shared = json.loads(result.read_text())["metrics"]
    images = single["train_images"]["real"]
    assert shared["train_images"]["real"] == images == 40
    assert (single["world_size"], single["steps"]) == (1, math.ceil(images / 4))
    assert (shared["world_size"], shared["steps"]) == (3, math.ceil(math.ceil(images / 3) / 4)), \
        "each process trains on a third of the images, not all of them"
    tested = sum(map(sum, single["confusion_matrix"]))
    assert tested == 4 and sum(map(sum, shared["confusion_matrix"])) == tested, "each test image tested once"
    output = done.stdout + done.stderr
    assert "twice" not in output and "Using `DistributedSampler`" not in output
    # the console shows the first process's lines once; the second process's own log file keeps its lines
    assert done.stdout.count("decoding the training images: 100%") == 1 and "GLOBAL_RANK: 1" not in done.stdout
    (second,) = (tmp_path / "three/logs").rglob("train_ddp_process_1.log")
    assert "decoding the training images: 100%" in second.read_text()


def test_a_number_of_generated_images_given_for_substitution_is_named_as_unread(tmp_path):
    _generated_folder(tmp_path / "gen")
    done = run_cli(tmp_path, "stage=classify", "logger=none", "dataset.synthetic.per_class=12", "stage.max_epochs=1",
                   "stage.batch_size=8", "stage.alpha=0.4", "stage.mode=substitute", f"stage.generated={tmp_path}/gen",
                   "stage.extra_per_class=3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("stage.extra_per_class=3: stage.mode=substitute tops each class up to its full real count with generated "
            "images and leaves it unread; stage.mode=expand adds stage.extra_per_class generated images to each class"
            ) in done.stdout + done.stderr
    (result,) = (tmp_path / "artifacts").rglob("result.json")
    composition = json.loads(result.read_text())["metrics"]["composition"]
    assert composition == {a: {"real": 4, "generated": 6} for a in ("Cr", "Pa", "PS", "Sc")}, "not 3 of each"


def test_ddp_processes_validate_and_test_shares_of_the_images_none_repeated_or_say_which_count_twice(caplog):
    from types import SimpleNamespace

    from stablesdg.stages.classify import evaluated_once_each, note_uneven_evaluation

    images = list(range(4))
    shares = [list(evaluated_once_each(images, 3, rank)) for rank in range(3)]
    assert sorted(i for share in shares for i in share) == images and [len(share) for share in shares] == [2, 1, 1]
    assert evaluated_once_each(images, 1, 0) is None and evaluated_once_each(images, 5, 0) is None
    with caplog.at_level(logging.WARNING, logger="stablesdg.stages.classify"):
        note_uneven_evaluation(SimpleNamespace(world_size=5, is_global_zero=True), images, list(range(3)))
        note_uneven_evaluation(SimpleNamespace(world_size=5, is_global_zero=False), images, images)
    assert [r.getMessage() for r in caplog.records] == [
        "stage=classify: the 4 validation images are fewer than the 5 processes, so Lightning's DistributedSampler "
        "gives some to two processes and the validation accuracy counts 1 image twice; trainer.devices=1 counts each "
        "once",
        "stage=classify: the 3 test images are fewer than the 5 processes, so Lightning's DistributedSampler gives some "
        "to two processes and the test accuracy counts 2 images twice; trainer.devices=1 counts each once"]


def test_the_resume_checkpoint_is_the_last_epochs_even_where_validation_did_not_improve(tmp_path):
    import torch

    result = json.loads(run(_classify_cfg(tmp_path, "stage.max_epochs=3", "stage.keep_checkpoints=true")).read_text())
    metrics = result["metrics"]
    assert metrics["best_epoch"] < 2, "the premise: validation accuracy stopped rising before the last epoch"
    (folder,) = (tmp_path / "artifacts").rglob("checkpoints")
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, metrics["steps"]), "a stop now resumes after epoch 3"
    best = torch.load(folder / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == metrics["best_epoch"]
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".ckpt") == ["best.ckpt", "last.ckpt"]


def test_a_run_that_trainer_max_time_stopped_says_to_raise_it_since_a_rerun_stops_at_once(tmp_path):
    settings = ["stage=classify", "logger=none", "dataset.synthetic.per_class=12", "stage.max_epochs=100000",
                "stage.batch_size=8"]
    limit = ("error: stage=classify stopped at epoch \\d+ of 100000: trainer.max_time=00:00:00:01 ran out, and Lightning "
             "counts it over every run that resumes, so the same command would stop again at once; raise "
             "trainer.max_time \\(or leave it out\\) to train on from the last checkpoint")
    stopped_at = []
    for attempt in ("first", "rerun"):
        done = run_cli(tmp_path, *settings, "+trainer.max_time=00:00:00:01")
        assert done.returncode == 2, done.stderr[-2000:]
        assert re.fullmatch(limit, done.stderr.strip().splitlines()[-1]), (attempt, done.stderr[-2000:])
        stopped_at.append(re.search(r"stopped at epoch (\d+)", done.stderr).group(1))
    assert "resuming from" in done.stdout + done.stderr
    assert stopped_at[0] == stopped_at[1], "the rerun, which trains nothing, stopped where the first run did"
    raised = run_cli(tmp_path, *settings, "+trainer.max_time=00:00:00:02")
    assert "resuming from" in raised.stdout + raised.stderr
    epochs = [int(e) for e in re.findall(r"epoch (\d+)/100000", raised.stdout + raised.stderr)]
    first = [int(e) for e in re.findall(r"epoch (\d+)/100000", done.stdout + done.stderr)]
    assert epochs and first == [] and min(epochs) > 1, "the raised limit trains on from where the first run stopped"


def test_a_trainer_setting_lightning_refuses_once_it_has_the_data_is_one_line(tmp_path):
    done = run_cli(tmp_path, "stage=classify", "logger=none", "dataset.synthetic.per_class=12", "stage.max_epochs=1",
                   "stage.batch_size=8", "+trainer.val_check_interval=1000")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: Lightning refused a trainer setting: `val_check_interval` (1000) must "
                                          "be less than or equal to the number of the training batches (5)"), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_damaged_checkpoint_is_discarded_with_a_warning_and_the_run_trains_anew(tmp_path):
    settings = ["stage=classify", "logger=none", "dataset.synthetic.per_class=12", "stage.max_epochs=2",
                "stage.batch_size=8", "stage.keep_checkpoints=true"]
    assert run_cli(tmp_path, *settings).returncode == 0
    (result,) = (tmp_path / "artifacts").rglob("result.json")
    trained = (result.parent / "classifier.safetensors").read_bytes()
    result.unlink()  # as if the run had been stopped, with its checkpoint cut short (a disk that filled, a bad copy)
    last = result.parent / "checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[:4000])
    done = run_cli(tmp_path, *settings)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (f"{last} cannot be read (File is not a zip file), so the run cannot resume from it: discarding it and "
            "training anew") in done.stdout + done.stderr
    assert "resuming from" not in done.stdout + done.stderr
    assert (result.parent / "classifier.safetensors").read_bytes() == trained


@pytest.mark.slow
def test_ddp_processes_stopped_by_trainer_max_time_say_so_in_one_line(tmp_path):
    import subprocess

    command = [sys.executable, "-m", "stablesdg.train", "stage=classify", "logger=none", "dataset.synthetic.per_class=24",
               "stage.max_epochs=100000", "+trainer.max_time=00:00:00:02", "trainer=ddp", "trainer.accelerator=cpu",
               "trainer.devices=2", "trainer.precision=32-true", f"paths.artifacts={tmp_path}/artifacts",
               f"paths.logs={tmp_path}/logs"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    said = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(said) == 1, done.stderr[-3000:]
    assert "trainer.max_time=00:00:00:02 ran out" in said[0]
