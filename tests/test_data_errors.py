"""Bad dataset input: one clear error naming the path or value (or a logged skip), never a silent mistake."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from conftest import compose_config
from stablesdg.data import CategorySet, DefectDataModule
from stablesdg.data.images import conform_image
from stablesdg.data.settings import require_dataset_settings
from stablesdg.errors import UserError, find_user_error
from stablesdg.image_files import image_files
from stablesdg.stages.inspect import dataset_report, format_report

CLASSES = {"Cr": "crazing", "Pa": "patches"}


def folder_module(root, tmp_path, **kwargs) -> DefectDataModule:
    return DefectDataModule(name="t", classes=CLASSES, root=str(root), split_dir=str(tmp_path / "splits"),
                            image_size=32, **kwargs)


def write_images(folder, prefix, count, size=32):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([*prefix.encode(), count])  # other images for each class
    for n in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"{prefix}_{n}.png")


@pytest.mark.parametrize("setting, message", [
    ({"channels": 2}, "dataset.channels must be 1 (grayscale) or 3 (RGB), got 2"),
    ({"alphas": [0.4, 0.0]}, "each of dataset.alphas must be in (0, 1], got [0.4, 0.0]"),
    ({"batch_size": 0}, "dataset.batch_size must be a positive integer, got 0"),  # its own loaders, for library use
    ({"num_workers": -1}, "dataset.num_workers must be an integer >= 0, got -1"),
])
def test_dataset_settings_are_refused_before_the_folder_is_read(tmp_path, setting, message):
    with pytest.raises(UserError, match=re.escape(message)):
        folder_module(tmp_path / "nowhere", tmp_path, **setting)  # no scan: the missing root is not what is reported


@pytest.mark.parametrize("override, message", [
    ("dataset.image_size=nan", "dataset.image_size must be an integer of at least 8, got nan"),
    ("dataset.image_size=64.5", "dataset.image_size must be an integer of at least 8, got 64.5"),
    ("dataset.image_size=4", "dataset.image_size must be an integer of at least 8, got 4"),
    ("dataset.split.seed=1.5", "dataset.split.seed must be an integer >= 0, got 1.5"),
    ("dataset.split.seed=-1", "dataset.split.seed must be an integer >= 0, got -1"),
    ("dataset.synthetic.per_class=0", "dataset.synthetic.per_class must be a positive integer, got 0"),
    ("dataset.synthetic.seed=2.5", "dataset.synthetic.seed must be an integer >= 0, got 2.5"),
    ("dataset.channels=1.5", "dataset.channels must be 1 (grayscale) or 3 (RGB), got 1.5"),
    ("dataset.bit_depth=7", "dataset.bit_depth must be null (16) or an integer from 8 to 16, got 7"),
    ("dataset.bit_depth=17", "dataset.bit_depth must be null (16) or an integer from 8 to 16, got 17"),
    ("dataset.bit_depth=12.5", "dataset.bit_depth must be null (16) or an integer from 8 to 16, got 12.5"),
])
def test_a_count_or_seed_that_is_not_a_whole_number_in_range_is_refused_not_truncated(tmp_path, override, message):
    cfg = compose_config([f"paths.artifacts={tmp_path}", override])
    with pytest.raises(Exception) as raised:
        instantiate(cfg.dataset)
    assert str(find_user_error(raised.value)) == message
    with pytest.raises(UserError) as early:  # the entry point's check before torch loads says the same
        require_dataset_settings(cfg.dataset)
    assert str(early.value) == message


@pytest.mark.parametrize("override, message", [
    ("dataset.split.fractions=[0.5,0.5]", "dataset.split.fractions must be three non-negative numbers summing to 1, "
                                          "got [0.5, 0.5]"),
    ("dataset.on_bad_file=warn", "dataset.on_bad_file must be one of ('error', 'skip'), got 'warn'"),
    ("dataset.alphas=[0.4,abc]", "each of dataset.alphas must be in (0, 1], got [0.4, 'abc']"),
    ("dataset.synthetic=5", "dataset.synthetic must be the procedural set's settings, e.g. {per_class: 40, seed: 0}, "
                            "or null for a dataset on disk, got 5"),
    ("dataset.classes=abc", "dataset.classes must map each class's abbreviation to its full name, e.g. "
                            "{Pa: patches, Sc: scratches}, got 'abc'"),
])
def test_a_dataset_setting_is_refused_by_the_entry_points_early_check_and_by_the_data_module(tmp_path, override,
                                                                                            message):
    cfg = compose_config([f"paths.artifacts={tmp_path}", override])
    with pytest.raises(UserError) as early:
        require_dataset_settings(cfg.dataset)
    assert str(early.value) == message
    with pytest.raises(Exception) as raised:
        dm = instantiate(cfg.dataset)
        dm.setup()
    assert str(find_user_error(raised.value)) == message
    assert not (tmp_path / "synthetic" / "splits").exists()


def test_missing_root(tmp_path):
    with pytest.raises(UserError, match=r"dataset root '.*nowhere' does not exist"):
        folder_module(tmp_path / "nowhere", tmp_path).setup()


def test_empty_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found under"):
        folder_module(tmp_path / "empty", tmp_path).setup()


@pytest.mark.parametrize("layout", ["IMAGES", "crazing"])
def test_a_root_one_level_above_the_dataset_names_the_folder_to_set(tmp_path, layout):
    for prefix in ("crazing", "patches"):  # NEU's IMAGES/<class>_<n>.png, or a folder per class
        write_images(tmp_path / "unpacked" / "NEU-DET" / (layout if layout == "IMAGES" else prefix), prefix, 2)
    (tmp_path / "unpacked" / "notes").mkdir()
    with pytest.raises(UserError) as raised:
        folder_module(tmp_path / "unpacked", tmp_path).setup()
    nested = tmp_path / "unpacked" / "NEU-DET"
    assert str(raised.value).endswith(f"; the folder {nested} in it is laid out as a dataset: set dataset.root={nested}")


def test_class_folder_without_images(tmp_path):
    write_images(tmp_path / "data" / "crazing", "crazing", 5)
    (tmp_path / "data" / "patches").mkdir()
    (tmp_path / "data" / "patches" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"class folder .*patches has no images"):
        folder_module(tmp_path / "data", tmp_path).setup()


def test_missing_class_folder(tmp_path):
    write_images(tmp_path / "data" / "Cr", "Cr", 5)
    with pytest.raises(UserError, match="no folder for class.*Pa"):
        folder_module(tmp_path / "data", tmp_path).setup()


def test_flat_folder_missing_a_class(tmp_path):
    write_images(tmp_path / "data", "Cr", 5)
    with pytest.raises(UserError, match="no images of class.*Pa"):
        folder_module(tmp_path / "data", tmp_path).setup()


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_corrupt_file_is_an_error_naming_it(tmp_path, content, caplog):
    write_images(tmp_path / "data", "Cr", 5)
    write_images(tmp_path / "data", "Pa", 5)
    bad = tmp_path / "data" / "Pa_99.jpg"
    if content == "truncated":
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(bad, format="JPEG")
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        bad.write_bytes(content)
    with pytest.raises(UserError, match=r"Pa_99\.jpg: cannot decode image.*dataset\.on_bad_file=skip"):
        folder_module(tmp_path / "data", tmp_path).setup()
    dm = folder_module(tmp_path / "data", tmp_path, on_bad_file="skip")
    dm.setup()
    assert len(dm.records) == 10 and len(dm.source.skipped) == 1 and "Pa_99.jpg" in dm.source.skipped[0]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "Pa_99.jpg" in r.getMessage()], \
        "each skipped file is logged"


def test_a_scan_that_skips_many_files_names_the_first_few_and_counts_them_all_in_one_more_line(tmp_path, caplog):
    from stablesdg.data.sources import NAMED_SKIPS

    write_images(tmp_path / "data", "Cr", 5)
    write_images(tmp_path / "data", "Pa", 5)
    bad = [tmp_path / "data" / f"Pa_{90 + i}.jpg" for i in range(NAMED_SKIPS + 2)]
    for path in bad:
        path.write_bytes(b"not an image at all")
    dm = folder_module(tmp_path / "data", tmp_path, on_bad_file="skip")
    dm.setup()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(dm.records) == 10 and len(dm.source.skipped) == len(bad)
    assert [line for line in warned if line.startswith("skipping ")] == [f"skipping {m}" for m in dm.source.skipped[:NAMED_SKIPS]]
    assert f"skipped {len(bad)} files under {tmp_path / 'data'} in all (dataset.on_bad_file=skip), the first " \
           f"{NAMED_SKIPS} named above" in warned


def test_an_image_too_large_for_pillow_is_refused_with_its_size_and_one_above_its_warning_size_named_once(
        tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # Pillow refuses more than twice this, warns above it
    write_images(tmp_path / "data", "Cr", 5)
    write_images(tmp_path / "data", "Pa", 5)
    Image.fromarray(np.zeros((85, 85), np.uint8)).save(tmp_path / "data" / "Pa_50.png")
    huge = tmp_path / "data" / "Pa_99.png"
    Image.fromarray(np.zeros((100, 101), np.uint8)).save(huge)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's own warning, which names no file, is not shown
        with pytest.raises(UserError) as refused:
            folder_module(tmp_path / "data", tmp_path).setup()
        assert str(refused.value) == (f"{huge}: 10,100 pixels, more than the 10,000 that Pillow decodes (larger files "
                                      "may be decompression bombs); downscale it or cut it into tiles, or set "
                                      "dataset.on_bad_file=skip")
        huge.unlink()
        dm = folder_module(tmp_path / "data", tmp_path)
        dm.setup()
        dm.source.load(next(r for r in dm.records if r.key == "Pa_50.png"))
    named = [r.getMessage() for r in caplog.records if "Pa_50.png" in r.getMessage()]
    assert len(dm.records) == 11 and len(named) == 1, named
    assert named[0].startswith(f"{tmp_path / 'data' / 'Pa_50.png'}: 85 × 85 pixels (7,225), more than the 5,000 at "
                               "which Pillow warns")


@pytest.mark.parametrize("layout", ["flat", "class-folders"])
def test_hidden_files_and_folders_are_not_images_of_the_dataset(tmp_path, layout):
    # a dataset unpacked from a macOS archive holds ._<name> beside each image: not an image, it stopped the scan
    data = tmp_path / "data"
    for abbreviation in CLASSES:
        folder = data / abbreviation if layout == "class-folders" else data
        write_images(folder, abbreviation, 5)
        (folder / f"._{abbreviation}_0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        write_images(folder / ".ipynb_checkpoints", abbreviation, 2)
        (data / "__MACOSX" / folder.relative_to(data)).mkdir(parents=True, exist_ok=True)  # as a zip made on a Mac
        (data / "__MACOSX" / folder.relative_to(data) / f"._{abbreviation}_1.png").write_bytes(b"\x00\x05\x16\x07")
    prefix = {"flat": "", "class-folders": "{}/"}[layout]
    for classes in (CLASSES, None):  # named, or taken from the folders and file names
        dm = DefectDataModule(name="t", classes=classes, root=str(data), split_dir=str(tmp_path / "splits"), image_size=32)
        dm.setup()
        assert sorted(r.key for r in dm.records) == sorted(f"{prefix.format(a)}{a}_{n}.png"
                                                           for a in CLASSES for n in range(5))
        assert dm.categories.abbreviations == list(CLASSES)


def test_a_long_scan_shows_a_progress_bar_and_a_short_one_none(tmp_path, monkeypatch, progress_lines, capsys):
    from stablesdg.data import sources

    for abbreviation in CLASSES:
        write_images(tmp_path / "data" / abbreviation, abbreviation, 5)
    folder_module(tmp_path / "data", tmp_path).setup()
    shown = progress_lines(), capsys.readouterr().err
    assert shown == ([], ""), "a scan shorter than SCAN_BAR_DELAY_S shows no bar"
    monkeypatch.setattr(sources, "SCAN_BAR_DELAY_S", 0)  # as a scan of tens of thousands of images
    folder_module(tmp_path / "data", tmp_path).setup()
    images = 5 * len(CLASSES)
    assert progress_lines() == [f"reading {tmp_path / 'data'}: 100%|##########| {images}/{images}"]


def test_image_files_lists_images_by_extension_in_any_case_and_skips_hidden_names(tmp_path):
    for name in ("b.PNG", "a.jpg", "sub/c.tif", "notes.txt", "._a.jpg", ".cache/d.png", "sub/.hidden/e.png",
                 "__MACOSX/sub/f.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()  # a folder named like an image
    assert image_files(tmp_path) == [tmp_path / "a.jpg", tmp_path / "b.PNG", tmp_path / "sub" / "c.tif"]
    assert image_files(tmp_path, recursive=False) == [tmp_path / "a.jpg", tmp_path / "b.PNG"]


def test_a_flat_file_of_a_class_not_in_dataset_classes_is_left_out_and_one_not_named_by_class_is_refused(tmp_path):
    write_images(tmp_path / "data", "Cr", 3)
    write_images(tmp_path / "data", "Pa", 3)
    write_images(tmp_path / "data", "Zz", 2)
    dm = folder_module(tmp_path / "data", tmp_path)
    dm.setup()
    assert sorted(r.key for r in dm.records) == [f"{c}_{n}.png" for c in ("Cr", "Pa") for n in range(3)]
    assert dm.source.other_classes == {"Zz": 2} and dm.source.skipped == []
    assert "  left out 2 files of 1 other class (Zz 2), not in dataset.classes" in \
        format_report(dataset_report(dm), None).splitlines()
    write_images(tmp_path / "data", "scan", 1)  # a number after no class name
    (tmp_path / "data" / "scan_0.png").rename(tmp_path / "data" / "scan-0.png")
    with pytest.raises(UserError, match=r"scan-0\.png: file name does not start with a class name"):
        folder_module(tmp_path / "data", tmp_path / "again").setup()


def test_a_flat_folder_of_other_classes_only_names_the_classes_it_holds(tmp_path):
    write_images(tmp_path / "data", "crazing", 3)
    write_images(tmp_path / "data", "patchs", 3)  # dataset.classes spells it patches
    with pytest.raises(UserError, match=r"no images of class\(es\) Pa under .*; it holds 3 files of 1 other class "
                                        r"\(patchs 3\): name those in dataset.classes"):
        folder_module(tmp_path / "data", tmp_path).setup()


def test_unknown_category_lists_the_valid_ones(tmp_path):
    write_images(tmp_path / "data", "Cr", 10)
    write_images(tmp_path / "data", "Pa", 10)
    dm = folder_module(tmp_path / "data", tmp_path)
    with pytest.raises(UserError, match=r"unknown category 'Xy'; valid categories: Cr \(crazing\), Pa \(patches\)"):
        dm.select("train", category="Xy")
    assert CategorySet(CLASSES).resolve("PATCHES") == "Pa"


def test_bad_split_fractions(tmp_path):
    write_images(tmp_path / "data", "Cr", 10)
    write_images(tmp_path / "data", "Pa", 10)
    with pytest.raises(UserError, match="fractions must be three non-negative numbers summing to 1"):
        folder_module(tmp_path / "data", tmp_path, split={"fractions": [0.8, 0.3, 0.1]}).setup()


def test_changed_dataset_does_not_silently_reuse_an_old_split(tmp_path):
    write_images(tmp_path / "data", "Cr", 10)
    write_images(tmp_path / "data", "Pa", 10)
    folder_module(tmp_path / "data", tmp_path).setup()
    (tmp_path / "data" / "Pa_0.png").unlink()
    with pytest.raises(UserError, match=r"was made for a different set of images \(the dataset changed\); restore the "
                                        r"images; another dataset needs a dataset.name of its own \(this one is "
                                        r"'\w+'\), so its split and artifacts are kept apart; or delete the split file"):
        folder_module(tmp_path / "data", tmp_path).setup()


@pytest.mark.parametrize("content", ["[]", '{"format_version": 1}', '{"format_version": 2, "train": []}'])
def test_a_split_file_of_another_shape_is_refused_and_kept(tmp_path, content):
    write_images(tmp_path / "data", "Cr", 10)
    write_images(tmp_path / "data", "Pa", 10)
    dm = folder_module(tmp_path / "data", tmp_path)
    dm.split_path.parent.mkdir(parents=True)
    dm.split_path.write_text(content)
    with pytest.raises(UserError, match="has an unknown format; delete it to make a new split"):
        dm.setup()
    assert dm.split_path.read_text() == content


def test_a_synthetic_dataset_made_at_another_size_names_the_settings_that_changed_it(tmp_path):
    def synthetic(size: int) -> DefectDataModule:
        return instantiate(compose_config([f"paths.artifacts={tmp_path}", f"dataset.image_size={size}"]).dataset)

    synthetic(64).setup()
    with pytest.raises(UserError, match="the synthetic images follow dataset.synthetic.per_class, dataset.synthetic.seed "
                                        "and dataset.image_size: set those back, use another paths.artifacts"):
        synthetic(48).setup()


def test_split_file_is_complete_json(tmp_path):
    write_images(tmp_path / "data", "Cr", 10)
    write_images(tmp_path / "data", "Pa", 10)
    dm = folder_module(tmp_path / "data", tmp_path)
    dm.setup()
    stored = json.loads(dm.split_path.read_text())
    assert sorted(stored["train"] + stored["val"] + stored["test"]) == sorted(r.key for r in dm.records)
    assert not list(dm.split_path.parent.glob("*.tmp"))


@pytest.mark.parametrize("mode", ["I;16", "RGBA", "P", "LA", "F"])
def test_unusual_modes_become_8bit_grayscale(mode):
    ramp = np.tile(np.linspace(0, 1, 40), (30, 1))
    if mode == "I;16":
        image = Image.fromarray((ramp * 65535).astype(np.uint16))
        assert image.mode == "I;16"
    elif mode == "F":
        image = Image.fromarray(ramp.astype(np.float32), mode="F")
    else:
        image = Image.fromarray((ramp * 255).astype(np.uint8)).convert(mode)
    out = conform_image(image, channels=1, size=24)
    assert out.mode == "L" and out.size == (24, 24)
    pixels = np.asarray(out, dtype=np.float64)
    assert pixels[:, 0].mean() < 40 and pixels[:, -1].mean() > 215, "intensity range must survive the conversion"


def _twelve_bit_dataset(root):
    """Cr and Pa as 12-bit camera data in 16-bit PNGs: values 0 to 4095, a ramp across each image (Cr's running
    across, Pa's down)."""
    for abbreviation in CLASSES:
        (root / abbreviation).mkdir(parents=True)
        for n in range(10):
            ramp = np.tile(np.linspace(0, 4095 - n, 32), (32, 1)).astype(np.uint16)
            Image.fromarray(ramp if abbreviation == "Cr" else ramp.T.copy()).save(root / abbreviation / f"{n}.png")
    return root


def test_twelve_bit_files_read_as_16_bit_are_named_dark_and_bit_depth_12_reads_them_at_full_contrast(tmp_path,
                                                                                                    caplog):
    root = _twelve_bit_dataset(tmp_path / "data")
    sixteen = folder_module(root, tmp_path)
    sixteen.setup()
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == (f"dataset t: its 16-bit files hold values up to 4095 ({root}/Cr/0.png), which 12 bits hold; "
                       "read over the full 16-bit range they come out dark (at most 16 of 255 grey levels); if they "
                       "are 12-bit data, dataset.bit_depth=12 reads them at full contrast")
    assert sixteen.fewer_bits_than_read() == 12
    assert np.asarray(sixteen.dataset("train").load_image(0)).max() <= 16
    report = dataset_report(sixteen)
    assert report["high_bit_maximum"] == {"value": 4095, "file": f"{root}/Cr/0.png"}
    assert "\nimages delivered as 1 × 32 × 32 (grayscale); the 16-bit files use 12 bits (read as 16: dark), " \
           "dataset.bit_depth=12 reads them at full contrast\n" in format_report(report, None)

    caplog.clear()
    twelve = folder_module(root, tmp_path, bit_depth=12)
    twelve.setup()
    assert [r for r in caplog.records if r.levelname == "WARNING"] == [] and twelve.fewer_bits_than_read() is None
    first = twelve.dataset("train", category="Cr").records[0]
    pixels = np.asarray(twelve.source.load(first), dtype=np.float64)
    value = np.asarray(Image.open(root / first.key), dtype=np.float64)
    assert np.array_equal(pixels, np.rint(value * 255 / 4095)), "0-4095 spread over 0-255"

    with pytest.raises(UserError, match=re.escape(f"dataset.bit_depth=10 reads values up to 1023, but {root}/Cr/0.png "
                                                  "holds 4095: set dataset.bit_depth to the bits the files use, or "
                                                  "null for 16")):
        folder_module(root, tmp_path, bit_depth=10).setup()


def test_bit_depth_leaves_8_bit_files_as_they_are(tmp_path, caplog):
    write_images(tmp_path / "data" / "IMAGES", "Cr", 10)
    write_images(tmp_path / "data" / "IMAGES", "Pa", 10)
    plain, twelve = folder_module(tmp_path / "data", tmp_path), folder_module(tmp_path / "data", tmp_path, bit_depth=12)
    assert np.array_equal(np.asarray(plain.dataset("train").load_image(3)), np.asarray(twelve.dataset("train").load_image(3)))
    assert plain.fewer_bits_than_read() is None and plain.source.high_bit_maximum is None


def test_non_square_images_are_centre_cropped():
    wide = np.zeros((50, 100), np.uint8)
    wide[:, 25:75] = 255
    out = np.asarray(conform_image(Image.fromarray(wide), channels=1, size=50))
    assert out.shape == (50, 50) and out.min() == 255, "the centre square is kept, the sides are cropped"
    assert conform_image(Image.fromarray(wide), channels=3, size=20).mode == "RGB"


def test_fit_pad_keeps_the_whole_of_a_wide_image_between_black_bars_and_stretch_squeezes_it():
    wide = np.full((50, 100), 100, np.uint8)
    wide[:, 50:] = 200  # left half 100, right half 200
    padded = np.asarray(conform_image(Image.fromarray(wide), channels=1, size=50, fit="pad"))
    bars = np.flatnonzero(padded.max(axis=1) == 0)
    assert padded.shape == (50, 50) and len(bars) == 25, "half the rows are black: a 2:1 image fills the other half"
    middle = padded[25]
    assert middle[0] == 100 and middle[-1] == 200, "both ends of the image are kept"
    stretched = np.asarray(conform_image(Image.fromarray(wide), channels=1, size=50, fit="stretch"))
    assert stretched.shape == (50, 50) and stretched.min() >= 95 and (stretched[:, 0] == 100).all() \
        and (stretched[:, -1] == 200).all(), "every row holds both halves, no bars"


def test_a_dataset_of_wide_images_says_how_much_cropping_keeps_and_fit_pad_keeps_them_whole(tmp_path, caplog):
    for n, abbreviation in enumerate(CLASSES):
        (tmp_path / "data" / abbreviation).mkdir(parents=True)
        for i in range(10):
            width = 128 if (n, i) == (1, 3) else 34  # one 4:1 strip; the others square enough to say nothing of
            Image.fromarray(np.full((32, width), 10 * i + n, np.uint8)).save(tmp_path / "data" / abbreviation / f"{i}.png")
    cropped = folder_module(tmp_path / "data", tmp_path)
    cropped.setup()
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == (f"dataset t: 1 of its 20 images are not square ({tmp_path}/data/Pa/3.png, 128×32, the most "
                       "elongated): each is centre-cropped to a square, which keeps 25 % of that one; dataset.fit=pad "
                       "keeps whole images (with black bars), dataset.fit=stretch squeezes them")
    assert "; 1 images are not square (the most elongated 128×32), made square by dataset.fit=crop\n" \
        in format_report(dataset_report(cropped), None)
    caplog.clear()
    folder_module(tmp_path / "data", tmp_path).setup()  # as each step of a pipeline sets its dataset up again
    assert [r for r in caplog.records if r.levelname == "WARNING"] == [], "a process says a dataset's warning once"
    padded = folder_module(tmp_path / "data", tmp_path, fit="pad")
    padded.setup()
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []
    split = next(name for name in ("train", "val", "test") if "Pa/3.png" in padded.split.keys(name))
    images = padded.dataset(split)
    strip = next(i for i, r in enumerate(images.records) if r.key == "Pa/3.png")
    assert np.asarray(images.load_image(strip))[0].max() == 0 < np.asarray(images.load_image(strip))[16].max(), \
        "the top rows are a black bar, the middle is the image"
    assert padded.read_as["fit"] == "pad" and cropped.read_as["fit"] == "crop", \
        "caches of cropped pixels are not reused"


def test_a_missing_dataset_root_names_the_folder_a_relative_root_meant_and_the_variable_its_config_reads(
        tmp_path, monkeypatch):
    from stablesdg.choices import ROOT_VARIABLES
    from stablesdg.data.settings import require_dataset_root

    for name, variable in ROOT_VARIABLES.items():
        monkeypatch.setenv(variable, str(tmp_path / name))  # the config reads it: the root is that folder
        assert compose_config([f"dataset={name}"]).dataset.root == str(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as missing:
        require_dataset_root("neu", "data/NEU-DET")
    assert str(missing.value) == (f"dataset root 'data/NEU-DET' ({tmp_path}/data/NEU-DET) does not exist or is not a "
                                  "folder; set dataset.root=<folder> (or export STABLESDG_NEU_ROOT=<folder>)")
    with pytest.raises(UserError) as missing:
        require_dataset_root("mine", "/no/such/folder")
    assert str(missing.value) == "dataset root '/no/such/folder' does not exist or is not a folder; set dataset.root=<folder>"
